"""`bl.sample` end to end: known posteriors, the seed's models, eight schools, seeds, errors.

Tolerances are Monte Carlo standard errors from the chains' own ESS (ArviZ): an estimate
more than 4 MCSE from the truth fails.
"""

import math
import sys

import arviz as az
import numpy as np
import pytest
import scipy.stats
import torch
from torch.distributions import Exponential, MultivariateNormal, Normal

import bayeslib as bl
from bayeslib.models import Best, LinearRegression
from bayeslib.samplers import HMC, NUTS, Target, make_sampler
from bayeslib.sampling import initial_positions, run_chains, sample

SAMPLERS = ["nuts", "hmc", "metropolis"]


class Conjugate(bl.Model):
    mu = bl.Param(Normal(0.0, 1.0))

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        return {"y": Normal(p.mu, 1.0)}


RHO = 0.95


class Correlated(bl.Model):
    x = bl.Param(MultivariateNormal(torch.zeros(2), torch.tensor([[1.0, RHO], [RHO, 1.0]])))


class PositiveOnly(bl.Model):
    rate = bl.Param(Exponential(2.0))


def assert_within_mcse(draws, mean, sd, n_se=4.0):
    """draws: ``[chains, draws]``; the sample mean and sd within `n_se` MCSE of the truth."""
    x = np.asarray(draws, dtype=np.float64)
    mcse_mean = float(az.mcse(x, method="mean"))
    mcse_sd = float(az.mcse(x, method="sd"))
    assert abs(x.mean() - mean) < n_se * mcse_mean, (x.mean(), mean, mcse_mean)
    if sd is not None:
        assert abs(x.std() - sd) < n_se * mcse_sd, (x.std(), sd, mcse_sd)


def conjugate_data():
    y = torch.tensor([1.2, 0.4, 2.1, 0.9, 1.7, -0.3, 1.1, 0.8, 1.5, 0.6], dtype=torch.float64)
    n = y.numel()
    return y, float(y.sum() / (n + 1)), math.sqrt(1 / (n + 1))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_conjugate_normal(sampler):
    y, mean, sd = conjugate_data()
    post = sample(Conjugate(y), sampler, chains=4, warmup=200, draws=400, seed=1, progress=False)
    assert_within_mcse(post["mu"], mean, sd)
    assert post.stats["acceptance_rate"].mean() > 0.2


def plain_target(logdensity):
    """A batched log density and its autograd gradient, without a Model."""

    def logdensity_and_grad(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            lp = logdensity(z)
            (grad,) = torch.autograd.grad(lp.sum(), z)
        return lp.detach(), grad

    return Target(logdensity_and_grad, logdensity)


def run_plain(sampler, logdensity, dim, warmup, draws, seed, chains=4):
    g = torch.Generator().manual_seed(seed)
    z0 = 4 * torch.rand(chains, dim, generator=g, dtype=torch.float64) - 2
    sampler = make_sampler(sampler) if isinstance(sampler, str) else sampler
    return run_chains(sampler, plain_target(logdensity), z0, g, warmup, draws)


CORRELATED = MultivariateNormal(
    torch.zeros(2, dtype=torch.float64),
    torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=torch.float64),
)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_correlated_gaussian(sampler):
    chains = run_plain(sampler, CORRELATED.log_prob, 2, warmup=300, draws=400, seed=2)
    for i in range(2):
        assert_within_mcse(chains.positions[..., i], 0.0, 1.0)
    x = chains.positions.reshape(-1, 2)
    assert abs(float(torch.corrcoef(x.T)[0, 1]) - RHO) < 0.03


def test_correlated_gaussian_dense_mass():
    post = sample(Correlated(), "nuts", chains=4, warmup=300, draws=300, seed=3, dense_mass=True)
    for i in range(2):
        assert_within_mcse(post["x"][..., i], 0.0, 1.0)
    # The dense metric turns the narrow ridge round: short trees.
    assert post.stats["tree_depth"].double().mean() < 3


