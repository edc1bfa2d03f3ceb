"""`bl.stack`: many data sets of one model fitted as one batch.

A stack must behave exactly as its data sets fitted one by one: the same log densities, the
same posteriors (within Monte Carlo error), the same modes, adaptation that never crosses data
sets, and starts from each data set's own mode.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import Normal

import bayeslib as bl
from bayeslib import calibration, sampling
from bayeslib.models import Best, BestStudentT, LinearRegression
from bayeslib.samplers import NUTS, RandomWalkMetropolis, State
from bayeslib.samplers.adaptation import group_mean, pooled, restart_stragglers, straggler_gap
from bayeslib.sampling import initial_positions
from bayeslib.tracing import make_target


class NormalMean(bl.Model):
    """mu ~ Normal(0, 1) and n observations y_i ~ Normal(mu, noise), given by their mean (a
    sufficient statistic) ybar ~ Normal(mu, noise / sqrt(n)). n and noise are data, so data
    sets of different sizes and scales stack. The posterior is Normal(n ybar / (n + noise^2),
    noise / sqrt(n + noise^2))."""

    mu = bl.Param(Normal(0.0, 1.0))

    def __init__(self, ybar, n, noise=1.0):
        super().__init__(ybar=ybar, n=n, noise=noise)

    def observe(self, p):
        return {"ybar": Normal(p.mu, p.noise / p.n.sqrt())}

    def exact(self):
        """The posterior's mean and sd."""
        n, noise = float(self.n), float(self.noise)
        return n * float(self.ybar) / (n + noise**2), noise / math.sqrt(n + noise**2)


def assert_matches_exact(post, models, n_se=4.5):
    """Each data set's posterior mean and sd of mu within `n_se` Monte Carlo standard errors
    (from the chains' own ESS) of the exact ones; with a dozen or so comparisons per test, a
    4.5-sigma miss has probability about 1e-4 if the sampler is right."""
    table = post.summary()
    for r, model in enumerate(models):
        row = table.loc[(r, "mu")]
        mean, sd = model.exact()
        assert abs(row["mean"] - mean) < n_se * row["mcse_mean"], (r, row["mean"], mean)
        assert abs(row["sd"] - sd) < n_se * row["mcse_sd"], (r, row["sd"], sd)


def scaled(cls, r):
    """Data set r of `cls`, its data on a scale 2^r: its data-derived constants (BestStudentT's
    pooled mean and sd) and its posterior differ from the other data sets'."""
    return cls.simulate(sigma=2.0**r, seed=r)[0]


# ----- 1. each data set's own log density


