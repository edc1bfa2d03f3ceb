"""`python -m benchmarks --quick | --full [--hard] [--cases best,linear,regression]
[--only CONTENDERS] [--device cuda] [--out results/benchmarks]`

Runs each contender on the seed's two models and a data-heavy regression (5000 rows, 24
correlated predictors) with the same settings (float64, 4 chains, fixed seeds), each run in a
fresh process, repeated; reports wall time (compilation and warmup included), the minimum over
parameters of bulk ESS, tail ESS and the ESS of the centred squares, the smallest of the three
per second (the headline figure: a sampler is only as good as its worst estimate, and
antithetic draws inflate bulk ESS alone), the maximum R-hat (ArviZ, the same code for all) and
posterior means; prints medians and the ratios of bayeslib's samplers to each peer on that
figure; writes CSV files and PNG plots (Pyro, one eager chain at a time, sits out the
regression). Then the scaling study over the number of chains.

`bayeslib-hmc-compiled` and `bayeslib-nuts-compiled` sample with `compile=True`: each runs
once before its repeats, to compile its libraries or find them in the cache (that run's wall
is printed and kept in comparison_runs.csv as repeat -1, not in the medians); the repeats
load them from the cache, as every run after a model's first does.

`--device cuda` runs instead the GPU study (about 5 minutes on one GPU, more where the
compiled contenders compile): BEST, 500 + 500, float64, at 1024 and 16384 chains, bayeslib's
HMC and NUTS (with captured CUDA graphs; compiled and replayed in them; with every operation
launched on its own) and NumPyro vectorized, once each; writes gpu.csv.

`--hard` runs instead the two hard posteriors of issue 17 (a regression with uncentred
predictors and their interaction, a trend over calendar years) with bayeslib's Metropolis on 64
chains and NUTS on 4, 1000 + 1000 iterations, each twice (three times with --full): wall time,
the same figures, and the maximum nested R-hat over bl.sample's 4 superchains (for 64 chains).
Written to hard.csv.
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
OURS = [
    "bayeslib-metropolis",
    "bayeslib-hmc",
    "bayeslib-nuts",
    "bayeslib-hmc-compiled",
    "bayeslib-nuts-compiled",
]
PEERS = ["numpyro-vectorized", "numpyro-sequential", "pyro-nuts", "seed-metropolis"]
SCALING = ["bayeslib-metropolis", "bayeslib-hmc", "bayeslib-nuts", "numpyro-vectorized"]
# The most chains each contender runs in the scaling study: NUTS's lockstep trees make
# larger batches take many minutes on a CPU.
MAX_CHAINS = {"numpyro-vectorized": 1024, "bayeslib-nuts": 1024}
# The hard posteriors: each contender with the chains it is meant for (a random walk gains from
# many short chains; NUTS needs few long ones), and bl.sample's superchains for 64 chains.
HARD = {"bayeslib-metropolis": 64, "bayeslib-nuts": 4}
SUPERCHAINS = 4
# The GPU study: its contenders, chains, and iterations (--smoke: a check that it runs).
GPU = [
    "bayeslib-hmc",
    "bayeslib-nuts",
    "bayeslib-hmc-compiled",
    "bayeslib-nuts-compiled",
    "bayeslib-hmc-launches",
    "bayeslib-nuts-launches",
    "numpyro-vectorized",
]
GPU_SETTINGS = {"chains": [1024, 16384], "warmup": 500, "draws": 500}
GPU_SMOKE = {"chains": [256], "warmup": 50, "draws": 50}
# A compiled contender's first run on the GPU, to compile its libraries: NUTS's leaf and join
# in warmup, HMC's step in the draws (the libraries do not depend on the run's length).
GPU_COMPILE_RUN = {"warmup": 20, "draws": 10}
# The columns printed for each run.
FIGURES = ["min_ess_bulk", "min_ess_tail", "min_ess_sq", "min_ess_per_s", "max_r_hat"]
# Contenders left out of a case, and why.
LEFT_OUT = {("regression", "pyro-nuts"): "one eager chain at a time takes hours here"}


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
    """The same figures for every contender, over parameters (ArviZ): the minimum bulk ESS,
    tail ESS and ESS of the centred squares (the mean ESS of (x - mean)^2: how well the
    variance is estimated), the smallest of the three (`min_ess`), the maximum split R-hat, the
    maximum nested R-hat over `SUPERCHAINS` superchains of consecutive chains (NaN where each
    holds one, or they cannot split the chains evenly) and the posterior means."""
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
    figures = {
        "min_ess_bulk": smallest(az.ess(idata, method="bulk")),
        "min_ess_tail": smallest(az.ess(idata, method="tail")),
        "min_ess_sq": smallest(az.ess(squares, method="mean")),
    }
    figures["min_ess"] = min(figures.values())
    figures["max_r_hat"] = largest(az.rhat(idata))
    figures["max_r_hat_nested"] = math.nan
    if chains > SUPERCHAINS and chains % SUPERCHAINS == 0:
        nested = [np.max(rhat_nested(v, SUPERCHAINS)) for v in values.values()]
        figures["max_r_hat_nested"] = max(nested)
    means = {}
    for name, value in values.items():
        flat = value.reshape(value.shape[0] * value.shape[1], -1).mean(0)
        for i, mean in enumerate(flat):
            means[f"mean {name}[{i}]" if flat.size > 1 else f"mean {name}"] = float(mean)
    return figures, means


def report(wall, figures) -> str:
    return (
        f"wall {wall:7.2f} s  ESS bulk {figures['min_ess_bulk']:6.0f} tail "
        f"{figures['min_ess_tail']:6.0f} sq {figures['min_ess_sq']:6.0f}  min ESS/s "
        f"{figures['min_ess'] / wall:9.1f}  R-hat {figures['max_r_hat']:.3f}"
    )


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
                figures, _ = measure(values)
                row = {"case": case, "contender": name, "chains": chains, "repeat": repeat}
                row.update(wall_s=wall, **figures, min_ess_per_s=figures["min_ess"] / wall)
                rows.append({**row, "peak_mib": peak})
                print(
                    f"  {case:6s} {name:20s} chains {chains:3d}  {report(wall, figures)} "
                    f"nested {figures['max_r_hat_nested']:.4f}",
                    flush=True,
                )
    runs = pd.DataFrame(rows)
    runs.to_csv(out / "hard.csv", index=False)
    return runs


def compile_run(name, case, chains, settings, device, threads) -> float:
    """A compiled contender's first run, which compiles its libraries (or finds them cached):
    not one of the timed runs. Its wall time, printed."""
    _, wall, _ = run_once(
        name, case, chains, settings["warmup"], settings["draws"], 99, device, threads
    )
    print(f"  {case:10s} {name:20s} chains {chains:6d}  first run (compiles): wall {wall:7.2f} s")
    return wall


def comparison(settings, device, threads, out, names, cases=CASES):
    rows = []
    for case in cases:
        for name in names:
            if not installed(name):
                print(f"  {name}: not installed (pip install -e '.[bench]'), left out")
                continue
            if (case, name) in LEFT_OUT:
                print(f"  {case:10s} {name:20s} left out: {LEFT_OUT[case, name]}")
                continue
            if getattr(RUNNERS[name], "compiles", False):
                wall = compile_run(name, case, 4, settings, device, threads)
                rows.append({"case": case, "contender": name, "repeat": -1, "wall_s": wall})
            for repeat in range(settings["repeats"]):
                values, wall, peak = run_once(
                    name, case, 4, settings["warmup"], settings["draws"], repeat, device, threads
                )
                figures, means = measure(values)
                row = {"case": case, "contender": name, "repeat": repeat, "wall_s": wall}
                row.update(figures, min_ess_per_s=figures["min_ess"] / wall, peak_mib=peak)
                rows.append({**row, **means})
                print(f"  {case:10s} {name:20s} {report(wall, figures)}", flush=True)
    runs = pd.DataFrame(rows)
    runs.to_csv(out / "comparison_runs.csv", index=False)
    repeats = runs[runs.repeat >= 0]
    medians = repeats.groupby(["case", "contender"], sort=False).median(numeric_only=True)
    medians = medians.drop(columns="repeat").reset_index()
    medians.to_csv(out / "comparison.csv", index=False)
    return medians


def gpu(settings, device, out, names):
    """Each contender once per chain count on BEST, in a fresh process: wall (start-up,
    compilation and warmup in), the ESS figures, and min ESS/s over NumPyro's."""
    rows = []
    for chains in settings["chains"]:
        for name in names:
            if not installed(name):
                print(f"  {name}: not installed, left out")
                continue
            try:
                if getattr(RUNNERS[name], "compiles", False):
                    compile_run(name, "best", chains, GPU_COMPILE_RUN, device, 1)
                values, wall, peak = run_once(
                    name, "best", chains, settings["warmup"], settings["draws"], 0, device, 1
                )
            except subprocess.CalledProcessError:
                print(f"  {name:24s} chains {chains:6d}  FAILED (its error is above)")
                continue
            figures, _ = measure(values)
            row = {"contender": name, "chains": chains, "wall_s": wall, **figures}
            rows.append({**row, "min_ess_per_s": figures["min_ess"] / wall, "peak_mib": peak})
            print(f"  {name:24s} chains {chains:6d}  {report(wall, figures)}", flush=True)
            pd.DataFrame(rows).to_csv(out / "gpu.csv", index=False)  # kept if the study is cut
    runs = pd.DataFrame(rows)
    if len(runs):
        peer = runs[runs.contender == "numpyro-vectorized"].set_index("chains").min_ess_per_s
        runs["vs numpyro-vectorized"] = runs.min_ess_per_s / runs.chains.map(peer)
    runs.to_csv(out / "gpu.csv", index=False)
    return runs


