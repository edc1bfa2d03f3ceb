"""The recovery study's verdict is able to fail.

A study simulates R data sets from known truths, fits them as one stack, counts the fits that
fail `calibration.fit_checks`, and checks the rest with `calibration.recovery_table`
(coverage of central intervals against a binomial band, uniformity of the truths' SBC ranks).
The truths here are drawn from the fitted model's own prior, so a correct fit is exactly
calibrated: its ranks are uniform and its intervals cover at their level. Each check is a
test at ALPHA = 0.001, so a healthy study fails one of its few checks with probability under
1%; the seeds are fixed. A broken study must fail, on the check that the fault breaks, with a
power computed in the test.
"""

import math

import numpy as np
import scipy.stats
import torch
from torch.distributions import LogNormal, Normal

import bayeslib as bl
from bayeslib import calibration
from bayeslib.samplers import RandomWalkMetropolis

LEVELS = [0.5, 0.95]
ALPHA = 0.001
RANK_DRAWS = 15  # one draw from each of 15 of the 16 chains: independent draws
BINS = 4
R = 200
OBSERVATIONS = 5


class NormalMean(bl.Model):
    """mu ~ Normal(0, prior_sd); OBSERVATIONS values y_i ~ Normal(mu, 1), given by their mean
    ybar ~ Normal(mu, 1 / sqrt(n)) (a sufficient statistic)."""

    mu = bl.Param(lambda p: Normal(0.0, p.prior_sd))

    def __init__(self, ybar, n, prior_sd=1.0):
        super().__init__(ybar=ybar, n=n, prior_sd=prior_sd)

    def observe(self, p):
        return {"ybar": Normal(p.mu, 1.0 / p.n.sqrt())}


