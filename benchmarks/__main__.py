"""`python -m benchmarks --quick | --full [--hard] [--device cuda] [--out results/benchmarks]`

Runs each contender on the seed's two models with the same settings (float64, 4 chains, fixed
seeds), each run in a fresh process, repeated; reports wall time (compilation and warmup
included), minimum bulk ESS and maximum R-hat over parameters (ArviZ, the same code for all),
ESS per second and posterior means; prints medians and the ratios of bayeslib's samplers to
each peer; writes CSV files and PNG plots. Then the scaling study over the number of chains.

`--hard` runs instead the two hard posteriors of issue 17 (a regression with uncentred
predictors and their interaction, a trend over calendar years) with bayeslib's Metropolis on 64
chains and NUTS on 4, 1000 + 1000 iterations, each twice (three times with --full): wall time,
the minimum over parameters of bulk ESS, tail ESS and the ESS of the centred squares, that
minimum per second, and the maximum R-hat (split; nested, over bl.sample's 4 superchains, for
64 chains). Written to hard.csv.
"""

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .cases import CASES, HARD_CASES
from .runners import RUNNERS

SETTINGS = {
    "smoke": {
        "warmup": 150,
        "draws": 100,
        "repeats": 1,
        "scaling": [2, 8],
        "scaling_warmup": 100,
        "scaling_draws": 100,
        "hard_warmup": 10,
        "hard_draws": 10,
        "hard_repeats": 1,
    },
    "quick": {
        "warmup": 200,
        "draws": 200,
        "repeats": 1,
        "scaling": [1, 4, 64],
        "scaling_warmup": 200,
        "scaling_draws": 200,
        "hard_warmup": 1000,
        "hard_draws": 1000,
        "hard_repeats": 2,
    },
    "full": {
        "warmup": 1000,
        "draws": 1000,
        "repeats": 3,
        "scaling": [1, 4, 64, 1024, 16384],
        "scaling_warmup": 500,
        "scaling_draws": 500,
        "hard_warmup": 1000,
        "hard_draws": 1000,
        "hard_repeats": 3,
    },
}
OURS = ["bayeslib-metropolis", "bayeslib-hmc", "bayeslib-nuts"]
PEERS = ["numpyro-vectorized", "numpyro-sequential", "pyro-nuts", "seed-metropolis"]
SCALING = ["bayeslib-metropolis", "bayeslib-hmc", "bayeslib-nuts", "numpyro-vectorized"]
# The most chains each contender runs in the scaling study: NUTS's lockstep trees make
# larger batches take many minutes on a CPU.
MAX_CHAINS = {"numpyro-vectorized": 1024, "bayeslib-nuts": 1024}
# The hard posteriors: each contender with the chains it is meant for (a random walk gains from
# many short chains; NUTS needs few long ones), and bl.sample's superchains for 64 chains.
HARD = {"bayeslib-metropolis": 64, "bayeslib-nuts": 4}
SUPERCHAINS = 4


def installed(name):
    library = RUNNERS[name].library
    return library in ("bayeslib", "seed") or importlib.util.find_spec(library) is not None


