"""Convergence diagnostics and posterior summaries.

R-hat, effective sample size and Monte Carlo standard errors follow Vehtari, Gelman, Simpson,
Carpenter and Buerkner (2021), "Rank-normalization, folding, and localization: an improved
R-hat for assessing convergence of MCMC", and reproduce ArviZ's numbers, degenerate cases
included.

Every function takes draws shaped ``[chains, draws]`` or ``[chains, draws, *shape]`` (numpy
array or torch tensor) and returns a float for scalar parameters, otherwise a numpy array of
``shape``. All work is vectorised over the parameter elements: internally draws are laid out
as ``[elements, chains, draws]``.
"""

import numpy as np
import pandas as pd
import torch

__all__ = [
    "ess_bulk",
    "ess_mean",
    "ess_squares",
    "ess_tail",
    "eti",
    "flat_names",
    "hdi",
    "mcse_mean",
    "mcse_sd",
    "rhat",
    "rhat_nested",
    "summary",
]

_MIN_DRAWS = 4


def flat_names(name: str, shape) -> list[str]:
    """Names of the elements of a parameter in C order: ``mu[0]``, ``L[0,1]``, or ``sigma``."""
    shape = tuple(shape)
    if not shape:
        return [name]
    return [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


def _as_draws(x) -> tuple[np.ndarray, tuple[int, ...]]:
    """``[chains, draws, *shape]`` to a float64 ``[elements, chains, draws]`` array and shape."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"expected draws shaped [chains, draws, *shape], got {x.shape}")
    chains, draws, *shape = x.shape
    flat = x.reshape(chains, draws, -1)
    return np.ascontiguousarray(np.moveaxis(flat, -1, 0)), tuple(shape)


def _to_output(values: np.ndarray, shape: tuple[int, ...]):
    values = np.asarray(values, dtype=np.float64)
    return float(values[0]) if not shape else values.reshape(shape)


def _invalid(a: np.ndarray, min_chains: int) -> np.ndarray:
    """Elements for which a diagnostic is undefined: too few chains or draws, or any NaN."""
    _, chains, draws = a.shape
    if chains < min_chains or draws < _MIN_DRAWS:
        return np.ones(a.shape[0], dtype=bool)
    return np.isnan(a).any(axis=(1, 2))


def _split_chains(a: np.ndarray) -> np.ndarray:
    """Each chain's first and last halves as separate chains (the middle draw of an odd count
    is dropped)."""
    half = a.shape[2] // 2
    return np.concatenate([a[:, :, :half], a[:, :, a.shape[2] - half :]], axis=1)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks (1-based, ties averaged) along the last axis."""
    n = x.shape[-1]
    order = np.argsort(x, axis=-1, kind="stable")
    xs = np.take_along_axis(x, order, axis=-1)
    idx = np.arange(n)
    first = np.ones_like(xs, dtype=bool)
    first[..., 1:] = xs[..., 1:] != xs[..., :-1]
    last = np.ones_like(xs, dtype=bool)
    last[..., :-1] = first[..., 1:]
    start = np.maximum.accumulate(np.where(first, idx, 0), axis=-1)
    end = np.flip(np.minimum.accumulate(np.flip(np.where(last, idx, n - 1), -1), axis=-1), -1)
    ranks = np.empty_like(xs)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=-1)
    return ranks


def _z_scale(a: np.ndarray) -> np.ndarray:
    """Rank-normalise each element's pooled draws: normal quantiles of Blom's (c = 3/8)
    fractional ranks."""
    p, chains, draws = a.shape
    size = chains * draws
    ranks = _average_ranks(a.reshape(p, size))
    u = (ranks - 3 / 8) / (size - 2 * 3 / 8 + 1)
    return torch.special.ndtri(torch.from_numpy(u)).numpy().reshape(a.shape)