@pytest.mark.parametrize("sampler", [NUTS(max_tree_depth=8), HMC()], ids=["nuts", "hmc"])
def test_gaussian_with_scales_from_0_01_to_100(sampler):
    """20 independent scales spanning four orders of magnitude: only an adapted metric
    samples this; a plain batched density keeps the test quick."""
    scales = torch.logspace(-2, 2, 20, dtype=torch.float64)
    logdensity = Normal(torch.zeros(20, dtype=torch.float64), scales).log_prob
    chains = run_plain(sampler, lambda z: logdensity(z).sum(-1), 20, 500, 500, seed=4)
    for i in range(20):
        assert_within_mcse(chains.positions[..., i], 0.0, float(scales[i]))
    assert chains.stats["diverging"].sum() == 0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_positive_parameter_draws_match_its_exponential_prior(sampler):
    post = sample(PositiveOnly(), sampler, chains=4, warmup=200, draws=600, seed=5)
    rate = post["rate"].numpy()
    assert (rate > 0).all()
    # Thin to about one draw per effective draw so that the KS test sees independent draws.
    thin = max(1, math.ceil(rate.size / float(az.ess(rate))))
    _, p_value = scipy.stats.kstest(rate[:, ::thin].ravel(), scipy.stats.expon(scale=0.5).cdf)
    assert p_value > 0.001
    assert_within_mcse(rate, 0.5, 0.5)


def best_reference(y, grid=600):
    """Posterior means of BEST by quadrature: the posterior factorises over the groups into
    2-D densities of (mu, sigma)."""
    y = np.asarray(y, dtype=np.float64)
    n, mean, sd = y.size, y.mean(), y.std()
    mu = np.linspace(mean - 8 * sd / math.sqrt(n), mean + 8 * sd / math.sqrt(n), grid)
    sigma = np.linspace(sd / 4, sd * 3, grid)
    m, s = np.meshgrid(mu, sigma, indexing="ij")
    ss = ((y[None, None, :] - m[..., None]) ** 2).sum(-1)
    log_post = -0.5 * m**2 - n * np.log(s) - ss / (2 * s**2)
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    return (w * m).sum(), (w * s).sum()


def test_best_posterior_means_match_quadrature():
    model, _ = Best.simulate(seed=0)
    post = sample(model, "nuts", chains=4, warmup=200, draws=300, seed=6)
    for j, y in enumerate((model.y1, model.y2)):
        mu_mean, sigma_mean = best_reference(y)
        assert_within_mcse(post["mu"][..., j], mu_mean, None)
        assert_within_mcse(post["sigma"][..., j], sigma_mean, None)
    assert post.stats["diverging"].sum() == 0


@pytest.mark.parametrize("sampler, warmup, draws", [("nuts", 200, 300), ("metropolis", 500, 2000)])
def test_linear_regression_matches_the_exact_posterior_and_covers_the_truth(sampler, warmup, draws):
    """With beta's uniform prior effectively flat, the posterior mean of beta is the least
    squares estimate, and sigma's marginal density is proportional to
    sigma^-(n - k) exp(-SSR / (2 sigma^2)) on (0, 100). Data seed 1: with seed 0 the exact
    posterior's own 95% intervals miss the intercept (its estimate is 2.4 se off)."""
    model, truth = LinearRegression.simulate(n=200, seed=1)
    X, y = model.X.numpy(), model.y.numpy()
    n, k = X.shape
    beta_hat, ssr, *_ = np.linalg.lstsq(X, y, rcond=None)
    sigma = np.linspace(0.5, 2.0, 20001)
    log_density = -(n - k) * np.log(sigma) - ssr[0] / (2 * sigma**2)
    weights = np.exp(log_density - log_density.max())
    sigma_mean = (weights * sigma).sum() / weights.sum()

    post = sample(model, sampler, chains=4, warmup=warmup, draws=draws, seed=7)
    for i in range(k):
        assert_within_mcse(post["beta"][..., i], beta_hat[i], None)
    assert_within_mcse(post["sigma"], sigma_mean, None)
    beta = post["beta"].reshape(-1, k)
    low, high = torch.quantile(beta, torch.tensor([0.025, 0.975], dtype=beta.dtype), dim=0)
    assert ((low < truth["beta"]) & (truth["beta"] < high)).all(), (low, high)


EIGHT_Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
EIGHT_SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


def eight_schools(centered):
    """Eight schools as a batched density over z = [mu, log tau, theta or theta_raw (8)],
    in plain tensor ops: mu ~ N(0, 5), tau ~ HalfCauchy(5), theta ~ N(mu, tau),
    y ~ N(theta, sigma)."""
    y = torch.tensor(EIGHT_Y, dtype=torch.float64)
    sigma = torch.tensor(EIGHT_SIGMA, dtype=torch.float64)

    def logdensity(z):
        mu, log_tau, rest = z[:, :1], z[:, 1:2], z[:, 2:]
        tau = log_tau.exp()
        # Priors of mu and tau, and log |d tau / d log tau|.
        lp = -0.5 * (mu / 5) ** 2 - torch.log1p((tau / 5) ** 2) + log_tau
        if centered:
            theta = rest
            lp = lp - 0.5 * (((theta - mu) / tau) ** 2).sum(-1, keepdim=True) - 8 * log_tau
        else:
            theta = mu + tau * rest
            lp = lp - 0.5 * (rest**2).sum(-1, keepdim=True)
        return (lp - 0.5 * (((y - theta) / sigma) ** 2).sum(-1, keepdim=True)).squeeze(-1)

    return logdensity


