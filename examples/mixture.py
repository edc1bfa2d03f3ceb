"""A two-component normal mixture with ordered locations.

y_i ~ w Normal(mu_0, sigma_0) + (1 - w) Normal(mu_1, sigma_1). A mixture's likelihood is the
same when its components swap labels, so its posterior has two copies of each mode; declaring
the locations ordered (mu_0 < mu_1, `support=bl.constraints.ordered_vector`) keeps one. The
likelihood is `MixtureSameFamily` (a log-sum-exp over the components). Simulates data from a
known mixture, samples with NUTS, and draws the posterior density over the data's histogram.
Figures go to --out; the numbers are printed.

    python examples/mixture.py --out results/examples
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.distributions import Beta, Categorical, HalfNormal, MixtureSameFamily, Normal

import bayeslib as bl
from bayeslib import plots

TRUTH = {"w": 0.35, "mu": (-1.5, 1.5), "sigma": (0.6, 1.0)}


def mixture(w, mu, sigma):
    """The mixture w Normal(mu_0, sigma_0) + (1 - w) Normal(mu_1, sigma_1); mu and sigma have
    the two components last, after any batch dimensions of w."""
    weights = torch.stack([w, 1 - w], dim=-1)
    return MixtureSameFamily(Categorical(probs=weights), Normal(mu, sigma))


class NormalMixture(bl.Model):
    """y_i ~ w Normal(mu_0, sigma_0) + (1 - w) Normal(mu_1, sigma_1), mu_0 < mu_1;
    w ~ Beta(2, 2), mu ~ Normal(0, 5), sigma ~ HalfNormal(2)."""

    w = bl.Param(Beta(2.0, 2.0))
    mu = bl.Param(Normal(0.0, 5.0), shape=(2,), support=bl.constraints.ordered_vector)
    sigma = bl.Param(HalfNormal(2.0), shape=(2,))

    def __init__(self, y):
        super().__init__(y=y)
        self.check_ndim("y", 1)

    def observe(self, p):
        return {"y": mixture(p.w, p.mu, p.sigma)}


def simulate(n, seed):
    """n draws from the mixture TRUTH."""
    rng = np.random.default_rng(seed)
    first = rng.random(n) < TRUTH["w"]
    mu, sigma = np.where(first, *TRUTH["mu"]), np.where(first, *TRUTH["sigma"])
    return mu + sigma * rng.standard_normal(n)


def plot_density(y, post):
    """The data's histogram with the posterior mean density and its 90% band, and the true
    density."""
    grid = torch.linspace(float(y.min()) - 1.0, float(y.max()) + 1.0, 300, dtype=torch.float64)
    w, mu, sigma = (post[name].flatten(0, 1) for name in ("w", "mu", "sigma"))
    density = mixture(w[:, None], mu[:, None, :], sigma[:, None, :]).log_prob(grid).exp()
    low, high = np.quantile(density.numpy(), [0.05, 0.95], axis=0)
    truth = mixture(*(torch.tensor(TRUTH[k], dtype=torch.float64) for k in ("w", "mu", "sigma")))
    fig = Figure(figsize=(7.0, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.hist(y, bins=30, density=True, color="lightgray", label="data")
    ax.fill_between(grid, low, high, color="steelblue", alpha=0.3, label="90% interval")
    ax.plot(grid, density.mean(0), color="steelblue", label="posterior mean density")
    ax.plot(grid, truth.log_prob(grid).exp(), "--", color="tab:red", label="true density")
    ax.set(title="Two-component normal mixture", xlabel="y", ylabel="density")
    ax.legend(fontsize="small")
    return fig


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for figures and tables")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--n", type=int, default=200, help="number of observations")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and the sampler")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    y = simulate(args.n, args.seed)
    model = NormalMixture(y)
    post = bl.sample(
        model,
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        seed=args.seed,
        progress=False,
    )
    table = post.summary()
    table.to_csv(args.out / "mixture_summary.csv")
    print(table.round(3).to_string())
    stats = post.sampler_summary()
    print("Sampler:", {k: np.round(v, 3).tolist() for k, v in stats.items() if k != "sampler"})
    warnings = post.warnings()
    for warning in warnings:
        print("WARNING:", warning)

    truth = {name: torch.tensor(value) for name, value in TRUTH.items()}
    figures = {
        "mixture_density.png": plot_density(y, post),
        "mixture_forest.png": plots.plot_forest(post, truth=truth),
        "mixture_trace.png": plots.plot_trace(post),
    }
    for name, fig in figures.items():
        fig.savefig(args.out / name, dpi=100)

    results = {
        "mean": table["mean"].to_dict(),
        "interval_95": {
            name: row.tolist() for name, row in table[["eti_low", "eti_high"]].iterrows()
        },
        "truth": TRUTH,
        "warnings": warnings,
        "sampler": stats,
        "figures": sorted(figures),
    }
    (args.out / "mixture_results.json").write_text(json.dumps(results, indent=2))
    print(f"Figures and tables written to {args.out}")


if __name__ == "__main__":
    main()
