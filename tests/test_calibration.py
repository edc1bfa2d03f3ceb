import re

import numpy as np
import pytest
import scipy.stats
import torch

import bayeslib as bl
from bayeslib import calibration as cal
from bayeslib import diagnostics as dg

# ----- binomial band and power


@pytest.mark.parametrize("n", [1, 10, 57, 500])
@pytest.mark.parametrize("p", [0.0, 0.05, 0.5, 0.9, 0.95, 1.0])
@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.5])
def test_binomial_band_is_scipys_central_interval(n, p, alpha):
    low, high = cal.binomial_band(n, p, alpha)
    assert (low, high) == tuple(scipy.stats.binom.ppf([alpha / 2, 1 - alpha / 2], n, p))
    outside = scipy.stats.binom.cdf(low - 1, n, p) + scipy.stats.binom.sf(high, n, p)
    assert outside <= alpha + 1e-12


@pytest.mark.parametrize("n", [20, 100, 500])
@pytest.mark.parametrize("true_coverage", [0.8, 0.9, 0.95, 0.99])
def test_coverage_power_matches_scipy(n, true_coverage):
    low, high = cal.binomial_band(n, 0.95, 0.001)
    expected = scipy.stats.binom.cdf(low - 1, n, true_coverage) + scipy.stats.binom.sf(
        high, n, true_coverage
    )
    assert cal.coverage_power(n, 0.95, 0.001, true_coverage) == pytest.approx(
        expected, rel=1e-9, abs=1e-15
    )


def test_coverage_power_by_hand():
    # Binomial(2, 0.5): cdf 0.25, 0.75, 1, so the alpha = 0.5 band is [0, 1]; with a true
    # coverage of 0.9 only 2 covered of 2 falls outside it: 0.9^2.
    assert cal.binomial_band(2, 0.5, 0.5) == (0, 1)
    assert cal.coverage_power(2, 0.5, 0.5, 0.9) == pytest.approx(0.81, rel=1e-12)
    # the level itself is flagged at most alpha of the time
    assert cal.coverage_power(500, 0.95, 0.001, 0.95) <= 0.001
    assert 0.85 < cal.coverage_power(500, 0.95, 0.001, 0.90) < 0.9


# ----- covered, ranks, uniformity


def _small(seed, shape=(2, 3)):
    rng = np.random.default_rng(seed)
    draws = rng.normal(size=(5, 3, 17, *shape))
    truth = rng.normal(scale=1.5, size=(5, *shape))
    truth[0] = dg.eti(draws[0], 0.95)[..., 0]  # on the endpoint of the 95% interval
    return draws, truth


def test_covered_is_eti_per_data_set():
    draws, truth = _small(0)
    for level in (0.5, 0.95):
        ours = cal.covered(torch.from_numpy(draws), torch.from_numpy(truth), level)
        assert ours.shape == (5, 2, 3) and ours.dtype == bool
        for r in range(5):
            low, high = np.moveaxis(dg.eti(draws[r], level), -1, 0)
            np.testing.assert_array_equal(ours[r], (low <= truth[r]) & (truth[r] <= high))
    assert cal.covered(draws, truth, 0.95)[0].all()
    assert 0 < cal.covered(draws, truth, 0.5).mean() < 1
    assert cal.covered(draws[..., 0, 0], truth[:, 0, 0], 0.5).shape == (5,)


