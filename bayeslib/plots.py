"""Figures of draws, intervals, checks and sampler behaviour (needs the `plots` extra).

Each function returns a `matplotlib.figure.Figure`, built without pyplot, so nothing is shown
and no global figure state is kept: save it with `fig.savefig("trace.png")`. matplotlib is
imported only when a figure is made, so the library imports without it.
"""

import math

import numpy as np
import torch

from . import diagnostics
from .posterior import DrawsView, Posterior
from .predictive import replicate_statistics

INTERVAL_COLOR = "black"
TRUTH_COLOR = "tab:red"


def _figure(rows, cols, width=4.0, height=2.6):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "bayeslib.plots needs matplotlib: pip install 'bayeslib[plots]'"
        ) from None
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _numpy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _flat_draws(draws, names=None):
    """[(flat name, [chains, draws] array)] of a Posterior or of {name: [chains, draws, ...]}."""
    values = draws.draws if isinstance(draws, Posterior) else draws
    names = list(values) if names is None else [names] if isinstance(names, str) else names
    out = []
    for name in names:
        value = _numpy(values[name]).astype(np.float64)
        chains, n = value.shape[:2]
        flat = value.reshape(chains, n, -1)
        for i, label in enumerate(diagnostics.flat_names(name, value.shape[2:])):
            out.append((label, flat[:, :, i]))
    return out


def _grid(n, cols=3):
    cols = min(n, cols)
    return math.ceil(n / cols), cols


def _hide_unused(axes, used):
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def plot_trace(post, names=None):
    """Per flat parameter: each chain's density (left) and its draws in order (right)."""
    flat = _flat_draws(post, names)
    fig, axes = _figure(len(flat), 2, width=4.5, height=1.9)
    for (label, x), (left, right) in zip(flat, axes, strict=True):
        bins = np.histogram_bin_edges(x, bins=30)
        for chain, values in enumerate(x):
            left.hist(values, bins=bins, density=True, histtype="step", label=f"chain {chain}")
            right.plot(values, linewidth=0.6, alpha=0.8)
        left.set(title=label, xlabel=label, ylabel="density")
        right.set(title=f"{label} by chain", xlabel="draw", ylabel=label)
    _chain_legend(fig, axes[0, 0], len(flat[0][1]))
    return fig


# Past this many chains a legend names nothing a reader can tell apart: the figure says how
# many chains it draws instead.
MAX_LEGEND_CHAINS = 8


def _chain_legend(fig, ax, chains):
    if chains <= MAX_LEGEND_CHAINS:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=chains)
    else:
        ax.text(0.02, 0.95, f"{chains} chains", transform=ax.transAxes, va="top", fontsize=8)


def _chain_groups(chains):
    """Consecutive chains pooled into at most MAX_LEGEND_CHAINS groups, and their labels."""
    groups = np.array_split(np.arange(chains), min(chains, MAX_LEGEND_CHAINS))
    labels = [f"chain {g[0]}" if len(g) == 1 else f"chains {g[0]}-{g[-1]}" for g in groups]
    return groups, labels


# Two-sided 99% normal quantile.
_Z99 = 2.576


def _rank_band(x, group_size, bins):
    """Where 99% of a chain group's draws per bin per chain fall when every chain samples the
    same distribution, given the parameter's bulk ESS (autocorrelated draws spread wider)."""
    chains, n = x.shape
    ess_per_chain = min(float(diagnostics.ess_bulk(x)), chains * n) / chains
    share = 1.0 / bins
    half = _Z99 * n * math.sqrt(share * (1 - share) / (group_size * ess_per_chain))
    return n * share - half, n * share + half


def plot_rank(post, names=None, bins=20):
    """Per flat parameter: a histogram of the ranks of each chain's draws among all draws,
    as draws per bin per chain. Chains that sample the same distribution stay inside the grey
    band, where 99% of the counts fall at the parameter's bulk ESS. Past MAX_LEGEND_CHAINS
    chains, consecutive chains are pooled into that many groups: a stuck chain still lifts
    its group's bins by its share."""
    flat = _flat_draws(post, names)
    rows, cols = _grid(len(flat))
    fig, axes = _figure(rows, cols, height=2.8)
    chains, n = flat[0][1].shape
    groups, labels = _chain_groups(chains)
    smallest = min(len(g) for g in groups)  # the widest band
    edges = np.linspace(0, chains * n, bins + 1)
    for (label, x), ax in zip(flat, axes.flat, strict=False):
        ranks = np.argsort(np.argsort(x.ravel(), kind="stable")).reshape(chains, n)
        low, high = _rank_band(x, smallest, bins)
        ax.axhspan(low, high, color="0.85", label="99% band at the bulk ESS")
        for group, group_label in zip(groups, labels, strict=True):
            counts, _ = np.histogram(ranks[group], bins=edges)
            ax.stairs(counts / len(group), edges, baseline=None, label=group_label)
        ax.set(
            title=label,
            xlabel="rank among all draws",
            ylabel="draws per bin per chain",
            ylim=(0, None),
        )
    handles, names_ = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names_, loc="outside lower center", ncols=min(len(handles), 5))
    _hide_unused(axes, len(flat))
    return fig


