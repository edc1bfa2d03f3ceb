"""Do two groups differ? The seed's BEST analysis, with bayeslib.

Simulates two groups of 20 (group 1 shifted by 0.3 standard deviations), finds the posterior
mode, samples with NUTS, checks the run, and answers with P(mu2 - mu1 < 0) and a 95% interval
for the difference of the means. Figures go to --out; the numbers are printed.

    python examples/best.py --out results/examples
"""

import argparse
import json
from pathlib import Path

import numpy as np

import bayeslib as bl
from bayeslib import plots
from bayeslib.models import Best
from bayeslib.predictive import ppc
from bayeslib.sampling import sample


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for figures and tables")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--n", type=int, default=20, help="observations per group")
    parser.add_argument("--effect-size", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and the sampler")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    model, truth = Best.simulate(n1=args.n, n2=args.n, effect_size=args.effect_size, seed=args.seed)
    print(f"Data means: {model.y1.mean():.4f}, {model.y2.mean():.4f}")
    print(f"Data sds:   {model.y1.std():.4f}, {model.y2.std():.4f}")

    mode = bl.find_map(model)
    mu, sigma = (mode.params[name].numpy().round(4) for name in ("mu", "sigma"))
    print(f"MAP: mu = {mu}, sigma = {sigma}")

    post = sample(
        model,
        "nuts",
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        seed=args.seed,
        init="map",
        progress=False,
    )
    post = post.derive(diff=lambda p: p.mu[..., 1] - p.mu[..., 0])
    table = post.summary()
    table.to_csv(args.out / "best_summary.csv")
    print(table.round(4).to_string())
    stats = post.sampler_summary()
    print("Sampler:", {k: np.round(v, 3).tolist() for k, v in stats.items() if k != "sampler"})
    warnings = post.warnings()
    for warning in warnings:
        print("WARNING:", warning)

    below = post.prob(lambda p: p.diff < 0)
    low, high = post.interval("diff", prob=0.95)
    print(f"P(mu2 - mu1 < 0) = {below.value:.3f} (MCSE {below.mcse:.3f})")
    print(f"95% interval of mu2 - mu1: [{low:.3f}, {high:.3f}]")

    checks = ppc(model, post, seed=args.seed)
    print(checks.round(3).to_string())

    figures = {
        "best_trace.png": plots.plot_trace(post, names=["mu", "sigma"]),
        "best_rank.png": plots.plot_rank(post, names=["mu", "sigma"]),
        "best_posterior.png": plots.plot_posterior(post, names="mu"),
        "best_difference.png": plots.plot_difference(post, "diff", label="mu2 - mu1"),
        "best_forest.png": plots.plot_forest(post, names=["mu", "sigma"], truth=truth),
        "best_ppc.png": plots.plot_ppc(model, post, seed=args.seed),
        "best_energy.png": plots.plot_energy(post),
    }
    for name, fig in figures.items():
        fig.savefig(args.out / name, dpi=100)

    results = {
        "p_diff_below_zero": below.value,
        "p_diff_below_zero_mcse": below.mcse,
        "diff_interval_95": [float(low), float(high)],
        "mu_mean": table.loc[["mu[0]", "mu[1]"], "mean"].tolist(),
        "warnings": warnings,
        "sampler": stats,
        "figures": sorted(figures),
        "true_mu": truth["mu"].tolist(),
    }
    (args.out / "best_results.json").write_text(json.dumps(results, indent=2))
    print(f"Figures and tables written to {args.out}")


if __name__ == "__main__":
    main()