def _quantile_type7(a: np.ndarray, q: float) -> np.ndarray:
    """Pooled-draw quantile per element, with the arithmetic of
    ``scipy.stats.mstats.mquantiles(alphap=1, betap=1)`` so ties land on the same side."""
    p, chains, draws = a.shape
    n = chains * draws
    xs = np.sort(a.reshape(p, n), axis=-1)
    aleph = n * q + (1.0 - q)
    k = int(np.floor(np.clip(aleph, 1, n - 1)))
    gamma = np.clip(aleph - k, 0.0, 1.0)
    return (1.0 - gamma) * xs[:, k - 1] + gamma * xs[:, k]


def _autocov(a: np.ndarray) -> np.ndarray:
    """Autocovariance of each chain at lags ``0 .. draws-1`` (biased, divided by draws)."""
    n = a.shape[-1]
    size = 1 << (2 * n - 1).bit_length()
    centred = a - a.mean(axis=-1, keepdims=True)
    f = np.fft.rfft(centred, n=size, axis=-1)
    return np.fft.irfft(f * np.conjugate(f), n=size, axis=-1)[..., :n] / n


def _ess(a: np.ndarray) -> np.ndarray:
    """Multi-chain ESS per element of ``[elements, chains, draws]`` with Geyer's initial
    monotone sequence truncation; a constant element counts as fully efficient."""
    p, chains, n = a.shape
    acov = _autocov(a)
    mean_var = acov[:, :, 0].mean(axis=1) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if chains > 1:
        var_plus = var_plus + a.mean(axis=2).var(axis=1, ddof=1)
    rho = 1.0 - (mean_var[:, None] - acov.mean(axis=1)) / var_plus[:, None]
    rho[:, 0] = 1.0

    # Geyer's initial sequence on the pair sums rho(2k) + rho(2k+1): keep the leading positive
    # pairs (at most n_checked, ArviZ's loop bound), make them non-increasing by a running
    # minimum, and add the next pair's even lag once when that pair is non-negative or the lag
    # itself is positive.
    n_pairs = n // 2
    pairs = rho[:, 0 : 2 * n_pairs : 2] + rho[:, 1 : 2 * n_pairs : 2]
    n_checked = max((n - 3) // 2, 0)
    kept = np.cumprod(pairs[:, :n_checked] > 0, axis=1).sum(axis=1)
    monotone = np.minimum.accumulate(pairs, axis=1)
    head = np.where(np.arange(n_pairs) < kept[:, None], monotone, 0.0).sum(axis=1)
    rows = np.arange(p)
    even = rho[rows, 2 * kept]
    tail = np.where((pairs[rows, kept] >= 0) | (even > 0), even, 0.0)

    size = chains * n
    tau = np.maximum(-1.0 + 2.0 * head + tail, 1.0 / np.log10(size))
    ess = size / tau
    ess = np.where(np.isnan(rho[:, 1]), np.nan, ess)
    constant = (a.max(axis=(1, 2)) - a.min(axis=(1, 2))) < np.finfo(np.float64).resolution
    return np.where(constant, float(size), ess)


def _rhat_split(a: np.ndarray) -> np.ndarray:
    """Classic R-hat per element of already split ``[elements, chains, draws]``."""
    n = a.shape[2]
    between = n * a.mean(axis=2).var(axis=1, ddof=1)
    within = a.var(axis=2, ddof=1).mean(axis=1)
    return np.sqrt((between / within + n - 1) / n)


def _rhat(a: np.ndarray) -> np.ndarray:
    split = _split_chains(a)
    bulk = _rhat_split(_z_scale(split))
    median = np.median(split.reshape(split.shape[0], -1), axis=1)
    tail = _rhat_split(_z_scale(np.abs(split - median[:, None, None])))
    # max(bulk, tail) in which NaN bulk wins and NaN tail loses, as ArviZ gets from Python max
    return np.where(tail > bulk, tail, bulk)


def _ess_bulk(a: np.ndarray) -> np.ndarray:
    return _ess(_z_scale(_split_chains(a)))


def _ess_tail(a: np.ndarray) -> np.ndarray:
    low, high = (
        _ess(_split_chains((a <= _quantile_type7(a, q)[:, None, None]).astype(np.float64)))
        for q in (0.05, 0.95)
    )
    return np.where(high < low, high, low)


def _ess_mean(a: np.ndarray) -> np.ndarray:
    return _ess(_split_chains(a))


def _ess_squares(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(a.shape[0], -1)
    return _ess_mean(((flat - flat.mean(axis=1, keepdims=True)) ** 2).reshape(a.shape))


def _mcse_mean(a: np.ndarray) -> np.ndarray:
    sd = a.reshape(a.shape[0], -1).std(axis=1, ddof=1)
    return sd / np.sqrt(_ess_mean(a))


def _mcse_sd(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(a.shape[0], -1)
    sq_dev = (flat - flat.mean(axis=1, keepdims=True)) ** 2
    ess = _ess_mean(sq_dev.reshape(a.shape))
    evar = sq_dev.mean(axis=1)
    varvar = ((sq_dev**2).mean(axis=1) - evar**2) / ess
    return np.sqrt(varvar / evar / 4)


def _apply(fn, x, min_chains: int):
    """``fn`` over ``[elements, chains, draws]``, NaN where the diagnostic is undefined."""
    a, shape = _as_draws(x)
    invalid = _invalid(a, min_chains)
    values = np.full(a.shape[0], np.nan)
    if not invalid.all():
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(invalid, np.nan, fn(a))
    return _to_output(values, shape)


def rhat(x):
    """Rank-normalised split R-hat: the larger of the bulk and the folded (tail) R-hat.

    NaN with fewer than 2 chains or 4 draws, any NaN draw, or constant draws."""
    return _apply(_rhat, x, min_chains=2)


def rhat_nested(x, superchains: int):
    """Nested R-hat of Margossian, Hoffman, Sountsov, Riou-Durand, Vehtari and Gelman (2024),
    "Nested R-hat: assessing the convergence of MCMC when running many short chains", computed
    as R's ``posterior::rhat_nested``.

    The ``chains`` of ``x`` form ``superchains`` groups of M = chains // superchains
    consecutive chains (superchain k holds chains ``k*M .. (k+1)*M - 1``), each group started
    from one point. Returns ``sqrt(1 + nB / nW)``: nB is the variance of the superchain means,
    nW the mean over superchains of their chains' mean variance plus the variance of their
    chains' means. A float for scalar parameters, else an array of ``shape``. NaN with fewer
    than 2 superchains, any NaN or infinite draw, or constant draws.

    With M = 1 it is ``sqrt(classic R-hat ** 2 + 1 / draws)`` of the unsplit chains, not the
    classic R-hat itself (footnote 3 of the paper). One stuck chain among M can raise it to at
    most ``sqrt(1 + 1 / M)``."""
    a, shape = _as_draws(x)
    p, chains, draws = a.shape
    if superchains < 1 or chains % superchains:
        raise ValueError(
            f"rhat_nested: superchains={superchains} must divide the {chains} chains evenly"
        )
    if superchains < 2:
        return _to_output(np.full(p, np.nan), shape)
    nested = a.reshape(p, superchains, chains // superchains, draws)
    chain_mean = nested.mean(axis=3)
    zero = np.zeros((p, superchains))
    within = nested.var(axis=3, ddof=1).mean(axis=2) if draws > 1 else zero
    between = chain_mean.var(axis=2, ddof=1) if chains > superchains else zero
    between_superchains = chain_mean.mean(axis=2).var(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.sqrt(1.0 + between_superchains / (within + between).mean(axis=1))
    constant = (a.max(axis=(1, 2)) - a.min(axis=(1, 2))) < np.finfo(np.float64).eps
    invalid = ~np.isfinite(a).all(axis=(1, 2)) | constant
    return _to_output(np.where(invalid, np.nan, values), shape)


def ess_bulk(x):
    """Bulk effective sample size: ESS of the rank-normalised split chains."""
    return _apply(_ess_bulk, x, min_chains=1)


def ess_tail(x):
    """Tail effective sample size: the smaller ESS of the 5% and 95% quantile indicators."""
    return _apply(_ess_tail, x, min_chains=1)


def ess_mean(x):
    """Effective sample size of the posterior mean (split chains, no rank normalisation)."""
    return _apply(_ess_mean, x, min_chains=1)


def ess_squares(x):
    """ESS of the centred squares (x - mean)^2: how well the draws estimate the variance.
    Antithetic samplers (static HMC) can have a bulk ESS above the number of draws and a
    much smaller ESS here; a sampler is as good as the smallest of bulk, tail and this."""
    return _apply(_ess_squares, x, min_chains=1)


def mcse_mean(x):
    """Monte Carlo standard error of the posterior mean."""
    return _apply(_mcse_mean, x, min_chains=1)


def mcse_sd(x):
    """Monte Carlo standard error of the posterior standard deviation."""
    return _apply(_mcse_sd, x, min_chains=1)


def hdi(x, prob: float = 0.95) -> np.ndarray:
    """Highest-density interval of the pooled draws: the narrowest interval holding
    ``floor(prob * n)`` + 1 sorted draws. Returns ``[*shape, 2]`` (low, high)."""
    if not 0 < prob <= 1:
        raise ValueError(f"prob must be in (0, 1], got {prob}")
    a, shape = _as_draws(x)
    xs = np.sort(a.reshape(a.shape[0], -1), axis=1)
    n = xs.shape[1]
    width = int(np.floor(prob * n))
    if width >= n:
        raise ValueError(f"too few draws ({n}) for an interval of probability {prob}")
    start = np.argmin(xs[:, width:] - xs[:, : n - width], axis=1)
    rows = np.arange(xs.shape[0])
    return np.stack([xs[rows, start], xs[rows, start + width]], axis=-1).reshape(*shape, 2)


def eti(x, prob: float = 0.95) -> np.ndarray:
    """Equal-tailed interval of the pooled draws (linear-interpolated quantiles).
    Returns ``[*shape, 2]`` (low, high)."""
    if not 0 < prob <= 1:
        raise ValueError(f"prob must be in (0, 1], got {prob}")
    a, shape = _as_draws(x)
    q = np.quantile(a.reshape(a.shape[0], -1), [(1 - prob) / 2, (1 + prob) / 2], axis=1)
    return q.T.reshape(*shape, 2)


_SUMMARY_COLUMNS = [
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


def summary(draws: dict, prob: float = 0.95) -> pd.DataFrame:
    """One row per parameter element (named by :func:`flat_names`) with location, spread,
    ``prob`` equal-tailed and highest-density intervals, MCSEs, ESSs and R-hat."""
    blocks = []
    for name, x in draws.items():
        a, shape = _as_draws(x)
        flat = a.reshape(a.shape[0], -1)
        columns = {
            "mean": flat.mean(axis=1),
            "sd": flat.std(axis=1, ddof=1),
            "median": np.median(flat, axis=1),
        }
        x = a.transpose(1, 2, 0)
        columns["eti_low"], columns["eti_high"] = eti(x, prob).T
        columns["hdi_low"], columns["hdi_high"] = hdi(x, prob).T
        for column, fn in [
            ("mcse_mean", mcse_mean),
            ("mcse_sd", mcse_sd),
            ("ess_bulk", ess_bulk),
            ("ess_tail", ess_tail),
            ("r_hat", rhat),
        ]:
            columns[column] = fn(x)
        blocks.append(pd.DataFrame(columns, index=flat_names(name, shape)))
    if not blocks:
        return pd.DataFrame(columns=_SUMMARY_COLUMNS, dtype=float)
    return pd.concat(blocks)[_SUMMARY_COLUMNS]
