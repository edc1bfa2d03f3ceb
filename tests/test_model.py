"""The model API: log density, Jacobians, maps between z and named values, draws, bad input."""

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import (
    Bernoulli,
    Binomial,
    Dirichlet,
    Distribution,
    Exponential,
    HalfCauchy,
    Normal,
    Poisson,
    StudentT,
    Uniform,
    constraints,
)

import bayeslib as bl
from bayeslib.models import Best, BestStudentT, LinearRegression

F64 = torch.float64


def random_z(model, chains=5, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(chains, model.dim, generator=g, dtype=F64)


def jacobian_term(model, z):
    return model.logdensity(z) - model.logdensity(z, jacobian=False)


def numeric_log_abs_det(model, z_row):
    """log|det d(constrained)/d(z)| by autograd, for models whose constrained size equals dim."""

    def flat(z):
        values = model.constrain(z[None])
        return torch.cat([v.reshape(-1) for v in values.values()])

    jac = torch.autograd.functional.jacobian(flat, z_row)
    return torch.linalg.slogdet(jac).logabsdet


class Hierarchical(bl.Model):
    """Centered eight schools: theta's prior is a callable of mu and tau declared above it."""

    mu = bl.Param(Normal(0.0, 5.0))
    tau = bl.Param(HalfCauchy(5.0))
    theta = bl.Param(lambda p: Normal(p.mu, p.tau), shape=(8,))

    def __init__(self, y, s):
        super().__init__(y=y, s=s)

    def observe(self, p):
        return {"y": Normal(p.theta, p.s)}


EIGHT_Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
EIGHT_S = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


class Garch(bl.Model):
    """Stationarity bound 0 < beta1 < 1 - alpha1: a support that depends on another parameter."""

    alpha1 = bl.Param(Uniform(0.0, 1.0))
    beta1 = bl.Param(support=lambda p: constraints.interval(0.0, 1.0 - p.alpha1))


class Mixture(bl.Model):
    """Two ordered component locations and a simplex of weights."""

    mu = bl.Param(support=bl.constraints.ordered_vector, shape=(2,))
    weights = bl.Param(Dirichlet(torch.ones(2)))

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        mixture = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(p.weights), Normal(p.mu, 1.0)
        )
        return {"y": mixture}


class HalfStudentT(Distribution):
    """A user-written distribution: |T| for T ~ StudentT(df, 0, scale)."""

    arg_constraints = {"df": constraints.positive, "scale": constraints.positive}
    support = constraints.positive

    def __init__(self, df, scale, validate_args=None):
        self.df = torch.as_tensor(df, dtype=F64)
        self.scale = torch.as_tensor(scale, dtype=F64)
        super().__init__(torch.Size(), validate_args=validate_args)

    def log_prob(self, value):
        return np.log(2.0) + StudentT(self.df, 0.0, self.scale).log_prob(value)

    def sample(self, sample_shape=()):
        return StudentT(self.df, 0.0, self.scale).sample(sample_shape).abs()


class WithHalfT(bl.Model):
    scale = bl.Param(HalfStudentT(3.0, 2.0))


# ----- log density against hand computation


def test_best_log_density_matches_scipy():
    model, _ = Best.simulate(seed=1)
    z = random_z(model, chains=4)
    values = model.constrain(z)
    y1, y2 = model.y1.numpy(), model.y2.numpy()
    for c in range(4):
        mu, sigma, u = values["mu"][c].numpy(), values["sigma"][c].numpy(), z[c, 2:].numpy()
        expected = (
            stats.norm.logpdf(mu, 0, 1).sum()
            + stats.uniform.logpdf(sigma, 0, 100).sum()
            + stats.norm.logpdf(y1, mu[0], sigma[0]).sum()
            + stats.norm.logpdf(y2, mu[1], sigma[1]).sum()
        )
        s = 1 / (1 + np.exp(-u))  # sigma = 100 * sigmoid(u)
        log_jacobian = np.sum(np.log(100 * s * (1 - s)))
        assert model.logdensity(z, jacobian=False)[c].item() == pytest.approx(expected, rel=1e-12)
        assert model.logdensity(z)[c].item() == pytest.approx(expected + log_jacobian, rel=1e-12)