@pytest.mark.parametrize("cls", [Best, BestStudentT, LinearRegression])
def test_stack_evaluates_each_data_sets_own_log_density(cls):
    datasets, chains = 3, 5
    models = [scaled(cls, r) for r in range(datasets)]
    stacked = bl.stack(models)
    g = torch.Generator().manual_seed(0)
    block = 4 * torch.rand(chains, stacked.dim, generator=g, dtype=torch.float64) - 2
    z = block.repeat(datasets, 1)  # the same points for every data set

    lp = stacked.logdensity(z)
    lp_constrained = stacked.logdensity(z, jacobian=False)
    lp_grad, grad = stacked.logdensity_and_grad(z)
    values = stacked.constrain(z)
    for r, model in enumerate(models):
        rows = slice(r * chains, (r + 1) * chains)
        torch.testing.assert_close(lp[rows], model.logdensity(block), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            lp_constrained[rows], model.logdensity(block, jacobian=False), rtol=1e-12, atol=1e-12
        )
        own_lp, own_grad = model.logdensity_and_grad(block)
        torch.testing.assert_close(lp_grad[rows], own_lp, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad[rows], own_grad, rtol=1e-12, atol=1e-12)
        for name, value in model.constrain(block).items():
            torch.testing.assert_close(values[name][rows], value, rtol=1e-12, atol=1e-12)
    # the data sets really differ at the same points: no data set was evaluated on another's
    by_dataset = lp.reshape(datasets, chains)
    assert (by_dataset[0] - by_dataset[1]).abs().min() > 1e-3
    assert (by_dataset[1] - by_dataset[2]).abs().min() > 1e-3

    torch.testing.assert_close(stacked.unconstrain(values), z, rtol=1e-12, atol=1e-12)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a trace that fails would warn and run eagerly
        traced = make_target(stacked, z, True, True)
        traced_lp = make_target(stacked, z, False, True)
    other = 4 * torch.rand(z.shape, generator=g, dtype=torch.float64) - 2  # not the traced z
    eager_lp, eager_grad = stacked.logdensity_and_grad(other)
    traced_value, traced_grad = traced.logdensity_and_grad(other)
    torch.testing.assert_close(traced_value, eager_lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(traced_grad, eager_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(traced_lp.logdensity(other), eager_lp, rtol=1e-12, atol=1e-12)


# ----- 2. clear errors


@pytest.mark.parametrize(
    "models, match",
    [
        (
            lambda: [Best.simulate()[0], LinearRegression.simulate()[0]],
            r"item 1 is a LinearRegression, item 0 a Best; stack data sets of one model class",
        ),
        (
            lambda: [LinearRegression.simulate(n=50)[0], LinearRegression.simulate(n=60)[0]],
            r"'X' has shapes \['\(50, 3\)', '\(60, 3\)'\].*stack data sets of the same shapes",
        ),
        (
            lambda: [Best.simulate(n1=20)[0], Best.simulate(n1=30)[0]],
            r"'y1' has shapes \['\(20,\)', '\(30,\)'\].*pad or group them by size",
        ),
        (lambda: [], "give at least one model"),
        (lambda: [Best.simulate()[0], "data"], "item 1 is str, not a bl.Model"),
    ],
    ids=["classes", "linear-n50-n60", "best-n1", "empty", "not-a-model"],
)
def test_stacking_what_does_not_stack_is_a_clear_error(models, match):
    with pytest.raises(bl.ModelError, match=match):
        bl.stack(models())


def test_a_batch_that_is_not_a_multiple_of_the_data_sets_is_a_clear_error():
    stacked = bl.stack([Best.simulate(seed=s)[0] for s in range(2)])
    z = torch.zeros(3, stacked.dim, dtype=torch.float64)
    match = "Best x 2 data sets: a batch of 3 is not a multiple of the number of data sets"
    for evaluate in (stacked.logdensity, stacked.logdensity_and_grad, stacked.constrain):
        with pytest.raises(ValueError, match=match):
            evaluate(z)
    # 3 rows for 2 data sets, and 4 for 3: the same error (not a silent uneven split, nor an
    # IndexError)
    values = {"mu": torch.zeros(3, 2), "sigma": torch.ones(3, 2)}
    with pytest.raises(ValueError, match=match):
        stacked.unconstrain(values)
    three = bl.stack([Best.simulate(seed=s)[0] for s in range(3)])
    with pytest.raises(ValueError, match="a batch of 4 is not a multiple"):
        three.unconstrain({"mu": torch.zeros(4, 2), "sigma": torch.ones(4, 2)})


# ----- 3. a stack samples what each data set alone samples


@pytest.mark.slow
def test_sampling_a_stack_agrees_with_fitting_each_data_set_alone():
    models = [Best.simulate(seed=s)[0] for s in range(6)]
    options = dict(sampler="nuts", chains=4, warmup=150, draws=250, progress=False)
    stacked = bl.sample(bl.stack(models), seed=1, **options).summary()
    for r, model in enumerate(models):
        alone = bl.sample(model, seed=100 + r, **options).summary()
        ours = stacked.loc[r]
        # Two independent estimates of the same posterior mean: their difference has sd
        # sqrt(mcse_a^2 + mcse_b^2). 4.5 of those is a two-sided tail of 7e-6 each, 2e-4 over
        # the 24 comparisons (6 data sets x 4 parameters): a failure is a real difference.
        bound = 4.5 * np.sqrt(ours["mcse_mean"] ** 2 + alone["mcse_mean"] ** 2)
        difference = (ours["mean"] - alone["mean"]).abs()
        assert (difference < bound).all(), (r, difference / bound * 4.5)


def normal_means():
    """Four data sets of different sizes and means: posterior sds from 0.71 down to 0.1."""
    return [NormalMean(ybar, n) for ybar, n in [(0.8, 1), (-1.5, 5), (2.0, 20), (0.3, 100)]]


@pytest.mark.parametrize("sampler", ["nuts", "hmc", "metropolis"])
def test_a_stack_of_conjugate_data_sets_matches_each_exact_posterior(sampler):
    models = normal_means()
    post = bl.sample(
        bl.stack(models), sampler, chains=4, warmup=200, draws=400, seed=2, progress=False
    )
    assert post.datasets == 4 and post.by_dataset("mu").shape == (4, 4, 400)
    assert_matches_exact(post, models)


# ----- 4. adaptation never crosses data sets


def test_group_mean_and_pooled_pool_within_groups_only():
    x = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 60.0], dtype=torch.float64)
    expected = torch.tensor([2.0, 2.0, 2.0, 30.0, 30.0, 30.0], dtype=torch.float64)
    torch.testing.assert_close(group_mean(x, groups=2), expected)
    torch.testing.assert_close(group_mean(x, groups=1), x.mean().expand(6))

    # diagonal: the geometric mean of each group's variances, per dimension
    variances = torch.tensor(
        [[1.0, 4.0], [4.0, 4.0], [16.0, 4.0], [1e4, 0.01], [1e4, 0.01], [1e4, 0.01]],
        dtype=torch.float64,
    )
    out = pooled(variances, groups=2)
    torch.testing.assert_close(out[:3], torch.tensor([[4.0, 4.0]] * 3, dtype=torch.float64))
    torch.testing.assert_close(out[3:], variances[3:])

    # dense: sds pooled by their geometric mean, correlations by their mean, per group
    def covariance(sd1, sd2, rho):
        return torch.tensor(
            [[sd1**2, rho * sd1 * sd2], [rho * sd1 * sd2, sd2**2]], dtype=torch.float64
        )

    dense = torch.stack([covariance(1, 2, 0.2), covariance(4, 8, 0.6), covariance(100, 0.1, -0.9)])
    out = pooled(dense, groups=3)
    torch.testing.assert_close(out, dense)  # groups of one chain: nothing to pool
    out = pooled(dense[:2], groups=1)
    torch.testing.assert_close(out, covariance(2, 4, 0.4).expand(2, 2, 2))
    two_groups = torch.stack([dense[0], dense[1], dense[2], dense[2]])
    out = pooled(two_groups, groups=2)
    torch.testing.assert_close(out[:2], covariance(2, 4, 0.4).expand(2, 2, 2))
    torch.testing.assert_close(out[2:], two_groups[2:])


