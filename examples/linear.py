"""Linear regression as in the seed: recover known coefficients, then predict a new outcome.

Simulates 200 rows y = X @ beta + Normal(0, 1) with beta = (2, 1, -3) and X = [1, U(0, 1),
U(0, 1)], finds the posterior mode, samples with NUTS, checks the run, draws beta's forest plot
with the true values, and gives the posterior predictive distribution of y at a new row x:
its mean and 95% interval. Figures go to --out; the numbers are printed.

    python examples/linear.py --out results/examples
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import bayeslib as bl
from bayeslib import plots
from bayeslib.models import LinearRegression
from bayeslib.predictive import posterior_predictive, ppc
from bayeslib.sampling import sample


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for figures and tables")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--n", type=int, default=200, help="rows of data")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and the sampler")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    model, truth = LinearRegression.simulate(n=args.n, beta=(2.0, 1.0, -3.0), seed=args.seed)
    mode = bl.find_map(model)
    beta, sigma = mode.params["beta"].numpy().round(4), float(mode.params["sigma"])
    print(f"MAP: beta = {beta}, sigma = {sigma:.4f}")

    post = sample(
        model,
        "nuts",
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        seed=args.seed,
        init="map",
        progress=False,
        dense_mass=True,  # the intercept and the slopes are correlated a posteriori
    )
    table = post.summary()
    table.to_csv(args.out / "linear_summary.csv")
    print(table.round(4).to_string())
    stats = post.sampler_summary()
    print("Sampler:", {k: np.round(v, 3).tolist() for k, v in stats.items() if k != "sampler"})
    warnings = post.warnings()
    for warning in warnings:
        print("WARNING:", warning)

    # A new row: the intercept's 1, then two inputs drawn like the data's.
    rng = np.random.default_rng(args.seed + 1)
    x = torch.tensor([[1.0, *rng.random(2)]], dtype=torch.float64)
    y_new = posterior_predictive(model, post, seed=args.seed, X=x)["y"][..., 0]
    low, high = np.quantile(y_new.numpy(), [0.025, 0.975])
    print(f"New x: {x[0].numpy().round(4)}")
    print(f"Predicted y: mean {y_new.mean():.4f}, 95% interval [{low:.4f}, {high:.4f}]")

    checks = ppc(model, post, seed=args.seed)
    print(checks.round(3).to_string())

    figures = {
        "linear_forest.png": plots.plot_forest(post, names="beta", truth=truth),
        "linear_trace.png": plots.plot_trace(post),
        "linear_posterior.png": plots.plot_posterior(post, truth=truth),
        "linear_prediction.png": plots.plot_posterior(
            {"y at new x": y_new},
            kind="eti",
            truth={"y at new x": x[0] @ truth["beta"].double()},
            truth_label="true mean",
        ),
        "linear_ppc.png": plots.plot_ppc(model, post, seed=args.seed),
        "linear_energy.png": plots.plot_energy(post),
    }
    for name, fig in figures.items():
        fig.savefig(args.out / name, dpi=100)

    results = {
        "beta_mean": table.loc[["beta[0]", "beta[1]", "beta[2]"], "mean"].tolist(),
        "beta_interval_95": table.loc[["beta[0]", "beta[1]", "beta[2]"], ["eti_low", "eti_high"]]
        .to_numpy()
        .tolist(),
        "true_beta": truth["beta"].tolist(),
        "new_x": x[0].tolist(),
        "prediction_mean": float(y_new.mean()),
        "prediction_interval_95": [float(low), float(high)],
        "warnings": warnings,
        "sampler": stats,
        "figures": sorted(figures),
    }
    (args.out / "linear_results.json").write_text(json.dumps(results, indent=2))
    print(f"Figures and tables written to {args.out}")


if __name__ == "__main__":
    main()