def test_linear_log_density_matches_scipy():
    model, _ = LinearRegression.simulate(n=50, seed=2)
    z = random_z(model, chains=3, scale=0.01)
    values = model.constrain(z)
    X, y = model.X.numpy(), model.y.numpy()
    for c in range(3):
        beta, sigma = values["beta"][c].numpy(), values["sigma"][c].item()
        expected = (
            stats.uniform.logpdf(beta, -100, 200).sum()
            + stats.uniform.logpdf(sigma, 0, 100)
            + stats.norm.logpdf(y, X @ beta, sigma).sum()
        )
        assert model.logdensity(z, jacobian=False)[c].item() == pytest.approx(expected, rel=1e-12)


def test_student_t_best_log_density_matches_scipy():
    model, _ = BestStudentT.simulate(seed=3)
    z = random_z(model, chains=3)
    values = model.constrain(z)
    pooled = np.concatenate([model.y1.numpy(), model.y2.numpy()])
    m, sd = pooled.mean(), pooled.std(ddof=1)
    for c in range(3):
        mu, sigma = values["mu"][c].numpy(), values["sigma"][c].numpy()
        nu = 1 + values["nu_minus_one"][c].item()
        expected = (
            stats.norm.logpdf(mu, m, 1000 * sd).sum()
            + stats.uniform.logpdf(sigma, sd / 1000, 1000 * sd - sd / 1000).sum()
            + stats.expon.logpdf(nu - 1, scale=29)
            + stats.t.logpdf(model.y1.numpy(), nu, mu[0], sigma[0]).sum()
            + stats.t.logpdf(model.y2.numpy(), nu, mu[1], sigma[1]).sum()
        )
        assert model.logdensity(z, jacobian=False)[c].item() == pytest.approx(expected, rel=1e-10)


def test_hierarchical_log_density_matches_scipy():
    model = Hierarchical(EIGHT_Y, EIGHT_S)
    z = random_z(model, chains=3)
    values = model.constrain(z)
    for c in range(3):
        mu, tau, theta = (values[k][c].numpy() for k in ("mu", "tau", "theta"))
        expected = (
            stats.norm.logpdf(mu, 0, 5)
            + stats.halfcauchy.logpdf(tau, scale=5)
            + stats.norm.logpdf(theta, mu, tau).sum()
            + stats.norm.logpdf(EIGHT_Y, theta, EIGHT_S).sum()
        )
        assert model.logdensity(z, jacobian=False)[c].item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    "model",
    [
        Best.simulate(seed=0)[0],
        BestStudentT.simulate(seed=0)[0],
        LinearRegression.simulate(n=30, seed=0)[0],
        Hierarchical(EIGHT_Y, EIGHT_S),
        Garch(),
        WithHalfT(),
    ],
    ids=lambda m: m.name,
)
def test_jacobian_term_equals_numerical_log_det(model):
    z = random_z(model, chains=3, seed=4)
    analytic = jacobian_term(model, z)
    for c in range(3):
        numeric = numeric_log_abs_det(model, z[c]).item()
        assert analytic[c].item() == pytest.approx(numeric, abs=1e-9)


def test_ordered_vector_transform():
    transform = torch.distributions.biject_to(bl.constraints.ordered_vector)
    x = torch.randn(100, 4, dtype=F64)
    y = transform(x)
    assert bl.constraints.ordered_vector.check(y).all()
    torch.testing.assert_close(transform.inv(y), x)
    for row in range(3):
        jac = torch.autograd.functional.jacobian(transform, x[row])
        expected = torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(transform.log_abs_det_jacobian(x[row], y[row]), expected)