def scales_100_apart():
    """Two data sets whose posterior sds differ about 100 times: 0.30 and 0.0032."""
    return [NormalMean(0.5, 10, noise=1.0), NormalMean(0.5, 10, noise=0.01)]


@pytest.mark.parametrize("kernel", [NUTS, RandomWalkMetropolis], ids=["nuts", "metropolis"])
def test_adaptation_never_crosses_data_sets(kernel):
    models = scales_100_apart()
    sampler = kernel()
    post = bl.sample(
        bl.stack(models), sampler, chains=4, warmup=300, draws=500, seed=3, progress=False
    )
    assert_matches_exact(post, models)
    # One step size per data set, shared by its chains, fixed after warmup.
    step_sizes = post.stats_by_dataset("step_size")
    for r in range(2):
        assert (step_sizes[r] == post.attrs["step_size"][r]).all()
    # The step size is in the units of the metric (NUTS) or proposal covariance (Metropolis),
    # which carries each data set's scale: its variance is the data set's own posterior
    # variance, learnt from its own chains. The last warmup window's estimate from 4 chains
    # of ~100 draws is within ~30% of it; pooled across the two data sets it would be the
    # same for both.
    variance = torch.tensor(post.attrs["adapted_variances"], dtype=torch.float64)[:, 0]
    exact = torch.tensor([m.exact()[1] ** 2 for m in models], dtype=torch.float64)
    torch.testing.assert_close(variance, exact, rtol=0.5, atol=0)
    # so the step in unconstrained space differs about 100 times between the data sets
    steps = torch.tensor(post.attrs["step_size"]) * variance.sqrt()
    assert 30 < float(steps[0] / steps[1]) < 300


