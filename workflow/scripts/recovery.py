"""recovery: across each scenario's replicates, the coverage of the central intervals, the bias
and RMSE of the posterior mean, and rank histograms of the truths among the posterior draws
(simulation-based calibration) with a test of their uniformity."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import study  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import bayeslib as bl  # noqa: E402
from bayeslib.diagnostics import eti  # noqa: E402

sm = snakemake  # noqa: F821
study.log_to(sm.log[0], echo=True)
options = sm.params.recovery
levels, alpha = options["levels"], options["alpha"]
rank_draws, bins = options["rank_draws"], options["rank_bins"]


def thinned(x, size):
    """`size` draws of `x` [chains, draws], spread over chains and over each chain's length so
    that they are nearly independent."""
    chains, draws = x.shape
    per_chain = -(-size // chains)
    positions = np.linspace(0, draws - 1, per_chain).round().astype(int)
    return x[:, positions].T.reshape(-1)[:size]


def binomial_band(n, p, alpha):
    """Central interval [low, high] of Binomial(n, p) with probability >= 1 - alpha."""
    k = torch.arange(n + 1, dtype=torch.float64)
    cdf = torch.distributions.Binomial(n, torch.tensor(p, dtype=torch.float64)).log_prob(k)
    cdf = cdf.exp().cumsum(0)
    low = int((cdf >= alpha / 2).nonzero()[0])
    high = int((cdf >= 1 - alpha / 2 - 1e-12).nonzero()[0])
    return low, high


def uniformity_p_value(ranks):
    """Chi-square test that ranks in 0..rank_draws fall evenly into `bins` bins."""
    counts = np.bincount(np.asarray(ranks) * bins // (rank_draws + 1), minlength=bins)
    expected = len(ranks) / bins
    statistic = ((counts - expected) ** 2 / expected).sum()
    df = torch.tensor((bins - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(df, torch.tensor(statistic / 2))), counts


rows = []
for (scenario, replicate, sampler), path in zip(sm.params.fits, sm.input.posteriors, strict=True):
    _, truth, _ = study.load_dataset(f"results/data/{scenario}/{replicate}.npz")
    post = bl.Posterior.load(path)
    for name, true_value in truth.items():
        draws = post[name].reshape(post.chains, post.num_draws, -1).numpy()
        for i, label in enumerate(study.flat({name: true_value})):
            x, value = draws[..., i], float(true_value.reshape(-1)[i])
            row = {
                "scenario": scenario,
                "sampler": sampler,
                "replicate": replicate,
                "parameter": label,
                "truth": value,
                "mean": x.mean(),
                "rank": int((thinned(x, rank_draws) < value).sum()),
            }
            for level in levels:
                low, high = eti(x, level)
                row[f"covered_{level:g}"] = bool(low <= value <= high)
            rows.append(row)
ranks = pd.DataFrame(rows)

table, failures = [], []
for (scenario, sampler), group in ranks.groupby(["scenario", "sampler"], sort=False):
    pooled_p, _ = uniformity_p_value(group["rank"])
    if pooled_p < alpha:
        failures.append(
            f"{scenario}/{sampler}: the ranks of the truths are not uniform "
            f"(chi-square p = {pooled_p:.2g} < {alpha:g})"
        )
    for parameter, rows in group.groupby("parameter", sort=False):
        n = len(rows)
        error = rows["mean"] - rows["truth"]
        out = {
            "scenario": scenario,
            "sampler": sampler,
            "parameter": parameter,
            "replicates": n,
            "bias": error.mean(),
            "bias_se": error.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan,
            "rmse": np.sqrt((error**2).mean()),
        }
        for level in levels:
            covered = int(rows[f"covered_{level:g}"].sum())
            low, high = binomial_band(n, level, alpha)
            coverage = covered / n
            out[f"coverage_{level:g}"] = coverage
            out[f"coverage_{level:g}_se"] = np.sqrt(coverage * (1 - coverage) / n)
            out[f"coverage_{level:g}_band_low"] = low / n
            out[f"coverage_{level:g}_band_high"] = high / n
            if not low <= covered <= high:
                failures.append(
                    f"{scenario}/{sampler}: {level:.0%} intervals cover {parameter} in "
                    f"{covered}/{n} replicates, outside the {1 - alpha:.1%} binomial band "
                    f"[{low}, {high}]"
                )
        out["rank_p_value"], _ = uniformity_p_value(rows["rank"])
        out["rank_p_value_pooled"] = pooled_p
        table.append(out)
table = pd.DataFrame(table)
failed = {f.split(":")[0] for f in failures}
table["passed"] = [f"{r.scenario}/{r.sampler}" not in failed for r in table.itertuples()]


def coverage_figure():
    labels = [f"{r.scenario}/{r.sampler}: {r.parameter}" for r in table.itertuples()]
    y = np.arange(len(table))[::-1]
    fig = Figure(figsize=(5.0 * len(levels), 0.3 * len(table) + 1.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(levels), sharey=True))
    for ax, level in zip(axes, levels, strict=True):
        low, high = table[f"coverage_{level:g}_band_low"], table[f"coverage_{level:g}_band_high"]
        ax.hlines(y, low, high, color="lightgray", linewidth=6, label=f"{1 - alpha:.1%} band")
        ax.plot(table[f"coverage_{level:g}"], y, "o", color="steelblue", label="coverage")
        ax.axvline(level, color="gray", linestyle="--")
        ax.set(title=f"{level:.0%} intervals", xlabel="coverage", xlim=(-0.02, 1.02))
    axes[0].set_yticks(y, labels)
    axes[0].legend(fontsize="small")
    return fig


def rank_figure():
    groups = list(ranks.groupby(["scenario", "sampler"], sort=False))
    cols = max(group["parameter"].nunique() for _, group in groups)
    fig = Figure(figsize=(2.6 * cols, 2.2 * len(groups)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(groups), cols, squeeze=False))
    for row, ((scenario, sampler), group) in zip(axes, groups, strict=True):
        for ax, (parameter, rows) in zip(row, group.groupby("parameter", sort=False), strict=False):
            p_value, counts = uniformity_p_value(rows["rank"])
            low, high = binomial_band(len(rows), 1 / bins, alpha)
            ax.axhspan(low, high, color="lightgray")
            ax.bar(np.arange(bins), counts, color="steelblue")
            ax.set_title(f"{scenario}/{sampler}: {parameter}\np = {p_value:.2f}", fontsize=9)
        for ax in row[group["parameter"].nunique() :]:
            ax.set_axis_off()
    return fig


study.write_csv(sm.output.ranks, ranks, index=False)
study.write_csv(sm.output.table, table, index=False)
study.save_figure(sm.output.coverage_plot, coverage_figure())
study.save_figure(sm.output.rank_plot, rank_figure())
study.write_json(
    sm.output.check,
    {"passed": not failures, "failures": failures, "strict": options["strict"], "alpha": alpha},
)
for failure in failures:
    print("recovery check failed:", failure)
if failures and options["strict"]:
    sys.exit(
        f"recovery: {len(failures)} check(s) failed (listed above; set recovery.strict: false "
        "to keep going and record them)"
    )
print("recovery:", "passed" if not failures else f"{len(failures)} check(s) failed")
