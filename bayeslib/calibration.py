"""Simulation-based calibration and coverage checks for recovery studies.

A recovery study fits a model to R data sets simulated from known parameters (the truths) and
asks whether the posteriors recover them: whether central intervals cover the truths as often
as they claim (within a binomial band), and whether the ranks of the truths among posterior
draws are uniform (simulation-based calibration, Talts, Betancourt, Simpson, Vehtari and
Gelman 2018). Fits that did not converge (`fit_checks`) are left out of both.

Draws of one parameter over the data sets come as a numpy array or torch tensor shaped
``[datasets, chains, draws, *shape]``, truths as ``[datasets, *shape]``.
"""

import numpy as np
import pandas as pd
import torch

from . import diagnostics
from .diagnostics import flat_names

__all__ = [
    "binomial_band",
    "covered",
    "coverage_power",
    "fit_checks",
    "ranks",
    "recovery_table",
    "uniformity_test",
]


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _binomial_pmf(n: int, p: float) -> np.ndarray:
    """Binomial(n, p) probabilities of 0..n, shape ``[n + 1]``."""
    k = torch.arange(n + 1, dtype=torch.float64)
    p = torch.tensor(p, dtype=torch.float64)
    return torch.distributions.Binomial(n, probs=p).log_prob(k).exp().numpy()


def binomial_band(n: int, p: float, alpha: float) -> tuple[int, int]:
    """Central interval ``(low, high)`` of counts of Binomial(n, p) holding probability
    >= 1 - alpha: low is the alpha/2 quantile and high the 1 - alpha/2 quantile (smallest k
    with cdf(k) >= q, as ``scipy.stats.binom.ppf``), so each tail outside has <= alpha/2."""
    cdf = np.cumsum(_binomial_pmf(n, p))
    low = int(np.argmax(cdf >= alpha / 2))
    high = int(np.argmax(cdf >= 1 - alpha / 2 - 1e-12))
    return low, high


def coverage_power(n: int, level: float, alpha: float, true_coverage: float) -> float:
    """Probability that the count of covered truths out of n, drawn from
    Binomial(n, true_coverage), falls outside ``binomial_band(n, level, alpha)``: the chance
    that a coverage check of ``level`` intervals on n data sets detects a real coverage of
    ``true_coverage``. Returns a float."""
    low, high = binomial_band(n, level, alpha)
    pmf = _binomial_pmf(n, true_coverage)
    return float(pmf[:low].sum() + pmf[high + 1 :].sum())


def _pair(draws, truth) -> tuple[np.ndarray, np.ndarray]:
    """Draws as float64 ``[datasets, chains, draws, elements]``, truth as ``[datasets,
    elements]``, after checking that their shapes agree."""
    x, t = _numpy(draws).astype(np.float64), _numpy(truth).astype(np.float64)
    if x.ndim < 3 or t.shape != x.shape[:1] + x.shape[3:]:
        raise ValueError(
            f"draws shaped {x.shape} and truth shaped {t.shape} do not match; expected "
            "[datasets, chains, draws, *shape] and [datasets, *shape]"
        )
    return x.reshape(*x.shape[:3], -1), t.reshape(t.shape[0], -1)


