import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from bayeslib import diagnostics as dg

az = pytest.importorskip("arviz")


def _ar1(rng, chains, draws, rho):
    noise = rng.normal(size=(chains, draws))
    x = np.empty((chains, draws))
    x[:, 0] = noise[:, 0]
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + np.sqrt(1 - rho**2) * noise[:, t]
    return x


def _make_cases():
    rng = np.random.default_rng(20240611)
    offset = np.array([0.0, 0.0, 0.0, 3.0])[:, None]
    return {
        "normal": rng.normal(size=(4, 1000)),
        "ar1_0.9": _ar1(rng, 4, 1000, 0.9),
        "one_chain_offset": rng.normal(size=(4, 500)) + offset,
        "cauchy": rng.standard_cauchy(size=(4, 1000)),
        "student_t_1.5_odd_draws": rng.standard_t(1.5, size=(4, 999)),
        "discrete_ties": rng.integers(0, 3, size=(4, 400)).astype(float),
        "constant": np.full((4, 200), 1.5),
        "constant_inexact": np.full((4, 200), 3.3),
        "one_chain_constant": np.vstack([rng.normal(size=(3, 200)), np.full((1, 200), 0.5)]),
        "chains_stuck_apart": np.repeat(np.arange(4.0)[:, None], 200, axis=1),
        # the folded draws are all equal: tail R-hat is NaN, bulk R-hat is huge and wins
        "two_chains_stuck_apart": np.repeat(np.array([[0.0], [1.0]]), 100, axis=1),
        "single_chain": rng.normal(size=(1, 300)),
        "five_draws": rng.normal(size=(2, 5)),
        "three_draws": rng.normal(size=(3, 3)),
    }


CASES = _make_cases()

DIAGNOSTICS = {
    "rhat": (dg.rhat, lambda x: az.rhat(x, method="rank")),
    "ess_bulk": (dg.ess_bulk, lambda x: az.ess(x, method="bulk")),
    "ess_tail": (dg.ess_tail, lambda x: az.ess(x, method="tail")),
    "ess_mean": (dg.ess_mean, lambda x: az.ess(x, method="mean")),
    "ess_squares": (dg.ess_squares, lambda x: az.ess((x - np.mean(x)) ** 2, method="mean")),
    "mcse_mean": (dg.mcse_mean, lambda x: az.mcse(x, method="mean")),
    "mcse_sd": (dg.mcse_sd, lambda x: az.mcse(x, method="sd")),
}