def test_eight_schools_divergences_centered_but_not_non_centered():
    """As Stan and NumPyro see it (their diagonal metric): the centered funnel makes NUTS
    diverge; the non-centered form does not (at target_accept=0.9; at the default 0.8 it
    leaves one now and then)."""
    diagonal = NUTS(dense_mass=False)
    centered = run_plain(diagonal, eight_schools(True), 10, warmup=400, draws=400, seed=0)
    assert centered.stats["diverging"].sum() >= 5
    non_centered = run_plain(
        NUTS(target_accept=0.9, dense_mass=False),
        eight_schools(False),
        10,
        warmup=400,
        draws=400,
        seed=0,
    )
    assert non_centered.stats["diverging"].sum() == 0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_draws_and_different_seed_different_draws(sampler):
    y, _, _ = conjugate_data()
    model = Conjugate(y)

    def run(seed):
        return sample(model, sampler, chains=3, warmup=40, draws=30, seed=seed, thin=2)

    first, again, other = run(11), run(11), run(12)
    assert torch.equal(first["mu"], again["mu"])
    assert torch.equal(first.warmup["mu"], again.warmup["mu"])
    for name in first.stats:
        assert torch.equal(first.stats[name], again.stats[name]), name
    assert not torch.equal(first["mu"], other["mu"])


def test_shapes_stats_and_attrs():
    model, _ = Best.simulate(seed=1)
    post = sample(model, "nuts", chains=2, warmup=30, draws=20, thin=3, seed=0, progress=False)
    assert post["mu"].shape == (2, 20, 2) and post["mu"].dtype == torch.float64
    assert post.warmup["sigma"].shape == (2, 10, 2)
    expected = {"lp", "step_size", "acceptance_rate", "diverging", "tree_depth", "n_steps"}
    assert set(post.stats) == expected | {"energy"}
    assert post.stats["diverging"].dtype == torch.bool
    assert post.warmup_stats["lp"].shape == (2, 10)
    # Step sizes are fixed after warmup.
    assert (post.stats["step_size"] == post.stats["step_size"][:, :1]).all()
    assert post.attrs["sampler"] == "nuts" and post.attrs["thin"] == 3
    assert post.attrs["sampling_time"] > 0 and post.attrs["warmup_time"] > 0
    rwm = sample(model, "metropolis", chains=2, warmup=0, draws=5)
    assert set(rwm.stats) == {"lp", "step_size", "acceptance_rate"} and rwm.warmup is None


def test_one_chain_and_1024_chains():
    y, mean, sd = conjugate_data()
    one = sample(Conjugate(y), "nuts", chains=1, warmup=100, draws=100, seed=8)
    assert one["mu"].shape == (1, 100)
    many = sample(Conjugate(y), "nuts", chains=1024, warmup=100, draws=2, seed=8)
    assert many["mu"].shape == (1024, 2)
    # Each chain's last draw is an (almost) independent draw from the posterior.
    last = many["mu"][:, -1]
    assert abs(float(last.mean()) - mean) < 4 * sd / math.sqrt(1024)
    assert abs(float(last.std()) - sd) < 4 * sd / math.sqrt(2 * 1024)


def test_init_map_spreads_superchains_on_the_posterior_scale():
    y, mean, sd = conjugate_data()
    model = Conjugate(y)
    g = torch.Generator().manual_seed(0)
    start = initial_positions(model, 4000, 1000, "map", g, seed=0, needs_grad=True)
    starts = start.z[::4, 0]
    # 1000 distinct starts (4 chains each) from N(mode, (2 sd)^2): the Laplace approximation
    # of this Gaussian posterior is exact; 4 standard errors of the mean and sd.
    assert (start.z.reshape(1000, 4) == starts[:, None]).all()
    assert abs(float(starts.mean()) - mean) < 4 * 2 * sd / math.sqrt(1000)
    assert abs(float(starts.std()) / (2 * sd) - 1) < 4 / math.sqrt(2 * 1000)
    assert torch.allclose(
        start.covariance, torch.full((4000, 1, 1), sd**2, dtype=torch.float64), rtol=1e-6
    )
    post = sample(model, "nuts", chains=2, warmup=20, draws=20, init="map")
    assert post.attrs["init"] == "map" and post.attrs["laplace_fallbacks"] == 0
    post = sample(Conjugate(y), "metropolis", chains=2, warmup=0, draws=1, init={"mu": 3.0})
    assert post["mu"].shape == (2, 1)


