"""A gallery of real models, written as a user writes them, each checked against a reference
computed without bayeslib's samplers: a conjugate posterior, quadrature on a 2-D grid, an
analytic marginal likelihood, or an independent sampler written here in NumPy.

Posterior means (and standard deviations) must lie within 4 Monte Carlo standard errors of
the reference, plus the reference's own error: a grid's is the change when every other grid
point is dropped, a sampler's its own MCSE. The eight schools and the Poisson Gaussian process
are the models of `examples/eight_schools.py` and `examples/gaussian_process.py`.
"""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    HalfNormal,
    InverseGamma,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    Poisson,
    Uniform,
)

import bayeslib as bl
from bayeslib import diagnostics

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    """An example script as a module (its models and helpers; `main` is not run)."""
    spec = importlib.util.spec_from_file_location(f"examples.{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


schools = load_example("eight_schools")
gp = load_example("gaussian_process")


# ----- checks against a reference


def assert_within_mcse(post, reference, error=None, statistic="mean"):
    """Each flat parameter's posterior `statistic` (mean or sd) lies within 4 of its MCSEs of
    `reference` ({flat name: value}), plus the reference's own `error` ({flat name: value})."""
    table = post.summary()
    names = list(reference)
    mcse = table.loc[names, "mcse_mean" if statistic == "mean" else "mcse_sd"].to_numpy()
    error = np.array([error[name] for name in names]) if error else 0.0
    gap = np.abs(table.loc[names, statistic].to_numpy() - np.array(list(reference.values())))
    bound = 4 * mcse + error
    report = pd.DataFrame({"gap": gap, "bound": bound, "mcse": mcse}, index=names)
    assert (gap < bound).all(), f"posterior {statistic} off its reference:\n{report}"


def grid_expectations(log_density, a, b, functions):
    """Expectations of `functions` ({name: f(A, B)}) under the density exp(log_density(A, B))
    on the evenly spaced grid a x b, by Riemann sums; returns ({name: value}, {name: error}),
    the error being the change when every other grid point is dropped."""
    A, B = np.meshgrid(a, b, indexing="ij")
    lp = log_density(A, B)
    edges = np.concatenate([lp[0], lp[-1], lp[:, 0], lp[:, -1]])
    assert edges.max() < lp.max() - 20, "the grid cuts off posterior mass: widen it"

    def expect(step):
        w = np.exp(lp[::step, ::step] - lp.max())
        w /= w.sum()
        return {
            name: float((w * f(A[::step, ::step], B[::step, ::step])).sum())
            for name, f in functions.items()
        }

    fine, coarse = expect(1), expect(2)
    return fine, {name: abs(fine[name] - coarse[name]) for name in fine}


def moments(functions):
    """{name: f} -> {name: f, name^2: f^2}, for means and standard deviations."""
    out = dict(functions)
    for name, f in functions.items():
        out[f"{name}^2"] = lambda A, B, f=f: f(A, B) ** 2
    return out


def sds(values, errors, names):
    """Standard deviations from first and second moments, each with its error (propagated to
    first order: d sd = (d E[x^2] + 2 |E[x]| d E[x]) / (2 sd))."""
    sd = {n: math.sqrt(values[f"{n}^2"] - values[n] ** 2) for n in names}
    error = {n: (errors[f"{n}^2"] + 2 * abs(values[n]) * errors[n]) / (2 * sd[n]) for n in names}
    return sd, error


def normal_logpdf(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)


# ----- (a) eight schools, centred and non-centred


def eight_schools_log_density(mu, log_tau):
    """log p(mu, log tau | y) up to a constant, theta integrated out analytically:
    p(mu) p(tau) tau prod_j Normal(y_j | mu, sqrt(sigma_j^2 + tau^2))."""
    tau = np.exp(log_tau)
    lp = normal_logpdf(mu, 0.0, 5.0) + np.log(2 / (np.pi * 5.0 * (1 + (tau / 5.0) ** 2)))
    lp = lp + log_tau
    for y, sigma in zip(schools.Y, schools.SIGMA, strict=True):
        lp = lp + normal_logpdf(y, mu, np.sqrt(sigma**2 + tau**2))
    return lp


def eight_schools_reference():
    """Posterior means of mu, tau and theta, sds of mu and tau, and P(tau < 1, 3, 7), on a grid
    of mu and log tau; theta_j's conditional mean given (mu, tau) is the precision-weighted
    (y_j tau^2 + mu sigma_j^2) / (tau^2 + sigma_j^2)."""
    functions = moments({"mu": lambda mu, lt: mu, "tau": lambda mu, lt: np.exp(lt)})
    for j, (y, sigma) in enumerate(zip(schools.Y, schools.SIGMA, strict=True)):
        functions[f"theta[{j}]"] = lambda mu, lt, y=y, s2=sigma**2: (
            (y * np.exp(2 * lt) + mu * s2) / (np.exp(2 * lt) + s2)
        )
    for q in (1.0, 3.0, 7.0):
        functions[f"tau<{q:g}"] = lambda mu, lt, q=q: (np.exp(lt) < q).astype(float)
    mu = np.linspace(-40.0, 45.0, 1201)
    log_tau = np.linspace(-22.0, 6.0, 2801)
    return grid_expectations(eight_schools_log_density, mu, log_tau, functions)


def test_eight_schools_grid_is_converged():
    values, errors = eight_schools_reference()
    # the known answer (e.g. Stan's and PyMC's case studies): E[mu] ~ 4.4, E[tau] ~ 3.6
    assert values["mu"] == pytest.approx(4.4, abs=0.2)
    assert values["tau"] == pytest.approx(3.6, abs=0.2)
    assert max(errors.values()) < 0.005


def test_eight_schools_non_centred_matches_the_grid():
    values, errors = eight_schools_reference()
    model = schools.EightSchoolsNonCentered(schools.Y, schools.SIGMA)
    post = schools.theta_of(bl.sample(model, warmup=500, draws=1000, seed=1, progress=False))
    names = ["mu", "tau", *[f"theta[{j}]" for j in range(8)]]
    assert_within_mcse(post, {n: values[n] for n in names}, errors)
    sd, sd_error = sds(values, errors, ["mu", "tau"])
    assert_within_mcse(post, sd, sd_error, statistic="sd")
    for q in (1.0, 3.0, 7.0):
        below = post.prob(lambda p, q=q: p.tau < q)
        assert abs(below.value - values[f"tau<{q:g}"]) < 4 * below.mcse + errors[f"tau<{q:g}"]
    assert post.summary()["r_hat"].max() < 1.01


def test_eight_schools_centred_reports_its_divergences():
    model = schools.EightSchoolsCentered(schools.Y, schools.SIGMA)
    post = bl.sample(model, warmup=300, draws=300, seed=1, progress=False)
    divergences = int(post.stats["diverging"].sum())
    # the funnel at small tau: NUTS at the default target_accept=0.8 always meets it here
    assert divergences > 0
    assert post.sampler_summary()["divergences"] == divergences
    assert any(f"{divergences} divergent transitions" in w for w in post.warnings())


# ----- (b) Gaussian processes with a Cholesky factor


class MarginalGP(bl.Model):
    """y = f(x) + Normal(0, noise) with f ~ GP(0, K) integrated out: y ~ MultivariateNormal(0,
    K + noise^2 I), factored with Cholesky; K is the example's kernel, alpha ~ HalfNormal(2),
    rho ~ InverseGamma(5, 5) as there."""

    alpha = bl.Param(HalfNormal(2.0))
    rho = bl.Param(InverseGamma(5.0, 5.0))

    def __init__(self, x, y, noise):
        super().__init__(x=x, y=y, noise=noise)

    def observe(self, p):
        eye = torch.eye(len(p.x), dtype=p.x.dtype)
        L = torch.linalg.cholesky(gp.kernel(p.x, p.alpha, p.rho) + p.noise**2 * eye)
        return {"y": MultivariateNormal(torch.zeros_like(p.x), scale_tril=L)}


def squared_exponential(x, alpha, rho):
    """The example's kernel in NumPy; alpha and rho may be arrays (one matrix per element)."""
    alpha, rho = np.asarray(alpha)[..., None, None], np.asarray(rho)[..., None, None]
    return alpha**2 * np.exp(-0.5 * ((x[:, None] - x[None, :]) / rho) ** 2)


def jittered_cholesky(K):
    """np.linalg.cholesky(K + JITTER * I): the example's factor, in NumPy."""
    return np.linalg.cholesky(K + gp.JITTER * np.eye(K.shape[-1]))


def half_normal_logpdf(x, scale):
    return np.log(2.0) + normal_logpdf(x, 0.0, scale)


def inverse_gamma_logpdf(x, a, b):
    return a * np.log(b) - math.lgamma(a) - (a + 1) * np.log(x) - b / x


def test_marginal_gp_matches_the_grid():
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0.0, 10.0, 20))
    noise = 0.3
    y = np.sin(x) + noise * rng.standard_normal(20)

    def log_density(log_alpha, log_rho):
        """log p(log alpha, log rho | y): priors, log-Jacobians, Normal(y | 0, K + noise^2 I)."""
        alpha, rho = np.exp(log_alpha), np.exp(log_rho)
        L = np.linalg.cholesky(squared_exponential(x, alpha, rho) + noise**2 * np.eye(len(x)))
        white = np.linalg.solve(L, np.broadcast_to(y[:, None], L.shape[:-1] + (1,)))[..., 0]
        log_likelihood = -0.5 * (white**2).sum(-1) - np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(
            -1
        )
        prior = half_normal_logpdf(alpha, 2.0) + inverse_gamma_logpdf(rho, 5.0, 5.0)
        return log_likelihood + prior + log_alpha + log_rho

    functions = moments({"alpha": lambda a, r: np.exp(a), "rho": lambda a, r: np.exp(r)})
    values, errors = grid_expectations(
        log_density, np.linspace(-4.0, 3.0, 281), np.linspace(-2.5, 2.5, 201), functions
    )
    post = bl.sample(MarginalGP(x, y, noise), warmup=500, draws=1000, seed=2, progress=False)
    names = ["alpha", "rho"]
    assert_within_mcse(post, {n: values[n] for n in names}, errors)
    assert_within_mcse(post, *sds(values, errors, names), statistic="sd")