def test_simplex_and_ordered_parameters_round_trip():
    model = Mixture([-2.0, -1.5, 2.0, 2.5, 3.0])
    assert model.dim == 3  # two ordered locations, a 2-simplex has one free coordinate
    z = random_z(model, chains=6)
    values = model.constrain(z)
    assert (values["mu"][:, 1] > values["mu"][:, 0]).all()
    torch.testing.assert_close(values["weights"].sum(-1), torch.ones(6, dtype=F64))
    torch.testing.assert_close(model.unconstrain(values), z)


def test_callable_support_respects_other_parameter():
    model = Garch()
    values = model.constrain(random_z(model, chains=200, scale=3.0))
    assert ((values["beta1"] > 0) & (values["beta1"] < 1 - values["alpha1"])).all()


@pytest.mark.parametrize(
    "model",
    [Best.simulate()[0], Hierarchical(EIGHT_Y, EIGHT_S), Garch(), Mixture([0.0, 1.0, 4.0])],
    ids=lambda m: m.name,
)
def test_round_trip_and_gradcheck(model):
    z = random_z(model, chains=4, seed=5)
    torch.testing.assert_close(model.unconstrain(model.constrain(z)), z)
    assert torch.autograd.gradcheck(lambda z: model.logdensity(z), (z.requires_grad_(),))
    lp, grad = model.logdensity_and_grad(z.detach())
    torch.testing.assert_close(lp, model.logdensity(z.detach()))
    assert grad.shape == z.shape


def test_user_distribution_subclass_as_prior():
    model = WithHalfT()
    z = random_z(model, chains=4)
    scale = model.constrain(z)["scale"]
    expected = np.log(2) + stats.t.logpdf(scale.numpy().ravel(), 3, 0, 2)
    torch.testing.assert_close(model.logdensity(z, jacobian=False), torch.tensor(expected))
    draws = model.sample_prior(4000, seed=1)["scale"]
    assert (draws > 0).all()
    # the median of |T| is the 75% quantile of T
    median = stats.t.ppf(0.75, 3, 0, 2)
    assert abs(float(draws.median()) - median) < 4 * 1.253 * 2 / np.sqrt(4000) * 2


# ----- data kinds and one-draw model code


class Counts(bl.Model):
    rate = bl.Param(Exponential(1.0))
    p = bl.Param(Uniform(0.0, 1.0))

    def __init__(self, k, flips, successes):
        super().__init__(k=k, flips=flips, successes=successes)

    def observe(self, p):
        return {
            "k": Poisson(p.rate),
            "flips": Bernoulli(probs=p.p),
            "successes": Binomial(10, probs=p.p),
        }


def test_integer_and_binary_data():
    k, flips, successes = [0, 3, 2, 5], [1, 0, 1, 1, True], np.array([3, 7, 10])
    model = Counts(k, flips, successes)
    z = random_z(model, chains=3)
    values = model.constrain(z)
    for c in range(3):
        rate, prob = values["rate"][c].item(), values["p"][c].item()
        expected = (
            stats.expon.logpdf(rate)
            + stats.poisson.logpmf(k, rate).sum()
            + stats.bernoulli.logpmf([1, 0, 1, 1, 1], prob).sum()
            + stats.binom.logpmf(successes, 10, prob).sum()
        )
        assert model.logdensity(z, jacobian=False)[c].item() == pytest.approx(expected, rel=1e-10)


def test_non_integer_count_data_is_rejected():
    with pytest.raises(bl.ModelError, match=r"observe\['k'\].*outside the support of Poisson"):
        Counts([0, 1.5], [1], [3])


class BestDots(bl.Model):
    """BEST written with '...' indexing."""

    mu = bl.Param(Normal(0.0, 1.0), shape=(2,))
    sigma = bl.Param(Uniform(0.0, 100.0), shape=(2,))

    def __init__(self, y1, y2):
        super().__init__(y1=y1, y2=y2)

    def observe(self, p):
        return {
            "y1": Normal(p.mu[..., 0:1], p.sigma[..., 0:1]),
            "y2": Normal(p.mu[..., 1:2], p.sigma[..., 1:2]),
        }