def _reference(fn, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(fn(x), dtype=float)


def _assert_matches(ours, ref):
    ours, ref = np.asarray(ours, dtype=float), np.asarray(ref, dtype=float)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    # atol only matters for the round-off sized MCSE of constant draws
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("diagnostic", DIAGNOSTICS)
def test_matches_arviz(diagnostic, case):
    ours_fn, ref_fn = DIAGNOSTICS[diagnostic]
    x = CASES[case]
    ours = ours_fn(x)
    assert isinstance(ours, float)
    _assert_matches(ours, _reference(ref_fn, x))


@pytest.mark.parametrize("case", [c for c, x in CASES.items() if x.shape[1] >= 4])
def test_hdi_matches_arviz(case):
    x = CASES[case]
    _assert_matches(dg.hdi(x), az.hdi(x.ravel(), hdi_prob=0.95))
    _assert_matches(dg.hdi(x, prob=0.5), az.hdi(x.ravel(), hdi_prob=0.5))


def _short_chains(seed):
    """Few draws with positive, negative or no autocorrelation, or ties: these reach the
    corners of the autocorrelation truncation that long chains seldom do."""
    rng = np.random.default_rng(seed)
    chains, draws = int(rng.integers(1, 5)), int(rng.integers(4, 25))
    kind = seed % 3
    if kind == 0:
        return _ar1(rng, chains, draws, rng.uniform(-0.95, 0.95))
    if kind == 1:
        return rng.integers(0, 3, size=(chains, draws)).astype(float)
    return rng.normal(size=(chains, draws)) * (-1.0) ** np.arange(draws)


@pytest.mark.parametrize("diagnostic", DIAGNOSTICS)
def test_short_chains_match_arviz(diagnostic):
    ours_fn, ref_fn = DIAGNOSTICS[diagnostic]
    for seed in range(150):
        x = _short_chains(seed)
        _assert_matches(ours_fn(x), _reference(ref_fn, x))


def test_offset_chain_gives_large_rhat():
    assert dg.rhat(CASES["one_chain_offset"]) > 1.3
    assert dg.rhat(CASES["chains_stuck_apart"]) > 1e6
    assert dg.rhat(CASES["normal"]) < 1.01


def test_degenerate_cases():
    const = CASES["constant"]
    size = const.size
    # constant draws: R-hat undefined, every ESS is the full draw count, mean error zero
    assert np.isnan(dg.rhat(const))
    assert dg.ess_bulk(const) == dg.ess_tail(const) == dg.ess_mean(const) == size
    assert dg.mcse_mean(const) == 0.0
    assert np.isnan(dg.mcse_sd(const))
    # R-hat needs two chains; everything needs four draws
    assert np.isnan(dg.rhat(CASES["single_chain"]))
    assert np.isfinite(dg.ess_bulk(CASES["single_chain"]))
    for fn, _ in DIAGNOSTICS.values():
        assert np.isnan(fn(CASES["three_draws"]))


def _multi_dim():
    """[4, 600, 2, 3] with a different kind of chain in each element, one with a NaN draw."""
    rng = np.random.default_rng(7)
    x = np.empty((4, 600, 2, 3))
    x[..., 0, 0] = rng.normal(size=(4, 600))
    x[..., 0, 1] = _ar1(rng, 4, 600, 0.9)
    x[..., 0, 2] = rng.normal(size=(4, 600)) + np.array([0.0, 0.0, 0.0, 3.0])[:, None]
    x[..., 1, 0] = rng.standard_t(1.5, size=(4, 600))
    x[..., 1, 1] = 2.5
    x[..., 1, 2] = rng.normal(size=(4, 600))
    x[2, 17, 1, 2] = np.nan
    return x


@pytest.mark.parametrize("diagnostic", DIAGNOSTICS)
def test_multi_dim_matches_arviz_elementwise(diagnostic):
    ours_fn, ref_fn = DIAGNOSTICS[diagnostic]
    x = _multi_dim()
    ours = ours_fn(x)
    assert ours.shape == (2, 3)
    ref = np.array(
        [[_reference(ref_fn, x[:, :, i, j]) for j in range(3)] for i in range(2)], dtype=float
    )
    _assert_matches(ours, ref)
    assert np.isnan(ours[1, 2]) and not np.isnan(ours[0, 0])


def test_multi_dim_matches_arviz_dataset():
    x = _multi_dim()[..., :2, :2]
    data = az.convert_to_dataset({"theta": x})
    for ours, ref in [
        (dg.rhat, lambda d: az.rhat(d, method="rank")["theta"].values),
        (dg.ess_tail, lambda d: az.ess(d, method="tail")["theta"].values),
        (dg.hdi, lambda d: az.hdi(d, hdi_prob=0.95)["theta"].values),
    ]:
        _assert_matches(ours(x), _reference(ref, data))


def test_torch_input_equals_numpy_input():
    x = _multi_dim()
    t = torch.from_numpy(x)
    for fn, _ in DIAGNOSTICS.values():
        np.testing.assert_array_equal(fn(t), fn(x))
    np.testing.assert_array_equal(dg.hdi(t), dg.hdi(x))
    np.testing.assert_array_equal(dg.eti(t), dg.eti(x))
    assert dg.rhat(torch.from_numpy(CASES["normal"])) == dg.rhat(CASES["normal"])


def test_eti_is_pooled_linear_quantiles():
    x = _multi_dim()
    probs = [(1 - 0.9) / 2, (1 + 0.9) / 2]
    expected = np.moveaxis(np.quantile(x.reshape(-1, 2, 3), probs, axis=0), 0, -1)
    np.testing.assert_array_equal(dg.eti(x, prob=0.9), expected)


def test_flat_names():
    assert dg.flat_names("sigma", ()) == ["sigma"]
    assert dg.flat_names("mu", (2,)) == ["mu[0]", "mu[1]"]
    assert dg.flat_names("L", (2, 2)) == ["L[0,0]", "L[0,1]", "L[1,0]", "L[1,1]"]
    assert dg.flat_names("z", (0,)) == []


def _posterior():
    rng = np.random.default_rng(3)
    return {
        "mu": _ar1(rng, 4, 800, 0.5)[..., None] + np.array([0.0, 10.0]),
        "sigma": np.exp(rng.normal(size=(4, 800))),
        "L": rng.standard_t(3.0, size=(4, 800, 2, 3)),
    }


def test_summary_equals_individual_functions():
    draws = _posterior()
    table = dg.summary(draws, prob=0.9)
    assert list(table.columns) == [
        "mean",
        "sd",
        "median",
        "eti_low",
        "eti_high",
        "hdi_low",
        "hdi_high",
        "mcse_mean",
        "mcse_sd",
        "ess_bulk",
        "ess_tail",
        "r_hat",
    ]
    assert list(table.index) == ["mu[0]", "mu[1]", "sigma"] + [
        f"L[{i},{j}]" for i in range(2) for j in range(3)
    ]
    for name, x in draws.items():
        rows = table.loc[dg.flat_names(name, x.shape[2:])]
        pooled = x.reshape(-1, *x.shape[2:])
        expected = {
            "mean": pooled.mean(axis=0),
            "sd": pooled.std(axis=0, ddof=1),
            "median": np.median(pooled, axis=0),
            "eti_low": dg.eti(x, 0.9)[..., 0],
            "eti_high": dg.eti(x, 0.9)[..., 1],
            "hdi_low": dg.hdi(x, 0.9)[..., 0],
            "hdi_high": dg.hdi(x, 0.9)[..., 1],
            "mcse_mean": dg.mcse_mean(x),
            "mcse_sd": dg.mcse_sd(x),
            "ess_bulk": dg.ess_bulk(x),
            "ess_tail": dg.ess_tail(x),
            "r_hat": dg.rhat(x),
        }
        for column, values in expected.items():
            np.testing.assert_allclose(
                rows[column].to_numpy(), np.ravel(values), rtol=1e-12, err_msg=column
            )


def test_summary_matches_arviz_summary():
    draws = _posterior()
    ours = dg.summary(draws, prob=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = az.summary(az.convert_to_dataset(draws), hdi_prob=0.9, round_to="none")
    ref = ref.rename(
        columns={"hdi_5%": "hdi_low", "hdi_95%": "hdi_high"},
        index=lambda name: name.replace(", ", ","),
    )
    pd.testing.assert_frame_equal(
        ours[ref.columns], ref.loc[ours.index], check_exact=False, rtol=1e-6
    )


def test_summary_of_nothing_is_empty():
    assert dg.summary({}).empty


# ----- nested R-hat


def _nested_rhat_loop(x, superchains):
    """posterior::rhat_nested for one scalar parameter, written out with loops."""
    chains, draws = x.shape
    size = chains // superchains
    groups = [x[k * size : (k + 1) * size] for k in range(superchains)]
    superchain_means = [g.mean() for g in groups]
    within_superchain = []
    for g in groups:
        within = np.mean([c.var(ddof=1) for c in g]) if draws > 1 else 0.0
        between = np.var([c.mean() for c in g], ddof=1) if size > 1 else 0.0
        within_superchain.append(within + between)
    return np.sqrt(1 + np.var(superchain_means, ddof=1) / np.mean(within_superchain))


@pytest.mark.parametrize(
    "chains, draws, superchains",
    [(8, 50, 2), (8, 50, 4), (8, 50, 8), (12, 7, 3), (6, 1, 3), (4, 2, 2)],
)
def test_rhat_nested_matches_loops(chains, draws, superchains):
    rng = np.random.default_rng(chains * 100 + draws * 10 + superchains)
    # chain and superchain offsets make every variance term matter
    offsets = rng.normal(size=(chains, 1, 2, 3)) + np.repeat(
        rng.normal(size=(superchains, 1, 2, 3)), chains // superchains, axis=0
    )
    x = rng.normal(size=(chains, draws, 2, 3)) + offsets
    ours = dg.rhat_nested(x, superchains)
    assert ours.shape == (2, 3)
    expected = [[_nested_rhat_loop(x[..., i, j], superchains) for j in range(3)] for i in range(2)]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    assert dg.rhat_nested(torch.from_numpy(x), superchains)[1, 2] == ours[1, 2]
    assert isinstance(dg.rhat_nested(x[..., 0, 0], superchains), float)


def _stationary_ar1(noise, phi):
    """AR(1) with unit marginal variance along axis 1, started from its stationary law."""
    x = np.empty_like(noise)
    x[:, 0] = noise[:, 0]
    for t in range(1, noise.shape[1]):
        x[:, t] = phi * x[:, t - 1] + np.sqrt(1 - phi**2) * noise[:, t]
    return x


def test_rhat_nested_passes_many_short_converged_chains_that_split_rhat_fails():
    # 64 chains of 1000 draws with phi = 0.88: (1 - phi) / (1 + phi) * 1000 = 64 effective draws
    # per chain, 32 per split half. Split R-hat's variance ratio is then about 1 + 1/32, so it
    # sits near sqrt(1 + 1/32) = 1.015 (sd about 0.002) above 1.01 although the chains have
    # converged. Nested R-hat compares 4 superchain means of 16 chains each: nB / nW is about
    # chi2_3 / 3 / 1024, so it exceeds 1.01 only when chi2_3 > 61 (probability 4e-13).
    seeds = range(20)
    noise = np.stack([np.random.default_rng(s).standard_normal((64, 1000)) for s in seeds], -1)
    x = _stationary_ar1(noise, phi=0.88)
    # estimated bulk ESS per chain: 58 to 68 over the seeds (sd about 3), mean near 63.8
    assert abs(dg.ess_bulk(x).mean() / 64 - 63.8) < 3
    nested = dg.rhat_nested(x, superchains=4)
    split = dg.rhat(x)
    assert nested.max() <= 1.01, nested
    assert (split > 1.01).sum() >= 15, split


def test_rhat_nested_flags_one_stuck_chain():
    rng = np.random.default_rng(5)
    x = _stationary_ar1(rng.standard_normal((64, 1000)), phi=0.88)
    x[37] = 87.0 + 0.01 * x[37]  # stuck 87 sd away, barely moving
    assert dg.rhat_nested(x, superchains=16) > 1.05
    # One stuck chain among M per superchain puts a share of about 1/M of the within-superchain
    # variance between superchains: nested R-hat tends to sqrt(1 + 1/M) as the chain moves off.
    for superchains in (4, 16):
        bound = np.sqrt(1 + superchains / 64)
        np.testing.assert_allclose(dg.rhat_nested(x, superchains), bound, rtol=1e-3)


def test_rhat_nested_with_one_chain_per_superchain_is_classic_rhat_plus_one_over_n():
    # With M = 1, B_k = 0 and nW = W (mean chain variance), nB = var(chain means), so
    # nested^2 = 1 + nB / W. Classic (unsplit) R-hat: var+ = (n - 1) / n W + nB, R^2 = var+ / W,
    # hence nested^2 = R^2 + 1 / n.
    rng = np.random.default_rng(11)
    x = rng.normal(size=(6, 40)) + rng.normal(scale=0.3, size=(6, 1))
    n = x.shape[1]
    within = x.var(axis=1, ddof=1).mean()
    between = x.mean(axis=1).var(ddof=1)
    classic = np.sqrt(((n - 1) / n * within + between) / within)
    _assert_matches(classic, _reference(lambda d: az.rhat(d, method="identity"), x))
    np.testing.assert_allclose(dg.rhat_nested(x, superchains=6), np.sqrt(classic**2 + 1 / n))


def test_rhat_nested_undefined_cases():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 20, 3))
    x[:, :, 1] = 2.5
    x[3, 4, 2] = np.nan
    ours = dg.rhat_nested(x, 4)
    assert np.isfinite(ours[0]) and np.isnan(ours[1]) and np.isnan(ours[2])
    assert np.isnan(dg.rhat_nested(x[..., 0], 1))
    with pytest.raises(ValueError, match="superchains=3"):
        dg.rhat_nested(x, 3)
