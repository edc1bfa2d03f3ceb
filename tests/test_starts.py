"""Where chains start (`bayeslib.model.starts`): kinds of start, superchains, retries, starts
from modes and the curvature given to Metropolis."""

import math

import pytest
import torch
from torch.distributions import Normal, Uniform, constraints

import bayeslib as bl
from bayeslib.inference import MapResult
from bayeslib.model import starts
from bayeslib.models import Best

F64 = torch.float64


class Conjugate(bl.Model):
    """mu ~ N(0, 1), y_i ~ N(mu, 1): the posterior of mu is N(sum(y) / (n + 1), 1 / (n + 1))."""

    mu = bl.Param(Normal(0.0, 1.0))

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        return {"y": Normal(p.mu, 1.0)}


class Triangle(bl.Model):
    alpha = bl.Param(Uniform(0.0, 1.0))
    beta = bl.Param(Uniform(0.0, 1.0), support=lambda p: constraints.interval(0.0, 1.0 - p.alpha))


def test_uniform_start_is_stans_uniform_in_unconstrained_space():
    model, _ = Best.simulate()
    z = starts.init_z(model, 3, "uniform", torch.Generator().manual_seed(1))
    expected = 4 * torch.rand(3, 4, generator=torch.Generator().manual_seed(1), dtype=F64) - 2
    assert torch.equal(z, expected)
    assert torch.equal(model.init_z(3, "uniform", torch.Generator().manual_seed(1)), expected)


@pytest.mark.parametrize(
    "chains, superchains, init, expected",
    [
        (8, None, "uniform", 8),
        (16, None, "uniform", 4),
        (16, None, {"mu": 0.0}, 16),
        (6, 3, None, 3),
    ],
)
def test_superchains_for(chains, superchains, init, expected):
    assert starts.superchains_for(chains, superchains, init) == expected


@pytest.mark.parametrize(
    "superchains, message", [(4, "must divide chains=6"), (0, "integer >= 1"), (True, "integer")]
)
def test_bad_superchains(superchains, message):
    with pytest.raises(ValueError, match=message):
        starts.superchains_for(6, superchains, "uniform")


def test_chains_of_a_superchain_share_their_start():
    model, _ = Best.simulate()
    g = torch.Generator().manual_seed(0)
    start = starts.initial_positions(model, 12, 3, "uniform", g, seed=0, needs_grad=True)
    z = start.z.reshape(3, 4, model.dim)
    assert (z == z[:, :1]).all() and len({tuple(row.tolist()) for row in z[:, 0]}) == 3
    assert start.covariance is None and start.modes is None


def test_prior_starts_of_a_restricted_prior_lie_in_its_support():
    g = torch.Generator().manual_seed(0)
    model = Triangle()
    start = starts.initial_positions(model, 64, 64, "prior", g, seed=0, needs_grad=True)
    values = model.constrain(start.z)
    assert (values["beta"] < 1 - values["alpha"]).all()
    assert torch.isfinite(model.logdensity(start.z)).all()


def test_curvature_for_metropolis_is_the_posterior_variance():
    y = torch.tensor([0.3, -1.2, 0.8, 2.0], dtype=F64)
    model = Conjugate(y)
    start = starts.Start(torch.zeros(5, 1, dtype=F64))
    start = starts.with_curvature(model, start, 5, seed=0)
    expected = torch.full((5, 1, 1), 1 / (len(y) + 1), dtype=F64)
    torch.testing.assert_close(start.covariance, expected, rtol=1e-6, atol=0)
    assert start.laplace_fallbacks == 0


def test_mode_without_curvature_gives_jittered_starts_and_a_fallback():
    model = Conjugate(torch.tensor([0.5], dtype=F64))
    mode = MapResult(
        {"mu": torch.tensor(0.25)}, torch.tensor([0.25], dtype=F64), 0.0, False, 1, 1.0, "lbfgs"
    )
    g = torch.Generator().manual_seed(0)
    start = starts.initial_positions(model, 8, 8, mode, g, seed=0, needs_grad=True)
    assert ((start.z - 0.25).abs() <= starts.MAP_JITTER).all()
    assert start.laplace_fallbacks == 1 and start.modes == [mode]
    assert torch.equal(start.covariance, torch.ones(8, 1, 1, dtype=F64))


def test_modes_must_match_the_data_sets():
    model = Conjugate(torch.tensor([0.5], dtype=F64))
    mode = bl.find_map(model)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="2 modes for 1 data set"):
        starts.initial_positions(model, 4, 4, [mode, mode], g, seed=0, needs_grad=True)


def test_given_start_with_a_non_finite_density_names_the_term():
    class Tail(bl.Model):
        x = bl.Param(Normal(0.0, 1.0))

        def factors(self, p):
            return {"wall": torch.where(p.x > 1.0, math.nan, 0.0)}

    g = torch.Generator().manual_seed(0)
    with pytest.raises(bl.ModelError, match=r"\['factor wall'\] are NaN"):
        starts.initial_positions(Tail(), 2, 2, {"x": 2.0}, g, seed=0, needs_grad=False)


def test_starts_where_the_models_code_raises_name_the_error():
    class Raises(bl.Model):
        x = bl.Param(Normal(0.0, 1.0))
        batched = True

        def factors(self, p):
            if bool((p.x > 2.0).any()):
                raise ValueError("x is too large for this model")
            return {}

    g = torch.Generator().manual_seed(0)
    with pytest.raises(bl.ModelError, match=r"Model 'Raises'.*ValueError: x is too large"):
        starts.initial_positions(Raises(), 2, 2, {"x": 3.0}, g, seed=0, needs_grad=True)


def test_a_mode_that_ran_away_is_refused():
    model = Conjugate(torch.tensor([0.5], dtype=F64))
    mode = bl.find_map(model)
    mode.unbounded = ["mu"]
    g = torch.Generator().manual_seed(0)
    with pytest.raises(bl.ModelError, match=r"no mode.*\['mu'\]"):
        starts.initial_positions(model, 4, 4, mode, g, seed=0, needs_grad=True)
