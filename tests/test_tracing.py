"""Traced log densities: the same numbers as the model's own code, or a clear fall back."""

import pytest
import torch
from test_model import (
    EIGHT_S,
    EIGHT_Y,
    BestBatched,
    Garch,
    Hierarchical,
    Mixture,
    WithHalfT,
    random_z,
)
from torch.distributions import Normal, Uniform

import bayeslib as bl
from bayeslib.models import Best, BestStudentT, LinearRegression
from bayeslib.tracing import TracingError, make_target, trace_logdensity

MODELS = [
    Best.simulate(seed=0)[0],
    BestStudentT.simulate(seed=0)[0],
    LinearRegression.simulate(n=30, seed=0)[0],
    Hierarchical(EIGHT_Y, EIGHT_S),
    Garch(),
    Mixture([0.0, 1.0, 4.0]),
    WithHalfT(),
    BestBatched(*Best.simulate(seed=1)[0].data.values()),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("chains", [1, 6])
def test_trace_equals_the_model_at_other_points(model, chains):
    """Traced at one batch, replayed at others: the graph holds no value of the first batch."""
    traced = trace_logdensity(model, random_z(model, chains, seed=0))
    traced_lp = trace_logdensity(model, random_z(model, chains, seed=0), grad=False)
    for seed, scale in [(1, 1.0), (2, 3.0), (3, 30.0)]:
        z = random_z(model, chains, seed=seed, scale=scale)
        lp, grad = model.logdensity_and_grad(z)
        got_lp, got_grad = traced(z)
        torch.testing.assert_close(got_lp, lp, rtol=1e-12, atol=1e-12, equal_nan=True)
        torch.testing.assert_close(got_grad, grad, rtol=1e-12, atol=1e-12, equal_nan=True)
        torch.testing.assert_close(traced_lp(z), lp, rtol=1e-12, atol=1e-12, equal_nan=True)


class InPlace(bl.Model):
    """Model code that writes into a tensor in place."""

    mu = bl.Param(Normal(0.0, 1.0))

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        loc = p.mu + torch.zeros_like(self.y)
        loc.mul_(2.0)
        loc += 1.0
        return {"y": Normal(loc, 1.0)}


def test_in_place_writes_are_traced_correctly():
    model = InPlace([0.5, -1.0, 2.0])
    traced = trace_logdensity(model, random_z(model, 4, seed=0))
    z = random_z(model, 4, seed=1)
    lp, grad = model.logdensity_and_grad(z)
    got_lp, got_grad = traced(z)
    torch.testing.assert_close(got_lp, lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, grad, rtol=1e-12, atol=1e-12)
    # Called twice: a folded constant must not have been written into by the first call.
    torch.testing.assert_close(traced(z)[0], lp, rtol=1e-12, atol=1e-12)


class Branching(bl.Model):
    """A batched model with Python control flow on parameter values: not traceable."""

    batched = True
    sigma = bl.Param(Uniform(0.0, 10.0))

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        scale = p.sigma[..., None]
        if bool((p.sigma > 5.0).all()):
            scale = 2.0 * scale
        return {"y": Normal(torch.zeros_like(self.y), scale)}


def test_untraceable_model_falls_back_to_its_own_code_with_a_warning():
    model = Branching([0.3, -0.2, 1.1])
    z = random_z(model, 4, seed=0)
    with pytest.raises(TracingError, match="data-dependent|control flow|local_scalar"):
        trace_logdensity(model, z)
    with pytest.warns(UserWarning, match="could not be traced.*torch.where"):
        target = make_target(model, z)
    assert target.logdensity_and_grad == model.logdensity_and_grad
    with pytest.warns(UserWarning, match="could not be traced"):
        post = bl.sample(model, chains=2, warmup=50, draws=20, seed=0, progress=False)
    assert torch.isfinite(post.draws["sigma"]).all()


@pytest.mark.parametrize("sampler", ["nuts", "metropolis"])
def test_traced_and_eager_sampling_give_the_same_draws(sampler):
    model, _ = Best.simulate(seed=2)
    kwargs = dict(sampler=sampler, chains=3, warmup=100, draws=50, seed=5, progress=False)
    traced = bl.sample(model, **kwargs)
    eager = bl.sample(model, traced=False, **kwargs)
    for name in traced.draws:
        torch.testing.assert_close(traced.draws[name], eager.draws[name], rtol=1e-9, atol=1e-9)