def covered(draws, truth, level: float) -> np.ndarray:
    """Whether the central ``level`` interval of each data set's posterior covers its truth.
    The interval is ``diagnostics.eti``'s: linear-interpolated quantiles of the draws pooled
    over chains. Returns a bool array ``[datasets, *shape]``."""
    x, t = _pair(draws, truth)
    pooled = x.reshape(x.shape[0], -1, x.shape[3])
    low, high = np.quantile(pooled, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return ((low <= t) & (t <= high)).reshape(_numpy(truth).shape)


def ranks(draws, truth, size: int) -> np.ndarray:
    """SBC rank of each data set's truth: how many of ``size`` draws, spread over the chains
    and evenly over each chain's length so that they are nearly independent, lie below it.
    Returns an int array ``[datasets, *shape]`` of values in 0..size."""
    x, t = _pair(draws, truth)
    datasets, chains, length, elements = x.shape
    if not 1 <= size <= chains * length:
        raise ValueError(f"size={size} must be in 1..{chains * length} (chains x draws)")
    positions = np.linspace(0, length - 1, -(-size // chains)).round().astype(int)
    # position-major, so the last position is the one that loses chains when size is short
    kept = x[:, :, positions].transpose(0, 2, 1, 3).reshape(datasets, -1, elements)[:, :size]
    return (kept < t[:, None]).sum(axis=1).reshape(_numpy(truth).shape)


def _chi_square(ranks: np.ndarray, size: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniformity test of each column of ``ranks`` ``[n, columns]``: p-values ``[columns]``
    and bin counts ``[columns, bins]``."""
    if (size + 1) % bins:
        raise ValueError(f"bins={bins} must divide size + 1 = {size + 1} ranks evenly")
    if ranks.size and not (0 <= ranks.min() and ranks.max() <= size):
        raise ValueError(f"ranks must lie in 0..size={size}")
    which = ranks * bins // (size + 1)
    counts = (which[..., None] == np.arange(bins)).sum(axis=0)
    expected = ranks.shape[0] / bins
    statistic = ((counts - expected) ** 2 / expected).sum(axis=-1)
    df = torch.tensor((bins - 1) / 2, dtype=torch.float64)
    p_value = torch.special.gammaincc(df, torch.from_numpy(statistic / 2)).numpy()
    return p_value, counts


def uniformity_test(ranks, size: int, bins: int) -> tuple[float, np.ndarray]:
    """Chi-square test that 1-D ``ranks`` in 0..size fall evenly into ``bins`` equal bins of
    (size + 1) / bins ranks each. Returns the p-value (float) and the counts (int ``[bins]``)."""
    values = _numpy(ranks).astype(np.int64)
    if values.ndim != 1:
        raise ValueError(f"ranks must be 1-D, got shape {values.shape}")
    p_value, counts = _chi_square(values[:, None], size, bins)
    return float(p_value[0]), counts[0]


# ----- fit checks


def _datasets(post) -> int:
    return int(post.attrs.get("datasets", 1))


def _by_dataset(x, datasets: int) -> np.ndarray:
    """``[datasets * chains, draws, *shape]``, chains stored dataset-major, as
    ``[datasets, chains, draws, *shape]``."""
    x = _numpy(x)
    if x.shape[0] % datasets:
        raise ValueError(f"{x.shape[0]} chains do not split into {datasets} data sets")
    return x.reshape(datasets, x.shape[0] // datasets, *x.shape[1:])


def _per_element(fn, post, datasets: int) -> tuple[np.ndarray, list[str]]:
    """``fn`` of each data set's chains for every parameter element at once: values
    ``[datasets, elements]`` and the elements' flat names."""
    values, names = [], []
    for name, x in post.draws.items():
        x = _by_dataset(x, datasets)
        # [R, C, D, *s] -> [C, D, R, *s]: the diagnostics see R x elements parameters
        out = fn(np.moveaxis(x, 0, 2))
        values.append(np.reshape(out, (datasets, -1)))
        names += flat_names(name, x.shape[3:])
    return np.concatenate(values, axis=1), names


def _worst(values: np.ndarray, names: list[str], largest: bool) -> tuple[np.ndarray, list[str]]:
    """Per data set, the worst of ``values`` ``[datasets, elements]`` (NaN counts as worst) and
    the name of its element."""
    scored = np.where(np.isnan(values), np.inf, values if largest else -values)
    which = scored.argmax(axis=1)
    worst = values[np.arange(values.shape[0]), which]
    return worst, [names[i] for i in which]


def fit_checks(
    post, max_rhat: float = 1.01, min_ess: float = 400, max_divergence_share: float = 0.0
) -> pd.DataFrame:
    """Convergence checks of each data set's fit in ``post`` (a ``bayeslib.Posterior`` whose
    chains are stored dataset-major: data set r owns chains ``r*C .. (r+1)*C-1``, with R =
    ``attrs["datasets"]``, default 1).

    R-hat is nested R-hat with ``attrs["superchains"]`` superchains (chains that started from
    one point; default: every chain its own) when that gives K >= 2 superchains of M >= 2
    chains, otherwise rank-normalised split R-hat. Returns one row per data set: ``dataset``,
    ``rhat`` (largest over the parameter elements), ``rhat_kind`` ("nested" or "split"),
    ``ess_bulk``, ``ess_tail`` and ``ess_squares`` (smallest over the parameter elements, of the
    data set's chains; ``ess_squares`` is reported, not checked), ``divergences``,
    ``divergence_share`` (of the data set's draws), ``passed`` and ``reason`` ("" when passed,
    else what failed, joined by "; "). An undefined (NaN) diagnostic fails."""
    datasets = _datasets(post)
    chains = post.chains // datasets
    superchains = int(post.attrs.get("superchains", chains))
    if 2 <= superchains < chains:
        kind, rhat = "nested", lambda x: diagnostics.rhat_nested(x, superchains)
    else:
        kind, rhat = "split", diagnostics.rhat
    rhat_value, rhat_at = _worst(*_per_element(rhat, post, datasets), largest=True)
    bulk, bulk_at = _worst(*_per_element(diagnostics.ess_bulk, post, datasets), largest=False)
    tail, tail_at = _worst(*_per_element(diagnostics.ess_tail, post, datasets), largest=False)
    squares, _ = _worst(*_per_element(diagnostics.ess_squares, post, datasets), largest=False)
    if "diverging" in post.stats:
        divergences = _by_dataset(post.stats["diverging"], datasets).sum(axis=(1, 2))
    else:
        divergences = np.zeros(datasets, dtype=np.int64)
    share = divergences / (chains * post.num_draws)

    checks = [
        (
            ~(rhat_value <= max_rhat),
            lambda r: f"{kind} r_hat {rhat_value[r]:.3g} > {max_rhat:g} ({rhat_at[r]})",
        ),
        (~(bulk >= min_ess), lambda r: f"ess_bulk {bulk[r]:.0f} < {min_ess:g} ({bulk_at[r]})"),
        (~(tail >= min_ess), lambda r: f"ess_tail {tail[r]:.0f} < {min_ess:g} ({tail_at[r]})"),
        (
            share > max_divergence_share,
            lambda r: (
                f"{divergences[r]} divergent transitions ({share[r]:.2%} of draws > "
                f"{max_divergence_share:.2%})"
            ),
        ),
    ]
    reasons = [
        "; ".join(message(r) for failed, message in checks if failed[r]) for r in range(datasets)
    ]
    return pd.DataFrame(
        {
            "dataset": np.arange(datasets),
            "rhat": rhat_value,
            "rhat_kind": kind,
            "ess_bulk": bulk,
            "ess_tail": tail,
            "ess_squares": squares,
            "divergences": divergences.astype(np.int64),
            "divergence_share": share,
            "passed": [not reason for reason in reasons],
            "reason": reasons,
        }
    )


# ----- recovery


def recovery_table(
    draws: dict, truth: dict, failed, levels, alpha: float, rank_draws: int, bins: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Coverage, bias and rank uniformity of one scenario x sampler's fits.

    draws: {name: ``[datasets, chains, draws, *shape]``}; truth: {name: ``[datasets,
    *shape]``}; failed: bool ``[datasets]``, the fits that failed ``fit_checks`` (or None),
    which are left out of every summary; levels: central interval probabilities; alpha: the
    false-alarm rate of each coverage and uniformity check; rank_draws, bins: SBC ranks among
    ``rank_draws`` draws, tested in ``bins`` bins ((rank_draws + 1) % bins == 0).

    Returns ``(table, ranks_frame)``. table: one row per parameter element with ``parameter``,
    ``replicates`` (fits used), ``bias``, ``bias_se``, ``rmse`` of the posterior mean; per
    level ``coverage_{level:g}``, its ``_se``, ``_band_low``/``_band_high`` (the 1 - alpha
    binomial band as fractions) and ``_passed``; ``rank_p_value``, ``rank_passed`` (p >=
    alpha); ``power`` (chance that the largest level's check detects a coverage 0.05 lower);
    ``passed`` (every check). ranks_frame: one row per (dataset, parameter element) with
    ``dataset``, ``parameter``, ``truth``, ``mean``, ``rank``, ``covered_{level:g}`` and
    ``failed``."""
    names, true_values, means, rank_values = [], [], [], []
    cover = {level: [] for level in levels}
    for name, x in draws.items():
        if name not in truth:
            raise ValueError(f"recovery_table: no truth for parameter '{name}'")
        x, t = _pair(x, truth[name])
        names += flat_names(name, _numpy(truth[name]).shape[1:])
        true_values.append(t)
        means.append(x.mean(axis=(1, 2)))
        rank_values.append(ranks(x, t, rank_draws))
        for level in levels:
            cover[level].append(covered(x, t, level))
    true_values, means = np.concatenate(true_values, 1), np.concatenate(means, 1)
    rank_values = np.concatenate(rank_values, 1)
    cover = {level: np.concatenate(c, 1) for level, c in cover.items()}
    datasets = true_values.shape[0]
    failed = np.zeros(datasets, bool) if failed is None else np.asarray(failed, dtype=bool)
    if failed.shape != (datasets,):
        raise ValueError(f"failed has shape {failed.shape}; expected [{datasets}]")

    used = ~failed
    n = int(used.sum())
    error = (means - true_values)[used]
    table = {"parameter": names, "replicates": n}
    passed = np.full(len(names), n > 0)
    # with no fit left (n == 0) every summary is NaN and every check fails
    with np.errstate(divide="ignore", invalid="ignore"):
        table["bias"] = error.sum(axis=0) / n
        table["bias_se"] = error.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.nan
        table["rmse"] = np.sqrt((error**2).sum(axis=0) / n)
        for level in levels:
            count = cover[level][used].sum(axis=0)
            low, high = binomial_band(n, level, alpha)
            coverage = count / n
            in_band = (n > 0) & (low <= count) & (count <= high)
            table |= {
                f"coverage_{level:g}": coverage,
                f"coverage_{level:g}_se": np.sqrt(coverage * (1 - coverage) / n),
                f"coverage_{level:g}_band_low": np.float64(low) / n,
                f"coverage_{level:g}_band_high": np.float64(high) / n,
                f"coverage_{level:g}_passed": in_band,
            }
            passed &= in_band
        p_value, _ = _chi_square(rank_values[used], rank_draws, bins)
    table |= {
        "rank_p_value": p_value,
        "rank_passed": p_value >= alpha,
        "power": coverage_power(n, max(levels), alpha, round(max(levels) - 0.05, 12)),
        "passed": passed & (p_value >= alpha),
    }

    ranks_frame = {
        "dataset": np.repeat(np.arange(datasets), len(names)),
        "parameter": np.tile(names, datasets),
        "truth": true_values.ravel(),
        "mean": means.ravel(),
        "rank": rank_values.ravel(),
    }
    ranks_frame |= {f"covered_{level:g}": cover[level].ravel() for level in levels}
    ranks_frame["failed"] = np.repeat(failed, len(names))
    return pd.DataFrame(table), pd.DataFrame(ranks_frame)