def _thinned(x, size):
    """workflow/scripts/recovery.py's selection: `size` draws of x [chains, draws]."""
    chains, draws = x.shape
    per_chain = -(-size // chains)
    positions = np.linspace(0, draws - 1, per_chain).round().astype(int)
    return x[:, positions].T.reshape(-1)[:size]


@pytest.mark.parametrize("size", [1, 10, 12, 50, 51])
def test_ranks_count_thinned_draws_below_the_truth(size):
    draws, truth = _small(1)
    ours = cal.ranks(draws, truth, size)
    assert ours.shape == (5, 2, 3)
    for r, i, j in np.ndindex(5, 2, 3):
        expected = (_thinned(draws[r, :, :, i, j], size) < truth[r, i, j]).sum()
        assert ours[r, i, j] == expected
    assert ours.min() >= 0 and ours.max() <= size
    with pytest.raises(ValueError, match="size=52"):
        cal.ranks(draws, truth, 52)


def test_uniformity_test_matches_scipy_chisquare():
    rng = np.random.default_rng(2)
    for ranks in (rng.integers(0, 100, size=300), np.minimum(rng.integers(0, 130, 300), 99)):
        p_value, counts = cal.uniformity_test(ranks, size=99, bins=10)
        np.testing.assert_array_equal(counts, np.bincount(ranks // 10, minlength=10))
        _, expected = scipy.stats.chisquare(counts)
        assert p_value == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert cal.uniformity_test(ranks, 99, 10)[0] < 1e-10  # the piled-up ranks
    with pytest.raises(ValueError, match="bins=7"):
        cal.uniformity_test(ranks, size=99, bins=7)
    with pytest.raises(ValueError, match="size=50"):
        cal.uniformity_test(ranks, size=50, bins=3)


# ----- recovery table

LEVELS = (0.5, 0.9, 0.95)


def _conjugate(seed, scale=1.0, shift=0.0, datasets=500, chains=4, draws=100):
    """theta ~ N(0, 1), n observations y ~ N(theta, 1): the posterior is N(sum(y) / (n + 1),
    1 / (n + 1)). Draws come from it exactly, their sd times `scale` and their mean moved by
    `shift` posterior sds; mu (shape 2) has n = 1 and 4, tau has n = 9."""
    rng = np.random.default_rng(seed)
    truth, out = {}, {}
    for name, n in {"mu": np.array([1, 4]), "tau": np.array(9)}.items():
        theta = rng.standard_normal((datasets, *n.shape))
        total = n * theta + np.sqrt(n) * rng.standard_normal(theta.shape)
        sd = 1 / np.sqrt(n + 1)
        noise = rng.standard_normal((datasets, chains, draws, *n.shape))
        mean = (total / (n + 1) + shift * sd)[:, None, None]
        truth[name], out[name] = theta, mean + scale * sd * noise
    return out, truth


def _table(draws, truth, failed=None):
    return cal.recovery_table(draws, truth, failed, LEVELS, alpha=0.001, rank_draws=99, bins=10)


def test_recovery_table_passes_a_calibrated_posterior():
    draws, truth = _conjugate(seed=0)
    table, frame = _table(draws, truth)
    assert list(table["parameter"]) == ["mu[0]", "mu[1]", "tau"]
    assert list(table.columns[:5]) == ["parameter", "replicates", "bias", "bias_se", "rmse"]
    # Every check is a test at alpha = 0.001 of a hypothesis that holds here, so all 12 pass
    # but with probability <= 1.2% for a random seed; this seed is fixed.
    assert table["passed"].all(), table.T
    assert (table["rank_p_value"] > 0.01).all()
    assert (table["replicates"] == 500).all()
    # bias within 4 standard errors; RMSE of the posterior mean is the posterior sd (with MC
    # error of the 400-draw mean, sd / 20): relative sd of the estimate 1 / sqrt(1000) = 3%
    assert (table["bias"].abs() < 4 * table["bias_se"]).all()
    sd = 1 / np.sqrt([2, 5, 10])
    np.testing.assert_allclose(table["rmse"], sd * np.sqrt(1 + 1 / 400), rtol=0.1)
    # band of Binomial(500, 0.95) at 0.999: [458, 489]
    assert table["coverage_0.95_band_low"].iloc[0] == 458 / 500
    assert table["coverage_0.95_band_high"].iloc[0] == 489 / 500
    np.testing.assert_allclose(
        table["coverage_0.95_se"],
        np.sqrt(table["coverage_0.95"] * (1 - table["coverage_0.95"]) / 500),
    )
    assert table["power"].iloc[0] == cal.coverage_power(500, 0.95, 0.001, 0.90)

    assert len(frame) == 1500
    assert list(frame.columns) == [
        "dataset", "parameter", "truth", "mean", "rank",
        "covered_0.5", "covered_0.9", "covered_0.95", "failed",
    ]  # fmt: skip
    row = frame.iloc[4]  # data set 1, mu[1]
    assert (row["dataset"], row["parameter"]) == (1, "mu[1]")
    assert row["truth"] == truth["mu"][1, 1]
    assert row["mean"] == pytest.approx(draws["mu"][1, ..., 1].mean(), rel=1e-12)
    assert row["rank"] == cal.ranks(draws["mu"], truth["mu"], 99)[1, 1]
    mu0 = frame[frame["parameter"] == "mu[0]"]
    assert table["coverage_0.9"].iloc[0] == mu0["covered_0.9"].mean()


def test_recovery_table_fails_a_too_narrow_posterior():
    # Half the sd: the 95% interval covers P(|Z| < 0.98) = 67% of truths, 13 binomial sds
    # below the band's 91.6%; the truths pile up in the outer ranks.
    draws, truth = _conjugate(seed=1, scale=0.5)
    table, _ = _table(draws, truth)
    for level in LEVELS:
        assert not table[f"coverage_{level:g}_passed"].any()
    assert (table["coverage_0.95"] < 0.75).all()
    assert not table["rank_passed"].any() and not table["passed"].any()


def test_recovery_table_fails_a_biased_posterior_on_ranks():
    # Mean one posterior sd off: the rank of the truth is about 100 * Phi(Z - 1), far from
    # uniform (chi-square statistic in the hundreds on 9 degrees of freedom).
    draws, truth = _conjugate(seed=2, shift=1.0)
    table, _ = _table(draws, truth)
    assert (table["rank_p_value"] < 1e-10).all()
    assert not table["rank_passed"].any() and not table["passed"].any()
    assert (table["bias"] > 10 * table["bias_se"]).all()


def test_recovery_table_leaves_failed_fits_out():
    draws, truth = _conjugate(seed=3)
    failed = np.zeros(500, bool)
    failed[::5] = True
    for name in draws:  # the failed fits are far off: averaging them in would fail every check
        draws[name][failed] += 5.0
    table, frame = _table(draws, truth, failed)
    assert (table["replicates"] == 400).all()
    assert table["passed"].all(), table.T
    assert table["coverage_0.95_band_low"].iloc[0] == cal.binomial_band(400, 0.95, 0.001)[0] / 400
    np.testing.assert_array_equal(frame["failed"], np.repeat(failed, 3))
    kept = frame[~frame["failed"] & (frame["parameter"] == "tau")]
    assert table["bias"].iloc[2] == pytest.approx((kept["mean"] - kept["truth"]).mean())
    everything_failed, _ = _table(draws, truth, np.ones(500, bool))
    assert not everything_failed["passed"].any()
    assert everything_failed["coverage_0.95"].isna().all()


# ----- fit checks

R, C, K, D = 3, 8, 4, 300


def _posterior(draws=D, chains=C, attrs=None, seed=0):
    """R data sets of `chains` independent-draw chains each, stored dataset-major."""
    rng = np.random.default_rng(seed)
    return {
        "beta": rng.normal(size=(R * chains, draws, 2)),
        "sigma": np.exp(rng.normal(scale=0.1, size=(R * chains, draws))),
    }, {"datasets": R, "chains": chains, **(attrs or {})}


def test_fit_checks_pass_healthy_chains_and_match_per_data_set_diagnostics():
    draws, attrs = _posterior(attrs={"superchains": K})
    checks = cal.fit_checks(bl.Posterior(draws, attrs=attrs))
    assert list(checks.columns) == [
        "dataset", "rhat", "rhat_kind", "ess_bulk", "ess_tail", "ess_squares",
        "divergences", "divergence_share", "passed", "reason",
    ]  # fmt: skip
    assert checks["passed"].all() and (checks["reason"] == "").all()
    assert (checks["rhat_kind"] == "nested").all() and (checks["divergences"] == 0).all()
    for r in range(R):
        mine = {name: x[r * C : (r + 1) * C] for name, x in draws.items()}
        rhat = max(np.max(dg.rhat_nested(x, K)) for x in mine.values())
        bulk = min(np.min(dg.ess_bulk(x)) for x in mine.values())
        tail = min(np.min(dg.ess_tail(x)) for x in mine.values())
        squares = min(np.min(dg.ess_squares(x)) for x in mine.values())
        assert checks.loc[r, "rhat"] == pytest.approx(rhat, rel=1e-12)
        assert checks.loc[r, "ess_bulk"] == pytest.approx(bulk, rel=1e-12)
        assert checks.loc[r, "ess_tail"] == pytest.approx(tail, rel=1e-12)
        assert checks.loc[r, "ess_squares"] == pytest.approx(squares, rel=1e-12)


def test_fit_checks_fail_a_stuck_chain_on_nested_rhat():
    draws, attrs = _posterior(attrs={"superchains": K})
    stuck = 1 * C + 3  # data set 1, chain 3
    draws["beta"][stuck, :, 0] = 5.0 + 0.01 * draws["beta"][stuck, :, 0]
    checks = cal.fit_checks(bl.Posterior(draws, attrs=attrs))
    assert list(checks["passed"]) == [True, False, True]
    # One stuck chain of M = 2, 5 sd away: nB = 2.5^2 / 4, nW = (4 + 5^2 / 2) / 4, so nested
    # R-hat is about sqrt(1 + 1.56 / 4.1) = 1.17 (sqrt(1 + 1/2) = 1.22 as the offset grows).
    assert checks.loc[1, "rhat"] == pytest.approx(1.17, abs=0.01)
    assert re.match(r"nested r_hat 1\.1\d > 1\.01 \(beta\[0\]\)", checks.loc[1, "reason"])


def test_fit_checks_fail_too_few_draws_on_ess_with_split_rhat():
    # 4 chains x 40 draws hold at most 160 effective draws; no superchains attribute, so every
    # chain is its own superchain and split R-hat is used
    draws, attrs = _posterior(draws=40, chains=4)
    checks = cal.fit_checks(bl.Posterior(draws, attrs=attrs))
    assert (checks["rhat_kind"] == "split").all()
    assert not checks["passed"].any()
    assert checks["reason"].str.contains(r"ess_bulk \d+ < 400 \(").all()
    assert checks["reason"].str.contains("ess_tail").all()
    relaxed = cal.fit_checks(bl.Posterior(draws, attrs=attrs), min_ess=50)
    assert (relaxed["ess_bulk"] > 50).all() and not relaxed["reason"].str.contains("ess").any()


def test_fit_checks_count_divergences():
    draws, attrs = _posterior(attrs={"superchains": K})
    diverging = np.zeros((R * C, D), bool)
    diverging[2 * C + 5, [10, 20, 30]] = True
    post = bl.Posterior(draws, stats={"diverging": diverging}, attrs=attrs)
    checks = cal.fit_checks(post)
    assert list(checks["divergences"]) == [0, 0, 3]
    assert checks.loc[2, "divergence_share"] == 3 / (C * D)
    assert list(checks["passed"]) == [True, True, False]
    assert checks.loc[2, "reason"].startswith("3 divergent transitions")
    assert cal.fit_checks(post, max_divergence_share=0.01)["passed"].all()


def test_fit_checks_of_a_single_data_set():
    draws, _ = _posterior()
    post = bl.Posterior({name: x[:C] for name, x in draws.items()}, attrs={"superchains": 2})
    checks = cal.fit_checks(post)
    assert len(checks) == 1 and checks.loc[0, "rhat_kind"] == "nested" and checks["passed"].all()
