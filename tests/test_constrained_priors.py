"""Priors restricted to a support (`Param(prior, support=...)`), and `factors`.

References are analytic: a half-normal, the order statistics of two normals, the uniform
density on a triangle, a Gaussian with a soft linear constraint. Monte Carlo tolerances are
4 MCSE (from the chains' own ESS) or 4 standard errors of independent draws.
"""

import math

import numpy as np
import pytest
import torch
from torch.distributions import (
    Dirichlet,
    Exponential,
    Gamma,
    LKJCholesky,
    Normal,
    Uniform,
    constraints,
)

import bayeslib as bl
from bayeslib import diagnostics
from bayeslib.model.supports import support_inside

F64 = torch.float64


class HalfNormal(bl.Model):
    """Stan's `real<lower=0> s; s ~ normal(0, 1);`."""

    s = bl.Param(Normal(0.0, 1.0), support=constraints.positive)


class Ordered(bl.Model):
    """Stan's `ordered[2] mu; mu ~ normal(0, 2);`."""

    mu = bl.Param(Normal(0.0, 2.0), shape=(2,), support=bl.constraints.ordered_vector)


class Triangle(bl.Model):
    """GARCH's stationarity bound: beta < 1 - alpha, with uniform priors on (0, 1) for both;
    the prior is uniform on the triangle alpha + beta < 1."""

    alpha = bl.Param(Uniform(0.0, 1.0))
    beta = bl.Param(Uniform(0.0, 1.0), support=lambda p: constraints.interval(0.0, 1.0 - p.alpha))


class Scale(bl.Model):
    """A half-normal scale of normal data."""

    mu = bl.Param(Normal(0.0, 1.0))
    sigma = bl.Param(Normal(0.0, 2.0), support=constraints.positive)

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        return {"y": Normal(p.mu, p.sigma)}


SOFT_SD = 0.1


class SoftSumToZero(bl.Model):
    """a, b ~ Normal(0, 1) with a factor Normal(0, SOFT_SD) on a + b: a Gaussian with precision
    I + [[1, 1], [1, 1]] / SOFT_SD^2, so E[a^2] = (1 / (1 + 2 / SOFT_SD^2) + 1) / 2."""

    effects = bl.Param(Normal(0.0, 1.0), shape=(2,))

    def factors(self, p):
        return {"sum to zero": Normal(0.0, SOFT_SD).log_prob(p.effects.sum())}


def within_mcse(draws, reference, k=4.0):
    """|mean - reference| < k MCSE, for draws `[chains, draws]`."""
    draws = np.asarray(draws)
    mcse = float(diagnostics.mcse_mean(draws))
    return abs(draws.mean() - reference) < k * mcse, (draws.mean(), reference, mcse)


def test_restricted_prior_density_is_the_prior_plus_the_supports_jacobian():
    z = torch.linspace(-3.0, 3.0, 7, dtype=F64)[:, None]
    expected = Normal(0.0, 1.0).log_prob(z.exp()) + z  # log|d exp(z) / dz| = z
    torch.testing.assert_close(HalfNormal().logdensity(z), expected[:, 0])
    model = Ordered()
    z = torch.tensor([[0.3, -0.7], [-1.0, 0.2]], dtype=F64)
    mu = torch.stack([z[:, 0], z[:, 0] + z[:, 1].exp()], dim=-1)
    expected = Normal(0.0, 2.0).log_prob(mu).sum(-1) + z[:, 1]
    torch.testing.assert_close(model.logdensity(z), expected)
    assert (model.constrain(z)["mu"].diff(dim=-1) > 0).all()


def test_restricted_callable_prior():
    class Positive(bl.Model):
        mu = bl.Param(Normal(0.0, 1.0))
        theta = bl.Param(lambda p: Normal(p.mu, 1.0), support=constraints.positive)

    z = torch.tensor([[0.5, -1.0], [-0.2, 0.7]], dtype=F64)
    theta = z[:, 1].exp()
    expected = Normal(0.0, 1.0).log_prob(z[:, 0]) + Normal(z[:, 0], 1.0).log_prob(theta) + z[:, 1]
    torch.testing.assert_close(Positive().logdensity(z), expected)


