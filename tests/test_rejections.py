"""Errors raised by a model's code reject the proposals of the chains concerned (issue 12).

Posteriors are checked against references computed apart (quadrature on a grid, or a truncated
normal): a mean or a probability more than 4 MCSE (from the chains' own ESS) from the
reference fails.
"""

import contextlib

import numpy as np
import pytest
import scipy.stats
import torch
from torch.distributions import MultivariateNormal, Normal, Uniform

import bayeslib as bl
from bayeslib.diagnostics import mcse_mean
from bayeslib.rejections import ModelErrors, finite_starts, rejecting, start_error
from bayeslib.samplers import Target

SAMPLERS = ["nuts", "hmc", "metropolis"]
# The covariance model's matrix is positive-definite only for |rho| < RHO_MAX.
RHO_MAX = 0.9


class TooWideCovariance(bl.Model):
    """A bivariate normal with variances 1 and 0.81 and covariance rho, whose prior on (-1, 1)
    is wider than the positive-definite range |rho| < 0.9: beyond it, the Cholesky
    factorisation raises. The posterior is the prior truncated to |rho| < 0.9 times the
    likelihood."""

    rho = bl.Param(Uniform(-1.0, 1.0))

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        one = torch.ones_like(p.rho)
        cov = torch.stack([torch.stack([one, p.rho]), torch.stack([p.rho, RHO_MAX**2 * one])])
        scale_tril = torch.linalg.cholesky(cov)
        return {"y": MultivariateNormal(torch.zeros_like(self.y[0]), scale_tril=scale_tril)}


def covariance_data():
    """30 draws with covariance 0.87: the posterior lies close to the edge at 0.9."""
    generator = torch.Generator().manual_seed(3)
    cov = torch.tensor([[1.0, 0.87], [0.87, RHO_MAX**2]], dtype=torch.float64)
    noise = torch.randn(30, 2, generator=generator, dtype=torch.float64)
    return noise @ torch.linalg.cholesky(cov).T


def grid_posterior(y, points=20001):
    """rho on a grid over (-0.9, 0.9) and its normalised posterior weights (quadrature)."""
    rho = torch.linspace(-RHO_MAX, RHO_MAX, points + 2, dtype=torch.float64)[1:-1]
    one = torch.ones_like(rho)
    cov = torch.stack([torch.stack([one, rho], -1), torch.stack([rho, RHO_MAX**2 * one], -1)], -2)
    log_lik = MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov).log_prob(y[:, None])
    log_post = log_lik.sum(0)
    weights = (log_post - log_post.max()).exp()
    return rho.numpy(), (weights / weights.sum()).numpy()


def assert_matches(draws, mean, quantiles):
    """`draws` ``[chains, draws]``: the mean within 4 MCSE of `mean`, and for each
    (p, q) of `quantiles` the fraction of draws below q within 4 MCSE of p."""
    x = np.asarray(draws, dtype=np.float64)
    assert abs(x.mean() - mean) < 4 * mcse_mean(x), (x.mean(), mean, mcse_mean(x))
    for p, q in quantiles:
        below = (x <= q).astype(np.float64)
        assert abs(below.mean() - p) < 4 * mcse_mean(below), (p, q, below.mean())


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_failed_cholesky_is_a_rejection(sampler, traced):
    y = covariance_data()
    rho, weights = grid_posterior(y)
    cdf = np.cumsum(weights)
    quantiles = [(p, rho[np.searchsorted(cdf, p)]) for p in (0.1, 0.5, 0.9)]
    # Traced, the log density is NaN where the Cholesky fails: nothing raises.
    raises = pytest.warns(UserWarning, match="not positive-definite")
    with contextlib.nullcontext() if traced else raises:
        post = bl.sample(
            TooWideCovariance(y),
            sampler=sampler,
            warmup=500,
            draws=1000,
            seed=1,
            progress=False,
            traced=traced,
        )
    assert post["rho"].max() < RHO_MAX
    assert_matches(post["rho"], float((rho * weights).sum()), quantiles)
    if not traced:
        assert post.attrs["model_errors"] > 0
        assert "not positive-definite" in post.attrs["model_error"]


