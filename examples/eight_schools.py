"""Eight schools: one hierarchical model, written centred and non-centred.

Rubin's (1981) coaching experiments: each school j reports an estimated effect y_j with a
known standard error sigma_j; the true effects theta_j ~ Normal(mu, tau) share a population
mean mu and spread tau. Written centred (theta itself is a parameter), NUTS meets the funnel
between tau and theta near tau = 0 and reports divergent transitions; written non-centred
(theta = mu + tau * theta_tilde, theta_tilde ~ Normal(0, 1)), the same posterior samples
cleanly. Figures go to --out; the numbers are printed.

    python examples/eight_schools.py --out results/examples
"""

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure
from torch.distributions import HalfCauchy, Normal

import bayeslib as bl
from bayeslib import plots

# Rubin (1981), table 2: estimated coaching effects and their standard errors.
Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)


class EightSchoolsCentered(bl.Model):
    """y_j ~ Normal(theta_j, sigma_j), theta_j ~ Normal(mu, tau), mu ~ Normal(0, 5),
    tau ~ HalfCauchy(5)."""

    mu = bl.Param(Normal(0.0, 5.0))
    tau = bl.Param(HalfCauchy(5.0))
    theta = bl.Param(lambda p: Normal(p.mu, p.tau), shape=lambda p: tuple(p.y.shape))

    def __init__(self, y, sigma):
        super().__init__(y=y, sigma=sigma)

    def observe(self, p):
        return {"y": Normal(p.theta, p.sigma)}


class EightSchoolsNonCentered(bl.Model):
    """The same model with theta = mu + tau * theta_tilde, theta_tilde ~ Normal(0, 1)."""

    mu = bl.Param(Normal(0.0, 5.0))
    tau = bl.Param(HalfCauchy(5.0))
    theta_tilde = bl.Param(Normal(0.0, 1.0), shape=lambda p: tuple(p.y.shape))

    def __init__(self, y, sigma):
        super().__init__(y=y, sigma=sigma)

    def observe(self, p):
        return {"y": Normal(p.mu + p.tau * p.theta_tilde, p.sigma)}


def theta_of(post):
    """The non-centred posterior with theta = mu + tau * theta_tilde added."""
    return post.derive(theta=lambda p: p.mu[..., None] + p.tau[..., None] * p.theta_tilde)


def plot_funnel(fits):
    """log(tau) against theta[0] for each fit, its divergent transitions in red."""
    fig = Figure(figsize=(9.0, 3.8), layout="constrained")
    axes = fig.subplots(1, len(fits), sharex=True, sharey=True, squeeze=False)[0]
    for ax, (label, post) in zip(axes, fits.items(), strict=True):
        theta0 = post["theta"][..., 0].flatten().numpy()
        log_tau = post["tau"].log().flatten().numpy()
        diverging = post.stats["diverging"].flatten().numpy().astype(bool)
        ax.scatter(theta0, log_tau, s=4, alpha=0.3, color="steelblue", label="draw")
        ax.scatter(
            theta0[diverging],
            log_tau[diverging],
            s=12,
            color="tab:red",
            label=f"divergent ({diverging.sum()})",
        )
        ax.set(title=label, xlabel="theta[0]", ylabel="log(tau)")
        ax.legend(fontsize="small", loc="lower right")
    return fig


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for figures and tables")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampler")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = dict(chains=args.chains, warmup=args.warmup, draws=args.draws, seed=args.seed)

    fits, results = {}, {}
    for label, cls in [("centred", EightSchoolsCentered), ("non-centred", EightSchoolsNonCentered)]:
        post = bl.sample(cls(Y, SIGMA), progress=False, **settings)
        if cls is EightSchoolsNonCentered:
            post = theta_of(post)
        table = post.summary()
        table.to_csv(args.out / f"eight_schools_{label}_summary.csv")
        stats = post.sampler_summary()
        warnings = post.warnings()
        print(f"--- {label}")
        print(
            table.loc[["mu", "tau", *[f"theta[{j}]" for j in range(len(Y))]]].round(3).to_string()
        )
        print(f"Divergent transitions: {stats['divergences']} of {args.chains * args.draws}")
        for warning in warnings:
            print("WARNING:", warning)
        fits[label] = post
        results[label] = {
            "mu_mean": float(table.loc["mu", "mean"]),
            "tau_mean": float(table.loc["tau", "mean"]),
            "tau_interval_95": table.loc["tau", ["eti_low", "eti_high"]].tolist(),
            "theta_mean": [float(table.loc[f"theta[{j}]", "mean"]) for j in range(len(Y))],
            "divergences": stats["divergences"],
            "warnings": warnings,
        }

    figures = {
        "eight_schools_funnel.png": plot_funnel(fits),
        "eight_schools_forest.png": plots.plot_forest(
            fits["non-centred"], names=["mu", "tau", "theta"]
        ),
        "eight_schools_trace.png": plots.plot_trace(fits["non-centred"], names=["mu", "tau"]),
    }
    for name, fig in figures.items():
        fig.savefig(args.out / name, dpi=100)
    results["figures"] = sorted(figures)
    (args.out / "eight_schools_results.json").write_text(json.dumps(results, indent=2))
    print(f"Figures and tables written to {args.out}")


if __name__ == "__main__":
    main()