def _interval_bar(ax, low, high, mean, prob, kind):
    """The interval as a thick bar in a strip under the histogram (its ends in the legend),
    and the mean as a dotted line."""
    top = ax.get_ylim()[1]
    ax.set_ylim(-0.12 * top, top)
    ax.axhline(0, color="0.6", linewidth=0.8)
    label = f"{prob:.0%} {kind} [{low:.3g}, {high:.3g}]"
    ax.hlines(-0.06 * top, low, high, color=INTERVAL_COLOR, linewidth=5, label=label)
    ax.axvline(mean, color=INTERVAL_COLOR, linestyle=":", label=f"mean {mean:.3g}")


def _truth_line(ax, value, label):
    ax.axvline(value, color=TRUTH_COLOR, linewidth=2, label=f"{label} {value:.3g}")


def _legend_below(ax):
    """The legend under the x axis label, clear of the data whatever the panel's height."""
    from matplotlib.transforms import ScaledTranslation

    below_label = ax.transAxes + ScaledTranslation(0, -0.45, ax.figure.dpi_scale_trans)
    ax.legend(
        fontsize="small",
        loc="upper center",
        bbox_to_anchor=(0.5, 0),
        bbox_transform=below_label,
        ncols=2,
    )


def plot_posterior(draws, names=None, prob=0.95, kind="hdi", truth=None, truth_label="true value"):
    """Per flat parameter: the histogram of its draws, its mean and its `prob` credible
    interval ('hdi' or 'eti'). `draws`: a Posterior, or a dict {name: [chains, draws, ...]}
    such as posterior predictive draws; `truth`: {name: known value}, drawn as a red line
    named `truth_label`."""
    interval = {"hdi": diagnostics.hdi, "eti": diagnostics.eti}[kind]
    flat = _flat_draws(draws, names)
    known = _flat_truth(truth)
    rows, cols = _grid(len(flat))
    fig, axes = _figure(rows, cols, height=3.2)
    for (label, x), ax in zip(flat, axes.flat, strict=False):
        low, high = interval(x, prob)
        ax.hist(x.ravel(), bins=40, density=True, color="steelblue", alpha=0.7)
        _interval_bar(ax, low, high, x.mean(), prob, kind.upper())
        if label in known:
            _truth_line(ax, known[label], truth_label)
        ax.set(title=label, xlabel=label, ylabel="posterior density")
        _legend_below(ax)
    _hide_unused(axes, len(flat))
    return fig


def _flat_truth(truth):
    """{flat name: value} of {name: known value}."""
    out = {}
    for name, value in (truth or {}).items():
        value = _numpy(value)
        labels = diagnostics.flat_names(name, value.shape)
        out.update(zip(labels, value.ravel().tolist(), strict=True))
    return out


def plot_difference(post, quantity, reference=0.0, prob=0.95, label=None, truth=None):
    """The seed's figure for a difference (e.g. of group means): its histogram, the
    probability that it is below `reference` with its MCSE, and its `prob` equal-tailed
    interval. `quantity`: a parameter name or a function of `p` as in `Posterior.derive`;
    `label`: its name on the figure (by default the parameter's name, or "difference");
    `truth`: its known value, drawn as a red line."""
    if isinstance(quantity, str):
        name = quantity
        label = label or name

        def quantity(p):
            return getattr(p, name)

    label = label or "difference"
    x = _numpy(quantity(DrawsView(post.draws)))
    if x.shape != post.shape:
        raise ValueError(f"plot_difference needs a scalar quantity, got draws shaped {x.shape}")
    below = post.prob(lambda p: quantity(p) < reference)
    low, high = diagnostics.eti(x, prob)
    fig, axes = _figure(1, 1, width=6.5, height=4.4)
    ax = axes[0, 0]
    ax.hist(x.ravel(), bins=40, color="steelblue", alpha=0.7)
    ax.axvline(reference, color="gray", linestyle="--", label=f"reference {reference:g}")
    _interval_bar(ax, low, high, x.mean(), prob, "interval")
    if truth is not None:
        _truth_line(ax, float(truth), "true value")
    ax.set(
        title=f"P({label} < {reference:g}) = {below.value:.3f} (MCSE {below.mcse:.3f})",
        xlabel=label,
        ylabel="draws",
    )
    _legend_below(ax)
    return fig