# ----- 5. the batched mode is each data set's mode


@pytest.mark.parametrize("cls", [Best, LinearRegression])
def test_find_map_of_a_stack_equals_find_map_of_each_data_set(cls):
    models = [cls.simulate(seed=s)[0] for s in range(5)]
    modes = bl.find_map(bl.stack(models))
    assert len(modes) == 5
    for model, mode in zip(models, modes, strict=True):
        assert mode.method == "newton" and mode.converged  # the batched path, not a fallback
        alone = bl.find_map(model)
        assert alone.method == "lbfgs" and alone.converged
        for name, value in alone.params.items():
            torch.testing.assert_close(mode.params[name], value, rtol=0, atol=1e-5)
        scale = float(alone.covariance.abs().max())
        torch.testing.assert_close(mode.covariance, alone.covariance, rtol=0, atol=1e-6 * scale)
        # the Laplace covariance is the inverse of minus the Hessian of the log density the
        # sampler sees (with the Jacobian) at the mode, here from torch's own Hessian
        hessian = torch.autograd.functional.hessian(
            lambda z, model=model: model.logdensity(z[None])[0], mode.z
        )
        torch.testing.assert_close(
            mode.covariance, torch.linalg.inv(-hessian), rtol=0, atol=1e-10 * scale
        )


# ----- 6. starts around each data set's own mode


def test_starts_from_modes_share_one_point_per_superchain():
    # modes 3 and -2 (posterior sds 0.30 and 0.10), far apart on their own scales
    models = [NormalMean(3.3, 10), NormalMean(-2.02, 100)]
    stacked = bl.stack(models)
    modes = bl.find_map(stacked)
    superchains, share = 1000, 2
    g = torch.Generator().manual_seed(0)
    start = initial_positions(stacked, superchains * share, superchains, modes, g, 0, True)
    z = start.z.reshape(2, superchains, share)
    assert (z == z[:, :, :1]).all()  # the chains of a superchain start at one point
    for r, model in enumerate(models):
        mean, sd = model.exact()
        starts = z[r, :, 0]
        assert len(torch.unique(starts)) == superchains
        # Starts are N(mode, (2 sd)^2) (the Laplace approximation of a Gaussian is exact, and
        # widened twice): 4 standard errors of the mean and of the sd of 1000 draws.
        assert abs(float(starts.mean()) - mean) < 4 * 2 * sd / math.sqrt(superchains)
        assert abs(float(starts.std()) / (2 * sd) - 1) < 4 / math.sqrt(2 * superchains)
        own = start.covariance[r * superchains * share : (r + 1) * superchains * share]
        torch.testing.assert_close(own, torch.full_like(own, sd**2), rtol=1e-6, atol=0)

    post = bl.sample(
        stacked, "nuts", chains=8, superchains=2, warmup=20, draws=10, init=modes, seed=0
    )
    attrs = post.attrs
    assert (attrs["datasets"], attrs["chains"], attrs["superchains"]) == (2, 8, 2)
    assert attrs["init"] == "map" and attrs["initial_covariance"] == "laplace"
    assert attrs["laplace_fallbacks"] == 0
    with pytest.raises(ValueError, match="init gives 1 modes for 2 data set"):
        bl.sample(stacked, chains=2, warmup=5, draws=5, init=modes[:1])


# ----- 7. stragglers