def poisson_gp_log_density(model, z):
    """The example's PoissonGP log density at unconstrained z, in NumPy: priors, the
    log-Jacobians of alpha = exp(z_0) and rho = exp(z_1), and the Poisson likelihood of
    f = L eta with L L^T = K + jitter I."""
    x, y = model.x.numpy(), model.y.numpy()
    alpha, rho, eta = np.exp(z[0]), np.exp(z[1]), z[2:]
    f = jittered_cholesky(squared_exponential(x, alpha, rho)) @ eta
    prior = (
        half_normal_logpdf(alpha, 2.0)
        + inverse_gamma_logpdf(rho, 5.0, 5.0)
        + normal_logpdf(eta, 0.0, 1.0).sum()
    )
    log_gamma = np.array([math.lgamma(k + 1) for k in y])
    return prior + z[0] + z[1] + (y * f - np.exp(f) - log_gamma).sum()


def test_poisson_gp_log_density_equals_numpy():
    model = gp.PoissonGP(*gp.simulate(20, seed=4))
    z = torch.randn(5, model.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = [poisson_gp_log_density(model, row) for row in z.numpy()]
    # K + 1e-10 I has a condition number up to 1e10: two LAPACK factorisations of it (torch's
    # and NumPy's) agree to about 8 digits, not to float64's 16
    torch.testing.assert_close(model.logdensity(z), torch.tensor(expected), rtol=1e-7, atol=0.0)


class PoissonGPFixedKernel(bl.Model):
    """The example's PoissonGP with its kernel's amplitude and length scale fixed (data): the
    posterior of f alone, which elliptical slice sampling draws independently."""

    eta = bl.Param(Normal(0.0, 1.0), shape=lambda p: tuple(p.x.shape))

    def __init__(self, x, y, alpha, rho):
        super().__init__(x=x, y=y, alpha=alpha, rho=rho)

    def observe(self, p):
        return {"y": Poisson(gp.latent(p.x, p.alpha, p.rho, p.eta).exp())}


def elliptical_slice(log_likelihood, L, chains, iterations, rng):
    """Elliptical slice sampling (Murray, Adams and MacKay 2010) of f ~ Normal(0, L L^T) times
    exp(log_likelihood(f)), for many chains at once: draws [chains, iterations, n]."""
    n = L.shape[0]
    f = rng.standard_normal((chains, n)) @ L.T
    out = np.empty((chains, iterations, n))
    for t in range(iterations):
        nu = rng.standard_normal((chains, n)) @ L.T
        threshold = log_likelihood(f) + np.log(rng.random(chains))
        angle = rng.uniform(0.0, 2 * np.pi, chains)
        low, high = angle - 2 * np.pi, angle.copy()
        pending = np.ones(chains, dtype=bool)
        while pending.any():
            proposal = f * np.cos(angle)[:, None] + nu * np.sin(angle)[:, None]
            accept = pending & (log_likelihood(proposal) > threshold)
            f[accept] = proposal[accept]
            pending &= ~accept
            low = np.where(pending & (angle < 0), angle, low)
            high = np.where(pending & (angle >= 0), angle, high)
            angle = np.where(pending, rng.uniform(low, high), angle)
        out[:, t] = f
    return out


def test_poisson_gp_latents_match_elliptical_slice_sampling():
    x, y = gp.simulate(12, seed=6)
    alpha, rho = 1.5, 2.0
    L = jittered_cholesky(squared_exponential(x, alpha, rho))
    ess = elliptical_slice(
        lambda f: (y * f - np.exp(f)).sum(-1), L, 64, 1500, np.random.default_rng(7)
    )[:, 500:]
    reference = {f"f[{i}]": ess[..., i].mean() for i in range(len(x))}
    error = {f"f[{i}]": 4 * diagnostics.mcse_mean(ess[..., i]) for i in range(len(x))}

    model = PoissonGPFixedKernel(x, y, alpha, rho)
    post = bl.sample(model, warmup=300, draws=600, seed=8, progress=False)
    post = post.derive(f=lambda p: gp.latent(model.x, model.alpha, model.rho, p.eta))
    assert_within_mcse(post, reference, error)


@pytest.mark.slow  # about 60 s: NUTS takes trees of depth 5 or 6 on this posterior
def test_poisson_gp_matches_a_long_metropolis_run():
    model = gp.PoissonGP(*gp.simulate(12, seed=9))

    def with_f(post):
        return post.derive(f=lambda p: gp.latent(model.x, p.alpha, p.rho, p.eta))

    # the reference: 256 random-walk Metropolis chains (an ESS of 1,000 to 20,000 per quantity)
    reference = bl.sample(
        model, "metropolis", chains=256, warmup=2000, draws=2000, thin=2, seed=13, progress=False
    )
    reference = with_f(reference).summary()
    assert reference["r_hat_nested"].max() < 1.01
    post = with_f(bl.sample(model, warmup=300, draws=600, seed=14, progress=False))
    names = ["alpha", "rho", *[f"f[{i}]" for i in range(12)]]
    assert_within_mcse(
        post,
        reference.loc[names, "mean"].to_dict(),
        (4 * reference.loc[names, "mcse_mean"]).to_dict(),
    )


# ----- (c) GARCH(1, 1)


class Garch(bl.Model):
    """r_t ~ Normal(mu, sigma_t), sigma_t^2 = omega + alpha (r_{t-1} - mu)^2 + beta sigma_{t-1}^2
    with sigma_1 given (Stan's user guide); beta < 1 - alpha keeps the variance stationary."""

    mu = bl.Param(Normal(0.0, 10.0))
    omega = bl.Param(HalfNormal(1.0))
    alpha = bl.Param(Uniform(0.0, 1.0))
    beta = bl.Param(
        Uniform(0.0, 1.0), support=lambda p: bl.constraints.interval(0.0, 1.0 - p.alpha)
    )

    def __init__(self, r, sigma1):
        super().__init__(r=r, sigma1=sigma1)
        self.check_ndim("r", 1)

    def observe(self, p):
        variance = [p.sigma1**2]
        for t in range(1, len(p.r)):
            variance.append(p.omega + p.alpha * (p.r[t - 1] - p.mu) ** 2 + p.beta * variance[-1])
        return {"r": Normal(p.mu, torch.stack(variance).sqrt())}


def garch_data(n=60, mu=0.2, omega=0.3, alpha=0.3, beta=0.5, sigma1=1.0, seed=11):
    rng = np.random.default_rng(seed)
    r, variance = np.empty(n), sigma1**2
    for t in range(n):
        if t:
            variance = omega + alpha * (r[t - 1] - mu) ** 2 + beta * variance
        r[t] = mu + np.sqrt(variance) * rng.standard_normal()
    return r, sigma1


def garch_log_density(r, sigma1, z):
    """The Garch log density at unconstrained z in NumPy: mu = z_0, omega = exp(z_1),
    alpha = sigmoid(z_2), beta = (1 - alpha) sigmoid(z_3), with their log-Jacobians."""
    sigmoid = 1 / (1 + np.exp(-z[2:]))
    mu, omega, alpha = z[0], np.exp(z[1]), sigmoid[0]
    beta = (1 - alpha) * sigmoid[1]
    jacobian = z[1] + np.log(sigmoid * (1 - sigmoid)).sum() + np.log(1 - alpha)
    # Uniform(0, 1) priors on alpha and beta add log 1 = 0
    prior = normal_logpdf(mu, 0.0, 10.0) + half_normal_logpdf(omega, 1.0)
    variance = [sigma1**2]
    for t in range(1, len(r)):
        variance.append(omega + alpha * (r[t - 1] - mu) ** 2 + beta * variance[-1])
    return prior + jacobian + normal_logpdf(r, mu, np.sqrt(variance)).sum()


def test_garch_log_density_equals_numpy():
    r, sigma1 = garch_data()
    model = Garch(r, sigma1)
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    expected = [garch_log_density(r, sigma1, row) for row in z.numpy()]
    torch.testing.assert_close(model.logdensity(z), torch.tensor(expected), rtol=1e-10, atol=1e-9)
    values = model.constrain(z)
    assert (values["beta"] < 1 - values["alpha"]).all()


@pytest.mark.slow  # about 40 s: the recursion over time is 60 steps of Python per gradient
def test_garch_matches_a_long_metropolis_run():
    model = Garch(*garch_data())
    # the reference: 128 random-walk Metropolis chains (an ESS near 30,000 per parameter)
    reference = bl.sample(
        model, "metropolis", chains=128, warmup=1000, draws=2000, seed=13, progress=False
    ).summary()
    assert reference["r_hat_nested"].max() < 1.01
    post = bl.sample(model, warmup=300, draws=600, seed=14, progress=False)
    names = ["mu", "omega", "alpha", "beta"]
    assert_within_mcse(
        post,
        reference.loc[names, "mean"].to_dict(),
        (4 * reference.loc[names, "mcse_mean"]).to_dict(),
    )


# ----- (d) a two-component normal mixture with ordered locations


class KnownScaleMixture(bl.Model):
    """y_i ~ w_0 Normal(mu_0, sigma_0) + w_1 Normal(mu_1, sigma_1), weights and scales known;
    mu_0 < mu_1, each with a Normal(0, 2) prior."""

    mu = bl.Param(Normal(0.0, 2.0), shape=(2,), support=bl.constraints.ordered_vector)

    def __init__(self, y, weights, sigma):
        super().__init__(y=y, weights=weights, sigma=sigma)

    def observe(self, p):
        return {"y": MixtureSameFamily(Categorical(probs=p.weights), Normal(p.mu, p.sigma))}


def test_mixture_matches_the_grid():
    weights, sigma = np.array([0.3, 0.7]), np.array([1.0, 1.0])
    rng = np.random.default_rng(15)
    first = rng.random(80) < weights[0]
    y = np.where(first, -1.0, 1.5) + rng.standard_normal(80)

    def log_density(mu0, mu1):
        components = np.stack(
            [
                np.log(w) + normal_logpdf(y[:, None, None], m, s)
                for w, m, s in zip(weights, (mu0, mu1), sigma, strict=True)
            ]
        )
        likelihood = np.logaddexp(components[0], components[1]).sum(0)
        prior = normal_logpdf(mu0, 0.0, 2.0) + normal_logpdf(mu1, 0.0, 2.0)
        return np.where(mu0 < mu1, prior + likelihood, -np.inf)

    functions = moments({"mu[0]": lambda a, b: a, "mu[1]": lambda a, b: b})
    values, errors = grid_expectations(
        log_density, np.linspace(-6.0, 3.0, 721), np.linspace(-2.0, 4.0, 481), functions
    )
    post = bl.sample(
        KnownScaleMixture(y, weights, sigma), warmup=500, draws=1000, seed=16, progress=False
    )
    assert (post["mu"][..., 0] < post["mu"][..., 1]).all()
    names = ["mu[0]", "mu[1]"]
    assert_within_mcse(post, {n: values[n] for n in names}, errors)
    assert_within_mcse(post, *sds(values, errors, names), statistic="sd")


# ----- (e) logistic regression


class Logistic(bl.Model):
    """y_i ~ Bernoulli(logit^-1(a + b x_i)), a, b ~ Normal(0, 2.5)."""

    a = bl.Param(Normal(0.0, 2.5))
    b = bl.Param(Normal(0.0, 2.5))

    def __init__(self, x, y):
        super().__init__(x=x, y=y)

    def observe(self, p):
        return {"y": Bernoulli(logits=p.a + p.b * p.x)}


def test_logistic_regression_matches_the_grid():
    rng = np.random.default_rng(17)
    x = rng.standard_normal(100)
    y = (rng.random(100) < 1 / (1 + np.exp(0.5 - 1.2 * x))).astype(float)

    def log_density(a, b):
        eta = a[..., None] + b[..., None] * x
        likelihood = (y * eta - np.logaddexp(0.0, eta)).sum(-1)
        return likelihood + normal_logpdf(a, 0.0, 2.5) + normal_logpdf(b, 0.0, 2.5)

    functions = moments({"a": lambda a, b: a, "b": lambda a, b: b})
    values, errors = grid_expectations(
        log_density, np.linspace(-3.0, 2.0, 401), np.linspace(-1.0, 4.0, 401), functions
    )
    post = bl.sample(Logistic(x, y), warmup=500, draws=1000, seed=18, progress=False)
    assert_within_mcse(post, {n: values[n] for n in "ab"}, errors)
    assert_within_mcse(post, *sds(values, errors, "ab"), statistic="sd")


# ----- (f) regression with 25 correlated predictors


class KnownNoiseRegression(bl.Model):
    """y ~ Normal(X beta, sigma) with sigma known, beta_k ~ Normal(0, 1): conjugate."""

    beta = bl.Param(Normal(0.0, 1.0), shape=lambda p: (p.X.shape[1],))

    def __init__(self, X, y, sigma):
        super().__init__(X=X, y=y, sigma=sigma)

    def observe(self, p):
        return {"y": Normal(p.X @ p.beta, p.sigma)}


def test_correlated_regression_matches_the_conjugate_posterior():
    k, n, sigma = 25, 100, 1.0
    rng = np.random.default_rng(19)
    # predictors correlated 0.9^|i - j| (AR(1)): their coefficients are correlated a posteriori
    correlation = 0.9 ** np.abs(np.subtract.outer(np.arange(k), np.arange(k)))
    X = rng.standard_normal((n, k)) @ np.linalg.cholesky(correlation).T
    y = X @ rng.standard_normal(k) + sigma * rng.standard_normal(n)
    covariance = np.linalg.inv(X.T @ X / sigma**2 + np.eye(k))
    mean = covariance @ X.T @ y / sigma**2

    post = bl.sample(
        KnownNoiseRegression(X, y, sigma), warmup=400, draws=500, seed=20, progress=False
    )
    names = [f"beta[{i}]" for i in range(k)]
    assert_within_mcse(post, dict(zip(names, mean, strict=True)))
    assert_within_mcse(
        post, dict(zip(names, np.sqrt(np.diag(covariance)), strict=True)), statistic="sd"
    )