def plot_forest(post, names=None, prob=0.95, truth=None):
    """Posterior means with their `prob` equal-tailed intervals, one row per flat parameter
    (the seed's figure of the regression coefficients); `truth`: {name: known value} drawn
    over them as crosses."""
    flat = _flat_draws(post, names)
    labels = [label for label, _ in flat]
    means = np.array([x.mean() for _, x in flat])
    intervals = np.array([diagnostics.eti(x, prob) for _, x in flat])
    rows = np.arange(len(flat))[::-1]
    fig, axes = _figure(1, 1, width=5.0, height=0.5 * len(flat) + 1.5)
    ax = axes[0, 0]
    ax.hlines(rows, intervals[:, 0], intervals[:, 1], color="steelblue", linewidth=3)
    ax.plot(means, rows, "o", color="steelblue", label=f"mean and {prob:.0%} interval")
    row_of = dict(zip(labels, rows, strict=True))
    known = [(v, row_of[label]) for label, v in _flat_truth(truth).items() if label in row_of]
    if known:
        values, positions = zip(*known, strict=True)
        ax.plot(
            values,
            positions,
            "x",
            color=TRUTH_COLOR,
            markersize=9,
            markeredgewidth=2,
            label="true value",
        )
    ax.set_yticks(rows, labels)
    ax.set(title="Posterior means and intervals", xlabel="value", ylabel="parameter")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2)
    return fig


def plot_ppc(model, post, statistics=None, seed=0, thin=1):
    """Posterior predictive checks: per observed field and test statistic, the distribution
    of the statistic over replicated data sets, the observed value as a line, and the
    Bayesian p-value P(T(y_rep) >= T(y))."""
    observed, replicated = replicate_statistics(model, post, statistics, seed, thin)
    keys = list(observed)
    rows, cols = _grid(len(keys), cols=4)
    fig, axes = _figure(rows, cols, width=3.4)
    for key, ax in zip(keys, axes.flat, strict=False):
        field, name = key
        t_rep = replicated[key].ravel()
        ax.hist(t_rep, bins=30, color="steelblue", alpha=0.7, label="replicated")
        ax.axvline(observed[key], color=TRUTH_COLOR, linewidth=2, label="observed")
        p_value = np.mean(t_rep >= observed[key])
        ax.set(
            title=f"{name}({field}): p = {p_value:.2f}", xlabel=f"{name}({field})", ylabel="draws"
        )
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncols=2)
    _hide_unused(axes, len(keys))
    return fig


def plot_energy(post):
    """HMC/NUTS energy diagnostic (as ArviZ's plot_energy): the marginal energy distribution
    beside the distribution of energy transitions between draws, with E-BFMI per chain. A
    transition distribution much narrower than the marginal one means the sampler explores
    the energy levels slowly (low E-BFMI)."""
    if "energy" not in post.stats:
        raise ValueError("plot_energy needs the 'energy' statistic, which HMC and NUTS record.")
    energy = _numpy(post.stats["energy"])
    marginal = (energy - energy.mean(axis=1, keepdims=True)).ravel()
    transition = np.diff(energy, axis=1).ravel()
    bins = np.histogram_bin_edges(np.concatenate([marginal, transition]), bins=40)
    fig, axes = _figure(1, 1, width=6.0, height=4.0)
    ax = axes[0, 0]
    ax.hist(marginal, bins=bins, density=True, alpha=0.6, label="marginal energy")
    ax.hist(transition, bins=bins, density=True, alpha=0.6, label="energy transition")
    bfmi = np.asarray(post.e_bfmi())
    if len(bfmi) <= MAX_LEGEND_CHAINS:
        title = "E-BFMI by chain: " + ", ".join(f"{value:.2f}" for value in bfmi)
    else:
        title = (
            f"E-BFMI of {len(bfmi)} chains: lowest {bfmi.min():.2f}, median {np.median(bfmi):.2f}"
        )
    ax.set(title=title, xlabel="energy (centred)", ylabel="density")
    ax.legend(fontsize="small")
    return fig


__all__ = [
    "plot_difference",
    "plot_energy",
    "plot_forest",
    "plot_posterior",
    "plot_ppc",
    "plot_rank",
    "plot_trace",
]