def normal_means(prior_sd=1.0, seed=0):
    """R data sets whose truths are drawn from Normal(0, 1), fitted with mu ~ Normal(0,
    prior_sd): calibrated when prior_sd is 1."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(R)
    ybar = mu + rng.standard_normal(R) / math.sqrt(OBSERVATIONS)
    models = [NormalMean(ybar[r], OBSERVATIONS, prior_sd) for r in range(R)]
    return models, {"mu": torch.from_numpy(mu)}


class Scale(bl.Model):
    """sigma ~ LogNormal(0, 1), y ~ Normal(0, sigma): a positive parameter, sampled as
    log(sigma), whose log-Jacobian matters."""

    sigma = bl.Param(LogNormal(0.0, 1.0))

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        return {"y": Normal(0.0, p.sigma)}


def scales(seed=1):
    rng = np.random.default_rng(seed)
    sigma = np.exp(rng.standard_normal(R))
    y = sigma * rng.standard_normal(R)
    return [Scale(y[r : r + 1]) for r in range(R)], {"sigma": torch.from_numpy(sigma)}


def fit(models, sampler, **options):
    """The data sets fitted as one stack, 16 chains each in 4 superchains."""
    return bl.sample(
        bl.stack(models), sampler, chains=16, superchains=4, seed=0, progress=False, **options
    )


def judge(post, truth):
    """As the pipeline judges a study: (fit checks, one row per data set; the recovery table
    of the fits that passed them, indexed by parameter)."""
    checks = calibration.fit_checks(post)
    return checks, recovery(post, truth, failed=~checks["passed"].to_numpy())


def recovery(post, truth, failed):
    draws = {name: post.by_dataset(name) for name in truth}
    table, _ = calibration.recovery_table(draws, truth, failed, LEVELS, ALPHA, RANK_DRAWS, BINS)
    return table.set_index("parameter")


def passes(checks, table):
    """The verdict: no fit failed its checks and every parameter passed every check."""
    return bool(checks["passed"].all() and table["passed"].all())


def test_a_healthy_study_passes():
    models, truth = normal_means()
    checks, table = judge(fit(models, "nuts", warmup=200, draws=200), truth)
    assert checks["passed"].all(), checks[~checks["passed"]]
    assert (table["replicates"] == R).all()
    assert table["passed"].all(), table.T
    assert passes(checks, table)


def test_a_wrong_prior_fails_coverage_and_ranks():
    """Fitted with mu ~ Normal(0, 0.01) (the pipeline's fit_prior_scale: 0.01) to truths from
    Normal(0, 1): the posterior is Normal(w ybar, s) with w = n / (n + 1 / 0.01^2) and
    s = 1 / sqrt(n + 1 / 0.01^2), so the error mu - w ybar = (1 - w) mu - w e is
    Normal(0, v) with v = (1 - w)^2 + w^2 / n, and a central interval of level L covers the
    truth with probability 2 Phi(z_L s / sqrt(v)) - 1: about 1.6% at L = 0.95."""
    prior_sd = 0.01
    n = OBSERVATIONS
    w = n / (n + prior_sd**-2)
    s, v = 1 / math.sqrt(n + prior_sd**-2), (1 - w) ** 2 + w**2 / n
    standard = scipy.stats.norm
    for level in LEVELS:
        coverage = 2 * standard.cdf(standard.ppf((1 + level) / 2) * s / math.sqrt(v)) - 1
        assert coverage < 0.02
        assert calibration.coverage_power(R, level, ALPHA, coverage) > 0.999

    models, truth = normal_means(prior_sd)
    checks, table = judge(fit(models, "nuts", warmup=200, draws=200), truth)
    assert checks["passed"].all()  # the sampler is fine: the model is wrong
    row = table.loc["mu"]
    assert not row["coverage_0.5_passed"] and not row["coverage_0.95_passed"]
    assert row["coverage_0.95"] < row["coverage_0.95_band_low"]
    assert not row["rank_passed"] and row["rank_p_value"] < ALPHA
    assert not passes(checks, table)


class NoJacobianMetropolis(RandomWalkMetropolis):
    """Random-walk Metropolis on the density of the constrained parameters, the log-Jacobian
    of the transform to unconstrained space left out: a classic bug. For Scale it samples
    log(sigma) from the posterior times 1 / sigma, too small."""

    def __init__(self, stacked):
        super().__init__()
        self.stacked = stacked

    def _without_jacobian(self, target):
        return target._replace(logdensity=lambda z: self.stacked.logdensity(z, jacobian=False))

    def init_state(self, target, z):
        return super().init_state(self._without_jacobian(target), z)

    def step(self, generator, target, state, params):
        return super().step(generator, self._without_jacobian(target), state, params)


def no_jacobian_rank_power(simulations=5000, seed=2):
    """The power of the rank test (chi-square at ALPHA, BINS bins, R data sets) against the
    no-Jacobian posterior of Scale, by quadrature: in z = log(sigma) that kernel samples the
    density N(z; 0, 1) e^-z N(y; 0, e^z) (the log-normal prior's density of sigma at e^z is
    N(z; 0, 1) e^-z; the Jacobian e^z is missing). At the truth's quantile u in it, the rank
    among RANK_DRAWS independent draws is Binomial(RANK_DRAWS, u); the chi-square statistic
    is then noncentral with lambda = R * BINS * sum (p_bin - 1 / BINS)^2."""
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal(simulations)
    y = np.exp(truth) * rng.standard_normal(simulations)
    z = np.linspace(-8.0, 8.0, 1601)
    log_density = -0.5 * z**2 - z - z - 0.5 * y[:, None] ** 2 * np.exp(-2 * z)
    cdf = np.exp(log_density - log_density.max(axis=1, keepdims=True)).cumsum(axis=1)
    cdf /= cdf[:, -1:]
    u = cdf[np.arange(simulations), np.searchsorted(z, truth)]  # on a grid of step 0.01
    ranks = np.arange(RANK_DRAWS + 1)
    p_rank = scipy.stats.binom.pmf(ranks, RANK_DRAWS, u[:, None]).mean(axis=0)
    p_bin = p_rank.reshape(BINS, -1).sum(axis=1)
    noncentrality = R * BINS * ((p_bin - 1 / BINS) ** 2).sum()
    critical = scipy.stats.chi2.ppf(1 - ALPHA, BINS - 1)
    return scipy.stats.ncx2.sf(critical, BINS - 1, noncentrality), p_bin


def test_a_kernel_without_the_log_jacobian_fails_the_ranks_of_that_parameter():
    power, p_bin = no_jacobian_rank_power()
    # the truths pile up in the top rank bin (the draws are too small): about 0.11, 0.17,
    # 0.24, 0.48 instead of 0.25 each
    assert p_bin[-1] > 0.4 and power > 0.999
    models, truth = scales()
    options = dict(warmup=300, draws=500)

    checks, table = judge(fit(models, "metropolis", **options), truth)
    assert passes(checks, table), (checks[~checks["passed"]], table.T)

    wrong = NoJacobianMetropolis(bl.stack(models))
    checks, table = judge(fit(models, wrong, **options), truth)
    # The chains converge, to the wrong distribution: (nearly) every fit passes its checks;
    # nested R-hat at 1.01 fails about one fit in a few hundred of this length by chance.
    assert checks["passed"].mean() >= 0.99
    row = table.loc["sigma"]
    assert not row["rank_passed"] and row["rank_p_value"] < ALPHA
    assert row["bias"] < -4 * row["bias_se"]
    assert not passes(checks, table)


def test_too_few_iterations_fail_the_fit_checks_even_when_coverage_looks_fine():
    models, truth = normal_means()
    # every chain of a data set from its own point, spread over -5..5 (posterior sd 0.41)
    starts = {"mu": torch.linspace(-5.0, 5.0, 16).repeat(R)}
    post = fit(models, "nuts", warmup=10, draws=20, init=starts)
    checks, table = judge(post, truth)
    # 16 chains x 20 draws = 320 draws, whose bulk ESS is smaller still
    assert not checks["passed"].any()
    assert checks["reason"].str.contains(r"ess_bulk \d+ < 400").all()
    assert (checks["ess_bulk"] < 400).all()
    # no fit is left to judge, so every check of the table fails
    row = table.loc["mu"]
    assert row["replicates"] == 0
    assert not row["coverage_0.95_passed"] and not row["rank_passed"] and not row["passed"]
    assert not passes(checks, table)
    # yet judged without the fit checks, these draws would pass: NUTS reaches a 1-D
    # Gaussian within a few iterations; only the fit checks see that 320 draws are too few
    assert recovery(post, truth, failed=None).loc["mu", "passed"]