class BestBatched(BestDots):
    batched = True


def test_dots_indexing_and_batched_models_agree_with_one_draw_model():
    reference, _ = Best.simulate(seed=6)
    z = random_z(reference, chains=7)
    expected = reference.logdensity_and_grad(z)
    for cls in (BestDots, BestBatched):
        model = cls(reference.y1, reference.y2)
        lp, grad = model.logdensity_and_grad(z)
        torch.testing.assert_close(lp, expected[0])
        torch.testing.assert_close(grad, expected[1])


def test_chains_one_and_many():
    model, _ = Best.simulate()
    for chains in (1, 1024):
        z = random_z(model, chains=chains)
        lp, grad = model.logdensity_and_grad(z)
        assert lp.shape == (chains,) and grad.shape == (chains, 4)
        assert torch.isfinite(lp).all()


def test_float32_copy():
    model, _ = Best.simulate()
    small = model.to(dtype=torch.float32)
    z = random_z(model, chains=3)
    lp = small.logdensity(z.float())
    assert lp.dtype == torch.float32 and small.y1.dtype == torch.float32
    torch.testing.assert_close(lp.double(), model.logdensity(z), rtol=1e-5, atol=1e-4)
    assert model.dtype == F64  # the original is untouched


# ----- prior draws, simulated data, starts


def test_prior_draws_are_ancestral():
    model = Hierarchical(EIGHT_Y, EIGHT_S)
    draws = model.sample_prior(4000, seed=2)
    assert draws["theta"].shape == (4000, 8)
    # theta - mu given tau is Normal(0, tau): standardised, it is a standard normal
    standard = ((draws["theta"] - draws["mu"][:, None]) / draws["tau"][:, None]).reshape(-1)
    assert stats.kstest(standard.numpy(), "norm").pvalue > 0.001
    assert stats.kstest(draws["mu"].numpy(), "norm", args=(0, 5)).pvalue > 0.001
    again = model.sample_prior(4000, seed=2)
    torch.testing.assert_close(again["theta"], draws["theta"], rtol=0, atol=0)


def test_sample_data_follows_observe():
    model, _ = Best.simulate(n1=30, n2=40)
    params = {"mu": torch.tensor([[5.0, -5.0]] * 200), "sigma": torch.tensor([[1.0, 2.0]] * 200)}
    data = model.sample_data(params, seed=3)
    assert data["y1"].shape == (200, 30) and data["y2"].shape == (200, 40)
    # 6000 and 8000 normal draws: the means are within 5 standard errors
    assert abs(data["y1"].mean().item() - 5) < 5 / np.sqrt(6000)
    assert abs(data["y2"].std().item() - 2) < 5 * 2 / np.sqrt(2 * 8000)


def test_replace_builds_a_predictive_model_for_new_inputs():
    model, truth = LinearRegression.simulate(n=20)
    new_x = torch.tensor([[1.0, 0.5, 0.5], [1.0, 0.0, 1.0]], dtype=F64)
    predictive = model.replace(X=new_x, y=None)
    assert predictive.observed == [] and predictive.param_shapes == model.param_shapes
    params = {"beta": truth["beta"].expand(3000, 3), "sigma": torch.full((3000,), 0.5)}
    y = predictive.sample_data(params, seed=4)["y"]
    assert y.shape == (3000, 2)
    expected = new_x @ truth["beta"]
    assert (y.mean(0) - expected).abs().max() < 5 * 0.5 / np.sqrt(3000)


def test_replace_refuses_data_that_changes_a_parameter_shape():
    model, truth = LinearRegression.simulate(n=20)
    wide = torch.ones(5, 4, dtype=F64)
    message = (
        r"Model 'LinearRegression': replace\(X=..., y=...\) changes the shape of 'beta' from "
        r"\(3,\) to \(4,\).*'X' has shape \(5, 4\), give shape \(rows, 3\)"
    )
    with pytest.raises(bl.ModelError, match=message):
        model.replace(X=wide, y=None)
    post = bl.Posterior(
        draws={"beta": truth["beta"].expand(1, 10, 3), "sigma": torch.ones(1, 10, dtype=F64)}
    )
    with pytest.raises(bl.ModelError, match=r"changes the shape of 'beta'"):
        bl.posterior_predictive(model, post, X=wide)
    fewer_rows = bl.posterior_predictive(model, post, X=torch.ones(5, 3, dtype=F64))["y"]
    assert fewer_rows.shape == (1, 10, 5)