def test_random_starts_with_non_finite_density_are_redrawn():
    class HalfLine(bl.Model):
        x = bl.Param(Normal(0.0, 1.0))

        def observe(self, p):
            return {}

        batched = True

    model = HalfLine()
    # A density that is -inf for x < -1: half the uniform(-2, 2) starts must be redrawn.
    model_logdensity = model.logdensity

    def logdensity(z, jacobian=True):
        lp = model_logdensity(z, jacobian)
        return torch.where(z[:, 0] < -1, -math.inf, lp)

    model.logdensity = logdensity
    post = sample(model, "metropolis", chains=64, warmup=0, draws=1, seed=0)
    assert (post["x"] >= -1).all()


def test_progress_bar_shows_acceptance_and_divergences(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    y, _, _ = conjugate_data()
    sample(Conjugate(y), "nuts", chains=2, warmup=10, draws=10, progress=True)
    err = capsys.readouterr().err
    assert "accept" in err and "divergences" in err and "step_size" in err


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sampler": "gibbs"}, "unknown sampler 'gibbs'"),
        ({"chains": 0}, "chains must be an integer >= 1"),
        ({"chains": 2.5}, "chains must be an integer"),
        ({"warmup": -1}, "warmup must be an integer >= 0"),
        ({"draws": 0}, "draws must be an integer >= 1"),
        ({"thin": 0}, "thin must be an integer >= 1"),
        ({"seed": -3}, "seed must be an integer >= 0"),
        ({"max_depth": 5}, r"unknown option\(s\) \['max_depth'\] for sampler 'nuts'"),
        ({"sampler": "metropolis", "dense_mass": True}, "unknown option"),
        ({"target_accept": 1.5}, "target_accept must lie in"),
        ({"device": "cuda"}, "CUDA is not available"),
        ({"device": "cuda:1"}, "CUDA is not available"),
        ({"device": "gpu0"}, "is not a device"),
        ({"dtype": torch.int32}, "dtype"),
        ({"init": "random"}, "init='random' is not a known start"),
        ({"sampler": NUTS(), "max_tree_depth": 4}, "cannot go with a sampler object"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    if "cuda" in str(kwargs.get("device", "")) and torch.cuda.is_available():
        kwargs = {**kwargs, "device": "cuda:99"}
        match = "CUDA devices"
    y, _, _ = conjugate_data()
    with pytest.raises(ValueError, match=match):
        sample(Conjugate(y), **{"warmup": 5, "draws": 5, **kwargs})


def test_device_auto_and_a_sampler_object():
    y, _, _ = conjugate_data()
    post = sample(Conjugate(y), NUTS(max_tree_depth=3), warmup=10, draws=10, device="auto")
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert post.attrs["device"] == expected
    assert post.stats["tree_depth"].max() <= 3
    post32 = sample(Conjugate(y), "hmc", warmup=10, draws=10, dtype=torch.float32)
    assert post32["mu"].dtype == torch.float64 and post32.attrs["dtype"] == "float32"


def test_hmc_warmup_on_a_narrow_posterior_takes_short_trajectories():
    """sd 0.005 under the initial unit metric: HMC takes NUTS transitions until the metric
    has the posterior's scale, so warmup needs no hundreds of leapfrog steps per iteration
    (a fixed trajectory length of 2 would need 2 / 0.005 steps of the right size)."""
    narrow = Normal(torch.tensor(1.0, dtype=torch.float64), 0.005)
    chains = run_plain("hmc", lambda z: narrow.log_prob(z).sum(-1), 3, 300, 300, seed=1)
    assert chains.warmup_stats["n_steps"].double().mean() < 30
    draws = chains.positions.reshape(-1, 3)
    # 3600 draws, ESS well above 1000: the sd's relative error is under 3%.
    torch.testing.assert_close(
        draws.std(0), torch.full((3,), 0.005, dtype=torch.float64), rtol=0.1, atol=0
    )
    torch.testing.assert_close(
        draws.mean(0), torch.ones(3, dtype=torch.float64), rtol=0, atol=0.001
    )