def ratios(medians):
    """Min ESS/s (the smallest of bulk, tail and squares ESS, per second) of each bayeslib
    sampler, and of the best of them, over each peer's."""
    rows = []
    for case, group in medians.groupby("case", sort=False):
        rate = dict(zip(group.contender, group.min_ess_per_s, strict=True))
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
            figures, _ = measure(values)
            iterations = chains * (settings["scaling_warmup"] + settings["scaling_draws"])
            row = {"contender": name, "chains": chains, "wall_s": wall, **figures}
            row.update(min_ess_per_s=figures["min_ess"] / wall)
            row.update(chain_iterations_per_s=iterations / wall, peak_mib=peak)
            rows.append(row)
            print(
                f"  {name:20s} chains {chains:6d}  {report(wall, figures)}"
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

    cases = medians.groupby("case", sort=False)
    fig, axes = plt.subplots(1, max(1, len(cases)), figsize=(5.5 * max(1, len(cases)), 4))
    for ax, (case, group) in zip(np.atleast_1d(axes), cases, strict=False):
        # A linear axis from zero: bars on a log axis start nowhere and misstate ratios.
        ax.barh(group.contender, group.min_ess_per_s, color="steelblue")
        for y, value in enumerate(group.min_ess_per_s):
            ax.annotate(f"{value:,.0f}", (value, y), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=8)  # fmt: skip
        ax.set_xlim(0, 1.15 * group.min_ess_per_s.max())
        ax.set_xlabel("min(bulk, tail, squares) ESS per second (median)")
        ax.set_title(f"{case}: 4 chains")
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, group in table.groupby("contender", sort=False):
        axes[0].plot(group.chains, group.min_ess_per_s, "o-", label=name)
        axes[1].plot(group.chains, group.chain_iterations_per_s, "o-", label=name)
    for ax, label in zip(
        axes,
        ["min(bulk, tail, squares) ESS per second", "chain-iterations per second"],
        strict=True,
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("chains")
        ax.set_ylabel(label)
        if len(table):
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
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated models of the comparison (default: all of {', '.join(CASES)})",
    )
    args = parser.parse_args(argv)
    settings = SETTINGS["full" if args.full else "smoke" if args.smoke else "quick"]
    args.out.mkdir(parents=True, exist_ok=True)

    default = GPU if args.device.startswith("cuda") else list(HARD) if args.hard else OURS + PEERS
    names = args.only.split(",") if args.only else default
    known = HARD if args.hard else RUNNERS
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"--only: unknown contenders {unknown}; known: {sorted(known)}")
    if args.device.startswith("cuda"):
        print("GPU study (BEST, float64; min ESS/s = min(bulk, tail, squares ESS) / wall):")
        runs = gpu(GPU_SMOKE if args.smoke else GPU_SETTINGS, args.device, args.out, names)
        columns = ["contender", "chains", "wall_s", *FIGURES, "vs numpyro-vectorized"]
        with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
            print("\n", runs[[c for c in columns if c in runs]].to_string(index=False))
        print(f"\nwritten to {args.out}/gpu.csv")
        return
    if args.hard:
        print("hard posteriors (float64):")
        runs = hard(settings, args.device, args.threads, args.out, names)
        columns = ["case", "contender", "chains", "repeat", "wall_s", *FIGURES]
        columns.append("max_r_hat_nested")
        with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
            print("\n", runs[columns].to_string(index=False))
        print(f"\nwritten to {args.out}/hard.csv")
        return

    print("comparison (4 chains, float64; min ESS/s = min(bulk, tail, squares ESS) / wall):")
    cases = args.cases.split(",")
    if set(cases) - set(CASES):
        parser.error(f"--cases: unknown cases {sorted(set(cases) - set(CASES))}; known: {CASES}")
    medians = comparison(settings, args.device, args.threads, args.out, names, cases)
    table = ratios(medians)
    table.to_csv(args.out / "ratios.csv", index=False)
    with pd.option_context("display.width", 200, "display.float_format", "{:.2f}".format):
        print(
            "\nmedians:\n",
            medians[["case", "contender", "wall_s", *FIGURES]].to_string(index=False),
        )
        print("\nmin ESS/s ratios (bayeslib / peer):\n", table.to_string(index=False))
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
        else pd.DataFrame(
            columns=["contender", "chains", "min_ess_per_s", "chain_iterations_per_s"]
        ),
        args.out,
    )
    print(f"\nwritten to {args.out}/")


if __name__ == "__main__":
    main()