def test_init_z_kinds():
    model, _ = Best.simulate()
    g = torch.Generator().manual_seed(0)
    uniform = model.init_z(100, "uniform", g)
    assert uniform.shape == (100, 4) and uniform.abs().max() <= 2
    assert (model.init_z(3, "zeros") == 0).all()
    prior = model.constrain(model.init_z(500, "prior", g))
    assert 0 < prior["sigma"].min() and prior["sigma"].max() < 100
    explicit = model.constrain(model.init_z(2, {"sigma": [1.0, 2.0]}, g))
    torch.testing.assert_close(explicit["sigma"], torch.tensor([[1.0, 2.0]] * 2, dtype=F64))
    per_chain = model.constrain(model.init_z(2, {"mu": [[0.0, 1.0], [2.0, 3.0]]}, g))
    torch.testing.assert_close(per_chain["mu"], torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=F64))


# ----- bad input, at construction


@pytest.mark.parametrize(
    "y1, y2, message",
    [
        ([1.0, float("nan")], [0.0], r"Model 'Best': data 'y1' has 1 NaN or infinite value"),
        ([1.0], [0.0, float("inf")], r"data 'y2' has 1 NaN or infinite value.*index \(1,\)"),
        ([], [0.0], r"data 'y1' is empty; give at least one observation"),
        ([[1.0, 2.0]], [0.0], r"data 'y1' must have 1 dimension\(s\), but has shape \(1, 2\)"),
        (["a", "b"], [0.0], r"data 'y1' is not numeric"),
    ],
)
def test_bad_data(y1, y2, message):
    with pytest.raises(bl.ModelError, match=message):
        Best(y1, y2)


def test_linear_rows_must_match():
    with pytest.raises(bl.ModelError, match=r"'y' has 3 rows but 'X' has 2"):
        LinearRegression(np.ones((2, 3)), [1.0, 2.0, 3.0])


def test_parameter_declared_twice():
    with pytest.raises(bl.ModelError, match=r"Model 'Twice': parameter 'mu' is declared twice"):

        class Twice(bl.Model):
            mu = bl.Param(Normal(0.0, 1.0))
            mu = bl.Param(Normal(0.0, 2.0))  # noqa: PIE794


def test_callable_prior_referring_below():
    class Upside(bl.Model):
        theta = bl.Param(lambda p: Normal(p.mu, 1.0), shape=(3,))
        mu = bl.Param(Normal(0.0, 1.0))

    with pytest.raises(
        bl.ModelError,
        match=r"Model 'Upside': the prior of 'theta' refers to 'mu', which is declared below it",
    ):
        Upside()


def test_support_without_bijection():
    class Discrete(bl.Model):
        n = bl.Param(Poisson(3.0))

    with pytest.raises(bl.ModelError, match=r"parameter 'n'.*no bijection to the real numbers"):
        Discrete()


@pytest.mark.parametrize(
    "declare, message",
    [
        (lambda: bl.Param("normal"), "prior must be a torch Distribution"),
        (lambda: bl.Param(Normal(0.0, 1.0), shape=(0,)), "shape must be a tuple of positive"),
        (lambda: bl.Param(support="positive"), "support must be a constraint"),
    ],
)
def test_bad_declarations(declare, message):
    with pytest.raises(bl.ModelError, match=rf"Model 'M', parameter 'a': .*{message}"):
        type("M", (bl.Model,), {"a": declare()})