def run_once(name, case, chains, warmup, draws, seed, device, threads):
    """One run in a fresh process -> (draws, wall seconds, peak MiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "draws.npz")
        command = [
            sys.executable,
            "-m",
            "benchmarks.one",
            name,
            case,
            str(chains),
            str(warmup),
            str(draws),
            str(seed),
            device,
            str(threads),
            out,
        ]
        subprocess.run(command, check=True, cwd=Path(__file__).parent.parent)
        with np.load(out) as npz:
            values = {k: npz[k] for k in npz.files}
        with open(out + ".json") as f:
            timing = json.load(f)
    return values, timing["wall"], timing["peak_mib"]


def measure(values):
    """Minimum bulk ESS, maximum R-hat (ArviZ) and the posterior means, over parameters."""
    import arviz as az

    idata = az.from_dict(posterior=values)
    ess = az.ess(idata, method="bulk")
    rhat = az.rhat(idata)
    means = {}
    for name, value in values.items():
        flat = value.reshape(value.shape[0] * value.shape[1], -1).mean(0)
        for i, mean in enumerate(flat):
            means[f"{name}[{i}]" if flat.size > 1 else name] = float(mean)
    return (
        min(float(ess[k].min()) for k in values),
        max(float(rhat[k].max()) for k in values),
        means,
    )


def measure_hard(values):
    """Over parameters: the minimum bulk ESS, tail ESS and ESS of the centred squares (the
    mean ESS of (x - mean)^2, ArviZ), the maximum split R-hat (ArviZ) and the maximum nested
    R-hat over `SUPERCHAINS` superchains of consecutive chains (NaN where each holds one)."""
    import arviz as az

    from bayeslib.diagnostics import rhat_nested

    with warnings.catch_warnings():  # draws are [chains, draws, ...], even with few draws
        warnings.filterwarnings("ignore", "More chains", UserWarning)
        idata = az.from_dict(posterior=values)
        squares = {k: (v - v.mean(axis=(0, 1))) ** 2 for k, v in values.items()}
        squares = az.from_dict(posterior=squares)

    def smallest(table):
        return min(float(table[k].min()) for k in values)

    def largest(table):
        return max(float(table[k].max()) for k in values)

    chains = next(iter(values.values())).shape[0]
    nested = [np.max(rhat_nested(v, SUPERCHAINS)) for v in values.values()]
    return {
        "min_ess_bulk": smallest(az.ess(idata, method="bulk")),
        "min_ess_tail": smallest(az.ess(idata, method="tail")),
        "min_ess_sq": smallest(az.ess(squares, method="mean")),
        "max_r_hat": largest(az.rhat(idata)),
        "max_r_hat_nested": max(nested) if chains > SUPERCHAINS else math.nan,
    }


def hard(settings, device, threads, out, names):
    rows = []
    for case in HARD_CASES:
        for name in names:
            chains = HARD[name]
            for repeat in range(settings["hard_repeats"]):
                values, wall, peak = run_once(
                    name,
                    case,
                    chains,
                    settings["hard_warmup"],
                    settings["hard_draws"],
                    repeat,
                    device,
                    threads,
                )
                row = {"case": case, "contender": name, "chains": chains, "repeat": repeat}
                row.update(wall_s=wall, **measure_hard(values), peak_mib=peak)
                row["min_ess"] = min(row["min_ess_bulk"], row["min_ess_tail"], row["min_ess_sq"])
                row["min_ess_per_s"] = row["min_ess"] / wall
                rows.append(row)
                print(
                    f"  {case:6s} {name:20s} chains {chains:3d}  wall {wall:7.2f} s  ESS bulk "
                    f"{row['min_ess_bulk']:6.0f} tail {row['min_ess_tail']:6.0f} sq "
                    f"{row['min_ess_sq']:6.0f}  min ESS/s {row['min_ess_per_s']:8.1f}  R-hat "
                    f"{row['max_r_hat']:.3f} nested {row['max_r_hat_nested']:.4f}",
                    flush=True,
                )
    runs = pd.DataFrame(rows)
    runs.to_csv(out / "hard.csv", index=False)
    return runs


def comparison(settings, device, threads, out, names):
    rows = []
    for case in CASES:
        for name in names:
            if not installed(name):
                print(f"  {name}: not installed (pip install -e '.[bench]'), left out")
                continue
            for repeat in range(settings["repeats"]):
                values, wall, peak = run_once(
                    name, case, 4, settings["warmup"], settings["draws"], repeat, device, threads
                )
                ess, rhat, means = measure(values)
                rows.append(
                    {
                        "case": case,
                        "contender": name,
                        "repeat": repeat,
                        "wall_s": wall,
                        "min_ess_bulk": ess,
                        "max_r_hat": rhat,
                        "ess_per_s": ess / wall,
                        "peak_mib": peak,
                        **{f"mean {k}": v for k, v in means.items()},
                    }
                )
                print(
                    f"  {case:7s} {name:20s} wall {wall:7.2f} s  ESS {ess:7.0f}  "
                    f"R-hat {rhat:.3f}  ESS/s {ess / wall:9.1f}",
                    flush=True,
                )
    runs = pd.DataFrame(rows)
    runs.to_csv(out / "comparison_runs.csv", index=False)
    medians = runs.groupby(["case", "contender"], sort=False).median(numeric_only=True)
    medians = medians.drop(columns="repeat").reset_index()
    medians.to_csv(out / "comparison.csv", index=False)
    return medians


def ratios(medians):
    """ESS/s of each bayeslib sampler, and of the best of them, over each peer's."""
    rows = []
    for case, group in medians.groupby("case", sort=False):
        rate = dict(zip(group.contender, group.ess_per_s, strict=True))
        ours = {name: rate[name] for name in OURS if name in rate}
        if not ours:
            continue
        ours["best bayeslib"] = max(ours.values())
        for mine, value in ours.items():
            row = {"case": case, "bayeslib": mine}
            for peer in PEERS:
                if peer in rate:
                    row[f"vs {peer}"] = value / rate[peer]
            rows.append(row)
    return pd.DataFrame(rows)