class BoundedByError(bl.Model):
    """x ~ Normal(0, 1), but the model's code raises a ValueError for x > 1: the posterior is
    the normal truncated to x <= 1. Written for a batch of chains (Python control flow)."""

    batched = True
    x = bl.Param(Normal(0.0, 1.0))

    def observe(self, p):
        if bool((p.x > 1.0).any()):
            raise ValueError("x must be at most 1")
        return {}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_value_error_is_a_rejection(sampler):
    truncated = scipy.stats.truncnorm(-np.inf, 1.0)
    quantiles = [(p, truncated.ppf(p)) for p in (0.1, 0.5, 0.9)]
    with pytest.warns(UserWarning, match=r"raised at \d+ of \d+ chain evaluations") as caught:
        post = bl.sample(
            BoundedByError(),
            sampler=sampler,
            warmup=500,
            draws=1000,
            seed=2,
            progress=False,
            traced=False,
        )
    assert sum("ValueError: x must be at most 1" in str(w.message) for w in caught) == 1
    assert post["x"].max() <= 1.0
    assert post.attrs["model_error"] == "ValueError: x must be at most 1"
    assert_matches(post["x"], truncated.mean(), quantiles)


class DefinedAtSeven(bl.Model):
    """x ~ Normal(0, 1); the model's code raises for x > 5 except at x = 7 exactly. A chain
    started at 7 can never move: every proposal it makes raises."""

    batched = True
    x = bl.Param(Normal(0.0, 1.0))

    def observe(self, p):
        if bool(((p.x > 5.0) & (p.x != 7.0)).any()):
            raise ValueError("undefined above 5")
        return {}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_chain_whose_proposals_raise_diverges_and_the_others_move(sampler):
    # Small steps: from 7, no proposal reaches back below 5, so chain 0 stays.
    options = {"scale": 0.5} if sampler == "metropolis" else {"step_size": 0.1}
    with pytest.warns(UserWarning, match="undefined above 5"):
        post = bl.sample(
            DefinedAtSeven(),
            sampler=sampler,
            chains=4,
            warmup=0,
            draws=100,
            init={"x": torch.tensor([7.0, 0.0, 0.5, -0.5])},
            progress=False,
            traced=False,
            **options,
        )
    x = post["x"]
    assert bool((x[0] == 7.0).all())
    assert post.attrs["model_errors"] >= 100  # at least one per iteration
    for chain in range(1, 4):
        assert len(torch.unique(x[chain])) > 50
    if sampler == "metropolis":
        assert float(post.stats["acceptance_rate"][0].max()) == 0.0
    else:
        diverging = post.stats["diverging"]
        assert bool(diverging[0].all())
        assert float(diverging[1:].double().mean()) < 0.05


def test_rejecting_makes_nan_only_the_chains_that_raise():
    model = BoundedByError()
    z = torch.tensor([[0.5], [1.5], [-1.0], [2.0], [0.9]], dtype=torch.float64)
    errors = ModelErrors()
    target = rejecting(Target(model.logdensity_and_grad, model.logdensity), model, errors)
    lp, grad = target.logdensity_and_grad(z)
    raised = torch.tensor([False, True, False, True, False])
    assert bool(lp[raised].isnan().all()) and bool(grad[raised].isnan().all())
    expected_lp, expected_grad = model.logdensity_and_grad(z[~raised])
    torch.testing.assert_close(lp[~raised], expected_lp)
    torch.testing.assert_close(grad[~raised], expected_grad)
    assert (errors.count, errors.evaluations) == (2, 5)
    assert errors.first == "ValueError: x must be at most 1"
    assert bool(target.logdensity(z).isnan().eq(raised).all())
    assert errors.count == 4


def test_a_batch_that_does_not_raise_is_evaluated_once():
    model, calls = BoundedByError(), []

    def counted(z):
        calls.append(z.shape[0])
        return model.logdensity(z)

    errors = ModelErrors()
    target = rejecting(Target(model.logdensity_and_grad, counted), model, errors)
    target.logdensity(torch.zeros(8, 1, dtype=torch.float64))
    assert calls == [8] and errors.count == 0