def test_prior_shape_mismatch():
    class Mismatch(bl.Model):
        a = bl.Param(Normal(torch.zeros(3), 1.0), shape=(2,))

    with pytest.raises(bl.ModelError, match=r"prior has shape \(3,\).*declared shape \(2,\)"):
        Mismatch()


def test_observe_shape_that_would_broadcast_the_data():
    class Broadcasting(bl.Model):
        mu = bl.Param(Normal(0.0, 1.0), shape=(2,))

        def __init__(self, y):
            super().__init__(y=y)

        def observe(self, p):
            return {"y": Normal(p.mu[:, None] if p.mu.ndim else p.mu, 1.0)}

    with pytest.raises(bl.ModelError, match=r"observe\['y'\].*shape \(2, 1\).*shape \(5,\)"):
        Broadcasting(np.zeros(5))


def test_observe_unknown_field_and_missing_super_init():
    class Typo(bl.Model):
        mu = bl.Param(Normal(0.0, 1.0))

        def __init__(self, y):
            super().__init__(y=y)

        def observe(self, p):
            return {"why": Normal(p.mu, 1.0)}

    with pytest.raises(bl.ModelError, match=r"'why' is not a data field.*data fields: \['y'\]"):
        Typo([1.0])

    class NoSuper(bl.Model):
        mu = bl.Param(Normal(0.0, 1.0))

        def __init__(self, y):
            self.y = y

    with pytest.raises(bl.ModelError, match=r"must call super\(\).__init__"):
        NoSuper([1.0])


def test_data_named_like_a_parameter():
    class Clash(bl.Model):
        mu = bl.Param(Normal(0.0, 1.0))

        def __init__(self, mu):
            super().__init__(mu=mu)

    with pytest.raises(bl.ModelError, match=r"data field 'mu' has the name of a parameter"):
        Clash([1.0])


def test_unknown_attribute_in_model_code_is_named():
    class Unknown(bl.Model):
        mu = bl.Param(lambda p: Normal(p.center, 1.0))

    with pytest.raises(bl.ModelError, match=r"prior of 'mu' failed.*no parameter or data field"):
        Unknown()


def test_nan_or_positive_infinite_density_names_the_term():
    class Improper(bl.Model):
        sigma = bl.Param(support=constraints.positive)

        def __init__(self, y):
            super().__init__(y=y)

        def observe(self, p):
            return {"y": Normal(0.0, p.sigma - 1.0)}  # a negative scale is NaN

    model = Improper([0.5])
    z = torch.tensor([[-3.0], [2.0]], dtype=F64)
    assert torch.isnan(model.logdensity(z)[0]) and torch.isfinite(model.logdensity(z)[1])
    with pytest.raises(bl.ModelError, match=r"NaN at chain 0.*'likelihood of y'"):
        model.check_logdensity(z)


def test_bad_init():
    model, _ = Best.simulate()
    with pytest.raises(bl.ModelError, match=r"init='start' is not a known start"):
        model.init_z(2, "start")
    with pytest.raises(bl.ModelError, match=r"init names \['nu'\]"):
        model.init_z(2, {"nu": 1.0})
    with pytest.raises(bl.ModelError, match=r"values given for 'sigma' lie outside its support"):
        model.init_z(2, {"sigma": [-1.0, 1.0]})
    with pytest.raises(bl.ModelError, match=r"init\['mu'\] has shape \(3,\)"):
        model.init_z(2, {"mu": [0.0, 1.0, 2.0]})
    with pytest.raises(bl.ModelError, match=r"flat \(improper\) prior"):
        Garch().init_z(2, "prior")


def test_pointwise_log_likelihood_sums_to_the_likelihood():
    model, _ = Best.simulate(n1=5, n2=7)
    z = random_z(model, chains=3)
    pointwise = model.log_likelihood(z)
    assert pointwise["y1"].shape == (3, 5) and pointwise["y2"].shape == (3, 7)
    terms = model.logdensity_terms(z)
    for field in ("y1", "y2"):
        torch.testing.assert_close(pointwise[field].sum(-1), terms[f"likelihood of {field}"])