def test_restart_stragglers_restarts_from_a_chain_of_the_same_group():
    groups, chains, dim = 3, 5, 2
    position = torch.arange(groups * chains, dtype=torch.float64)[:, None].repeat(1, dim)
    lp = -torch.rand(groups * chains, generator=torch.Generator().manual_seed(0)).double()
    lp[7] -= 1000.0  # group 1, chain 2
    lp[13] -= straggler_gap(dim) - 2  # group 2: below its median, but within the gap
    grad = -position
    state = State(position, lp, grad)
    for seed in range(20):
        new, count = restart_stragglers(torch.Generator().manual_seed(seed), state, groups)
        assert count == 1
        source = int(new.position[7, 0])
        assert source in (5, 6, 8, 9)  # another chain of group 1
        assert new.logdensity[7] == lp[source] and (new.logdensity_grad[7] == grad[source]).all()
        others = torch.arange(groups * chains) != 7
        assert torch.equal(new.position[others], position[others])
        assert torch.equal(new.logdensity[others], lp[others])
    _, count = restart_stragglers(torch.Generator(), State(position, lp.clamp(min=-1), None), 3)
    assert count == 0


def straggler_case():
    """The issue's case: linear regression data, 63 of 64 Metropolis chains at the mode and
    one far out, about 700 log-density units below the others."""
    model, _ = LinearRegression.simulate(n=200, beta=(2, 1, -3), sigma=1, seed=0)
    mode = bl.find_map(model)
    beta = mode.params["beta"].repeat(64, 1)
    sigma = mode.params["sigma"].repeat(64)
    beta[-1] = torch.tensor([89.0, -66.0, -63.0])
    sigma[-1] = 32.0
    init = {"beta": beta, "sigma": sigma}
    lp = model.logdensity(model.init_z(64, init))
    assert 650 < float(lp[0] - lp[-1]) < 750
    return model, init


def exact_beta_sd(model):
    """With beta's prior flat (Uniform(-100, 100), far wider than the posterior) and sigma's
    flat on (0, 100), beta's posterior is a multivariate t with n - k - 1 degrees of freedom:
    its covariance is SSR / (n - k - 3) (X'X)^-1, the least-squares sampling covariance."""
    X, y = model.X, model.y
    n, k = X.shape
    beta_hat = torch.linalg.lstsq(X, y[:, None]).solution.ravel()
    ssr = ((y - X @ beta_hat) ** 2).sum()
    return (ssr / (n - k - 3) * torch.linalg.inv(X.T @ X).diagonal()).sqrt()


def test_a_chain_stranded_far_out_is_restarted_in_warmup():
    model, init = straggler_case()
    # Given starts: superchains=4 says how to judge 64 short chains (nested R-hat), as the
    # default does for starts bayeslib draws itself.
    post = bl.sample(
        model, "metropolis", chains=64, superchains=4, warmup=1000, draws=1000, init=init,
        seed=0, progress=False,
    )  # fmt: skip
    assert post.attrs["restarted_chains"] >= 1
    assert post.warnings() == []
    # thousands of effective draws: the sd's Monte Carlo error is ~2%, the bound 10%
    sd = post["beta"].reshape(-1, 3).std(0)
    torch.testing.assert_close(sd, exact_beta_sd(model), rtol=0.1, atol=0)


def test_without_restarts_the_stranded_chain_stays_stuck(monkeypatch):
    """The same run with restarts switched off: the case above is a real test."""
    model, init = straggler_case()
    monkeypatch.setattr(sampling, "RESTART_INTERVAL", 10**9)
    post = bl.sample(
        model, "metropolis", chains=64, warmup=1000, draws=1000, init=init, seed=0, progress=False
    )
    assert post.attrs["restarted_chains"] == 0
    assert (post["beta"][-1, :, 0] > 50).all()  # still far out
    assert any(w.startswith("r_hat") for w in post.warnings())
    assert float(post["beta"][..., 0].std()) > 10 * float(exact_beta_sd(model)[0])


# ----- 8. many replicates from the default starts


@pytest.mark.slow
def test_200_linear_replicates_from_their_modes_pass_their_fit_checks():
    stack = bl.stack([LinearRegression.simulate(seed=s)[0] for s in range(200)])
    modes = bl.find_map(stack)
    post = bl.sample(
        stack,
        sampler="metropolis",
        chains=16,
        superchains=4,
        warmup=300,
        draws=400,
        thin=4,
        init=modes,
        seed=4,
        progress=False,
    )
    checks = calibration.fit_checks(post)
    assert (checks["rhat_kind"] == "nested").all()
    assert checks["passed"].all(), checks[~checks["passed"]]
    assert checks["rhat"].max() <= 1.01