def scaling(settings, device, threads, out, names):
    rows = []
    for name in names:
        if not installed(name):
            continue
        for chains in settings["scaling"]:
            if chains > MAX_CHAINS.get(name, chains):
                continue
            values, wall, peak = run_once(
                name,
                "best",
                chains,
                settings["scaling_warmup"],
                settings["scaling_draws"],
                0,
                device,
                threads,
            )
            ess, rhat, _ = measure(values)
            iterations = chains * (settings["scaling_warmup"] + settings["scaling_draws"])
            rows.append(
                {
                    "contender": name,
                    "chains": chains,
                    "wall_s": wall,
                    "min_ess_bulk": ess,
                    "max_r_hat": rhat,
                    "ess_per_s": ess / wall,
                    "chain_iterations_per_s": iterations / wall,
                    "peak_mib": peak,
                }
            )
            print(
                f"  {name:20s} chains {chains:6d}  wall {wall:7.2f} s  ESS/s {ess / wall:10.1f}"
                f"  chain-it/s {iterations / wall:10.0f}  peak {peak:6.0f} MiB",
                flush=True,
            )
    table = pd.DataFrame(rows)
    table.to_csv(out / "scaling.csv", index=False)
    return table


def plot(medians, table, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, (case, group) in zip(axes, medians.groupby("case", sort=False), strict=False):
        ax.barh(group.contender, group.ess_per_s, color="steelblue")
        ax.set_xscale("log")
        ax.set_xlabel("min bulk ESS per second (median)")
        ax.set_title(f"{case}: 4 chains")
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, group in table.groupby("contender", sort=False):
        axes[0].plot(group.chains, group.ess_per_s, "o-", label=name)
        axes[1].plot(group.chains, group.chain_iterations_per_s, "o-", label=name)
    for ax, label in zip(
        axes, ["total ESS per second", "chain-iterations per second"], strict=True
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("chains")
        ax.set_ylabel(label)
        ax.legend()
    axes[0].set_title("BEST: scaling with the number of chains")
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="seconds: checks the harness runs")
    size.add_argument("--quick", action="store_true", help="short runs (the default)")
    size.add_argument("--full", action="store_true", help="1000 + 1000, 3 repeats, 16384 chains")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="cores per run (default 1)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument(
        "--hard",
        action="store_true",
        help=f"only the hard posteriors ({', '.join(HARD_CASES)}) with "
        + ", ".join(f"{name} on {chains} chains" for name, chains in HARD.items()),
    )
    parser.add_argument(
        "--only",
        help="comma-separated contenders, e.g. bayeslib-nuts,"
        f"numpyro-vectorized (default: all of {', '.join(OURS + PEERS)})",
    )
    args = parser.parse_args(argv)
    settings = SETTINGS["full" if args.full else "smoke" if args.smoke else "quick"]
    args.out.mkdir(parents=True, exist_ok=True)

    names = args.only.split(",") if args.only else list(HARD) if args.hard else OURS + PEERS
    known = HARD if args.hard else RUNNERS
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"--only: unknown contenders {unknown}; known: {sorted(known)}")
    if args.hard:
        print("hard posteriors (float64):")
        runs = hard(settings, args.device, args.threads, args.out, names)
        columns = ["case", "contender", "chains", "repeat", "wall_s", "min_ess_bulk"]
        columns += ["min_ess_tail", "min_ess_sq", "min_ess_per_s", "max_r_hat", "max_r_hat_nested"]
        with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
            print("\n", runs[columns].to_string(index=False))
        print(f"\nwritten to {args.out}/hard.csv")
        return

    print("comparison (4 chains, float64):")
    medians = comparison(settings, args.device, args.threads, args.out, names)
    table = ratios(medians)
    table.to_csv(args.out / "ratios.csv", index=False)
    with pd.option_context("display.width", 200, "display.float_format", "{:.2f}".format):
        print(
            "\nmedians:\n",
            medians[
                ["case", "contender", "wall_s", "min_ess_bulk", "max_r_hat", "ess_per_s"]
            ].to_string(index=False),
        )
        print("\nESS/s ratios (bayeslib / peer):\n", table.to_string(index=False))
    scaled = pd.DataFrame()
    if not args.skip_scaling:
        print("\nscaling (BEST):")
        scaled = scaling(
            settings,
            args.device,
            args.threads,
            args.out,
            [name for name in SCALING if name in names],
        )
    plot(
        medians,
        scaled
        if len(scaled)
        else pd.DataFrame(columns=["contender", "chains", "ess_per_s", "chain_iterations_per_s"]),
        args.out,
    )
    print(f"\nwritten to {args.out}/")


if __name__ == "__main__":
    main()