def test_support_bounded_by_another_parameter():
    model = Triangle()
    z = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    values = model.constrain(z)
    assert (values["beta"] < 1 - values["alpha"]).all() and (values["beta"] > 0).all()
    # Uniform priors are constant inside: the density is the Jacobians' alone.
    torch.testing.assert_close(
        model.logdensity(z, jacobian=False), torch.zeros(200, dtype=F64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(model.unconstrain(values), z)


def test_half_normal_posterior_mean():
    post = bl.sample(HalfNormal(), chains=4, warmup=500, draws=1000, seed=0, progress=False)
    ok, detail = within_mcse(post["s"], math.sqrt(2 / math.pi))
    assert ok, detail


def test_ordered_normals_are_the_order_statistics():
    # max of two independent N(0, 2^2): mean 2 / sqrt(pi)
    post = bl.sample(Ordered(), chains=4, warmup=500, draws=1000, seed=1, progress=False)
    ok, detail = within_mcse(post["mu"][..., 1], 2 / math.sqrt(math.pi))
    assert ok, detail
    ok, detail = within_mcse(post["mu"][..., 0], -2 / math.sqrt(math.pi))
    assert ok, detail


def test_triangle_posterior_marginals():
    # Uniform on alpha + beta < 1: both marginals have density 2 (1 - x), mean 1/3.
    post = bl.sample(Triangle(), chains=4, warmup=500, draws=1000, seed=2, progress=False)
    for name in ("alpha", "beta"):
        ok, detail = within_mcse(post[name], 1 / 3)
        assert ok, (name, detail)


def test_prior_draws_of_restricted_priors_follow_the_model_density():
    n = 4000
    draws = Triangle().sample_prior(n, seed=0)
    assert (draws["beta"] < 1 - draws["alpha"]).all()
    # On the triangle, alpha has mean 1/3 and sd sqrt(1/18) (its density is 2 (1 - alpha)):
    # the model's unnormalised prior, not alpha ~ U(0, 1) then beta ~ U(0, 1 - alpha).
    for name in ("alpha", "beta"):
        assert abs(draws[name].mean().item() - 1 / 3) < 4 * math.sqrt(1 / 18 / n)
    s = HalfNormal().sample_prior(n, seed=1)["s"]
    assert (s > 0).all()
    assert abs(s.mean().item() - math.sqrt(2 / math.pi)) < 4 * math.sqrt(1 - 2 / math.pi) / n**0.5
    mu = Ordered().sample_prior(n, seed=2)["mu"]
    assert (mu[:, 1] > mu[:, 0]).all()
    assert abs(mu[:, 1].mean().item() - 2 / math.sqrt(math.pi)) < 4 * 2 / n**0.5


def test_prior_draws_refused_where_the_support_has_almost_no_prior_mass():
    class FarTail(bl.Model):
        a = bl.Param(Normal(0.0, 1.0), support=constraints.greater_than(12.0))

    model = FarTail()  # the density is fine; only drawing from it by rejection is hopeless
    assert torch.isfinite(model.logdensity(torch.zeros(2, 1, dtype=F64))).all()
    with pytest.raises(bl.ModelError, match=r"Model 'FarTail'.*\['a'\] fell inside"):
        model.sample_prior(3)


def test_predictive_draws_with_a_restricted_prior():
    model = Scale(torch.tensor([0.5, -0.3, 1.2, 0.1], dtype=F64))
    prior = bl.prior_predictive(model, 500, seed=0)
    assert prior["y"].shape == (500, 4)
    assert model.sample_prior(500, seed=0)["sigma"].min() > 0
    post = bl.sample(model, chains=2, warmup=200, draws=100, seed=0, progress=False)
    assert bl.posterior_predictive(model, post)["y"].shape == (2, 100, 4)
    z = model.init_z(8, "prior", torch.Generator().manual_seed(0))
    assert (model.constrain(z)["sigma"] > 0).all()


@pytest.mark.parametrize(
    "prior, support",
    [
        (Gamma(2.0, 1.0), constraints.real),
        (Uniform(0.0, 1.0), constraints.interval(0.5, 2.0)),
        (Exponential(1.0), constraints.less_than(3.0)),
    ],
)
def test_support_outside_the_priors_is_refused(prior, support):
    model = type("Outside", (bl.Model,), {"a": bl.Param(prior, support=support)})
    with pytest.raises(bl.ModelError, match=r"Model 'Outside', parameter 'a'.*not inside"):
        model()


def test_ordered_vector_is_not_inside_a_simplex_prior():
    class Outside(bl.Model):
        w = bl.Param(Dirichlet(torch.ones(3)), support=bl.constraints.ordered_vector)

    with pytest.raises(bl.ModelError, match=r"parameter 'w'.*OrderedVector.*not inside"):
        Outside()


def test_callable_support_checked_where_the_model_is_built():
    class Outside(bl.Model):
        alpha = bl.Param(Uniform(0.0, 1.0))
        beta = bl.Param(Uniform(0.0, 1.0), support=lambda p: constraints.interval(0.0, 1 + p.alpha))

    with pytest.raises(bl.ModelError, match=r"parameter 'beta'.*not inside"):
        Outside()


@pytest.mark.parametrize(
    "inner, outer, shape, inside",
    [
        (constraints.positive, constraints.real, (), True),  # rule 1
        (constraints.interval(0.2, 0.5), constraints.unit_interval, (), True),  # rule 2
        (constraints.positive, constraints.nonnegative, (), True),  # boundaries ignored
        (constraints.nonnegative, constraints.greater_than(0.5), (), False),
        (constraints.simplex, constraints.unit_interval, (3,), True),  # simplex in [0, 1]
        (bl.constraints.ordered_vector, constraints.positive, (3,), False),
        (constraints.simplex, constraints.simplex, (3,), True),  # rule 3
        (constraints.corr_cholesky, constraints.lower_cholesky, (3, 3), True),  # rule 4
        (bl.constraints.ordered_vector, constraints.simplex, (3,), False),  # rule 4
        (
            constraints.corr_cholesky,
            constraints.independent(constraints.unit_interval, 2),
            (3, 3),
            False,
        ),
        (
            constraints.corr_cholesky,
            constraints.independent(constraints.interval(-1.0, 1.0), 2),
            (3, 3),
            True,
        ),
    ],
)
def test_support_inclusion_rule(inner, outer, shape, inside):
    assert support_inside(inner, outer, shape, F64, torch.device("cpu")) is inside


def test_supports_inside_the_priors_build():
    class Inside(bl.Model):
        a = bl.Param(Uniform(0.0, 1.0), support=constraints.interval(0.2, 0.5))
        b = bl.Param(Exponential(1.0), support=constraints.positive)
        c = bl.Param(Dirichlet(torch.ones(3)), support=constraints.simplex)
        d = bl.Param(LKJCholesky(3, 2.0), support=constraints.corr_cholesky)

    values = Inside().constrain(torch.zeros(1, Inside().dim, dtype=F64))
    assert 0.2 < values["a"].item() < 0.5 and values["b"].item() > 0


def test_factors_are_summed_into_the_density_and_named():
    model = SoftSumToZero()
    z = torch.tensor([[0.3, -0.1], [1.0, 1.0]], dtype=F64)
    expected = Normal(0.0, 1.0).log_prob(z).sum(-1) + Normal(0.0, SOFT_SD).log_prob(z.sum(-1))
    torch.testing.assert_close(model.logdensity(z), expected)
    terms = model.logdensity_terms(z)
    torch.testing.assert_close(
        terms["factor sum to zero"], Normal(0.0, SOFT_SD).log_prob(z.sum(-1))
    )
    assert bl.Model.factors(model, None) == {}


def test_soft_sum_to_zero_posterior():
    post = bl.sample(SoftSumToZero(), chains=4, warmup=500, draws=1000, seed=3, progress=False)
    second_moment = (1 / (1 + 2 / SOFT_SD**2) + 1) / 2
    ok, detail = within_mcse(post["effects"][..., 0] ** 2, second_moment)
    assert ok, detail
    total = post["effects"].sum(-1)
    assert abs(total.std().item() - math.sqrt(2 / (1 + 2 / SOFT_SD**2))) < 0.01


@pytest.mark.parametrize(
    "factors, message",
    [
        (lambda self, p: [p.a], "factors must return a dict"),
        (lambda self, p: {"x": 1.0}, r"factors\['x'\] is float"),
        (lambda self, p: {"x": p.undeclared}, "no parameter or data field 'undeclared'"),
    ],
)
def test_bad_factors(factors, message):
    model = type("Factored", (bl.Model,), {"a": bl.Param(Normal(0.0, 1.0)), "factors": factors})
    with pytest.raises(bl.ModelError, match=rf"Model 'Factored'.*{message}"):
        model()