def test_rejecting_a_stack_evaluates_each_chain_against_its_own_data_set():
    y = covariance_data()
    stack = bl.stack([TooWideCovariance(y), TooWideCovariance(-y)])
    z = torch.tensor([[0.0], [5.0], [5.0], [-0.5]], dtype=torch.float64)  # rho(5) = 0.987
    errors = ModelErrors()
    target = rejecting(Target(stack.logdensity_and_grad, stack.logdensity), stack, errors)
    lp = target.logdensity(z)
    assert bool(lp[[1, 2]].isnan().all()) and errors.count == 2
    torch.testing.assert_close(lp[0:1], stack.models[0].logdensity(z[0:1]))
    torch.testing.assert_close(lp[3:4], stack.models[1].logdensity(z[3:4]))


def test_keyboard_interrupt_still_stops():
    class Interrupted(bl.Model):
        batched = True
        x = bl.Param(Normal(0.0, 1.0))

        def observe(self, p):
            if bool((p.x > 1.0).any()):
                raise KeyboardInterrupt
            return {}

    model = Interrupted()
    target = rejecting(Target(model.logdensity_and_grad, model.logdensity), model, ModelErrors())
    with pytest.raises(KeyboardInterrupt):
        target.logdensity(torch.tensor([[0.0], [2.0]], dtype=torch.float64))


class DefinedAtZero(bl.Model):
    """Defined at x = 0 only (so the model builds), raising everywhere else."""

    batched = True
    x = bl.Param(Normal(0.0, 1.0))

    def observe(self, p):
        if bool((p.x != 0.0).any()):
            raise ValueError("undefined away from 0")
        return {}


def test_every_start_raising_is_a_clear_error():
    model = DefinedAtZero()
    z = torch.tensor([[0.0], [1.0], [-1.5]], dtype=torch.float64)
    errors = ModelErrors()
    assert finite_starts(model, z, needs_grad=True, errors=errors).tolist() == [True, False, False]
    assert finite_starts(model, z, needs_grad=False).tolist() == [True, False, False]
    error = start_error(model, errors)
    assert isinstance(error, bl.ModelError)
    assert "DefinedAtZero" in str(error) and "2 of the 3 starts" in str(error)
    assert "the first: ValueError: undefined away from 0" in str(error)
    assert start_error(model, ModelErrors()) is None
    with pytest.raises(bl.ModelError, match="raised at every start tried .ValueError"):
        bl.find_map(model)
    with pytest.raises(bl.ModelError, match=r"no start was found.*undefined away from 0"):
        bl.sample(model, warmup=10, draws=10, progress=False)


def test_find_map_steps_back_from_where_the_model_raises():
    """From most starts, L-BFGS's line search tries |rho| > 0.9 on the way to the mode."""
    y = covariance_data()
    rho, weights = grid_posterior(y)
    mode = rho[np.argmax(weights)]
    model = TooWideCovariance(y)
    for method in ("lbfgs", "adam"):
        for seed in range(3):
            result = bl.find_map(model, method=method, seed=seed)
            assert result.converged
            assert abs(float(result.params["rho"]) - mode) < 1e-4
    for result in bl.find_map(bl.stack([model, model]), seed=0):
        assert result.converged and abs(float(result.params["rho"]) - mode) < 1e-4


class TooWideCovarianceNaN(TooWideCovariance):
    """The same model, its log density NaN instead of raising where the Cholesky fails."""

    def observe(self, p):
        one = torch.ones_like(p.rho)
        cov = torch.stack([torch.stack([one, p.rho]), torch.stack([p.rho, RHO_MAX**2 * one])])
        scale_tril, info = torch.linalg.cholesky_ex(cov)
        scale_tril = torch.where(info == 0, scale_tril, torch.nan)
        return {"y": MultivariateNormal(torch.zeros_like(self.y[0]), scale_tril=scale_tril)}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_raise_is_exactly_a_nan_log_density(sampler):
    """The same run where the model raises and where its log density is NaN instead gives
    the same draws: only the chains that raise are affected, as NaN would affect them."""
    y = covariance_data()
    options = dict(warmup=50, draws=50, seed=4, progress=False, traced=False)
    nan = bl.sample(TooWideCovarianceNaN(y), sampler, **options)
    with pytest.warns(UserWarning, match="not positive-definite"):
        raised = bl.sample(TooWideCovariance(y), sampler, **options)
    runs = [nan, raised]
    torch.testing.assert_close(runs[0]["rho"], runs[1]["rho"], rtol=1e-12, atol=0)
    assert runs[0].attrs["model_errors"] == 0 and runs[1].attrs["model_errors"] > 0
