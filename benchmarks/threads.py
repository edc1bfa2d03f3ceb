"""`python -m benchmarks.threads [--smoke] [--repeats 3] [--machine quiet|busy|both] [--out DIR]`

Issue 16: the intra-op threads `bl.sample` runs with. The seed's two models
(`Best.simulate()`, `LinearRegression.simulate()`), NUTS and HMC, 4 and 1024 chains, float64
on the CPU, under torch's default thread count, each timed (wall of the whole `bl.sample` call:
tracing, warmup and draws) two ways that alternate within each repeat:

  before: ``threads=torch.get_num_threads()``, the library's old behaviour (torch's setting);
  after:  ``threads=None``, the library's choice (`bayeslib.threads`).

Both on a quiet machine and with one other CPU-bound process running (a Python busy loop in a
subprocess, stopped after); `--machine` picks one. Where the library chooses torch's setting
anyway (it also counts the cores idle at the call: one with the busy loop running), the two
calls are the same call: it is timed once and shown in both columns (calls = 1). Runs are
shorter than the default 1000 + 1000 (`ITERATIONS`: warmup = draws, per chain count). Prints the
medians over repeats, and whether before and after gave the same draws bit for bit; writes
threads_runs_MACHINE.csv (with the 1-minute load average after each case, to tell a quiet
machine from one someone else was using) and threads_MACHINE.csv to `--out` (default
results/benchmarks).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import bayeslib as bl
from bayeslib.models import Best, LinearRegression
from bayeslib.threads import choose_threads, work

MODELS = {"best": Best, "linear": LinearRegression}
SAMPLERS = ("nuts", "hmc")
CHAINS = (4, 1024)
# Warmup and draws per chain count: 1024 chains of NUTS on the linear regression take about a
# minute per 100 + 100 with 2 threads on a quiet machine, and several with another process running.
ITERATIONS = {4: 300, 1024: 50}
SMOKE_ITERATIONS = {4: 10, 1024: 5}
BUSY_LOOP = "while True: pass"


def timed(model, sampler, chains, iterations, threads):
    """One `bl.sample` call -> (wall seconds, posterior)."""
    started = time.perf_counter()
    post = bl.sample(
        model,
        sampler=sampler,
        chains=chains,
        warmup=iterations,
        draws=iterations,
        progress=False,
        threads=threads,
    )
    return time.perf_counter() - started, post


def same_draws(a, b):
    return all(torch.equal(a[name], b[name]) for name in a.names)


def condition(name, repeats, iterations, default):
    """Every case, `repeats` times, before and after alternating (which goes first swaps from
    one repeat to the next) -> rows."""
    rows = []
    for repeat in range(repeats):
        for case, cls in MODELS.items():
            model = cls.simulate()[0]
            for sampler in SAMPLERS:
                for chains in CHAINS:
                    chosen = choose_threads(work(model, chains))  # as the library does
                    variants = {"before": default, "after": None}
                    order = list(variants) if repeat % 2 == 0 else list(variants)[::-1]
                    if chosen == default:
                        order = order[:1]  # the same call
                    walls, posts = {}, {}
                    for variant in order:
                        walls[variant], posts[variant] = timed(
                            model, sampler, chains, iterations[chains], variants[variant]
                        )
                    for variant in variants:
                        walls.setdefault(variant, walls[order[0]])
                        posts.setdefault(variant, posts[order[0]])
                    row = {
                        "machine": name,
                        "model": case,
                        "sampler": sampler,
                        "chains": chains,
                        "repeat": repeat,
                        "threads_before": default,
                        "threads_after": chosen,
                        "calls": len(order),
                        "before_s": walls["before"],
                        "after_s": walls["after"],
                        "same_draws": same_draws(posts["before"], posts["after"]),
                        "load_1min": os.getloadavg()[0],
                    }
                    rows.append(row)
                    print(
                        f"  {name:5s} {case:6s} {sampler:4s} chains {chains:5d}  before "
                        f"{row['before_s']:7.2f} s ({default} threads)  after {row['after_s']:7.2f}"
                        f" s ({row['threads_after']})  same draws {row['same_draws']}",
                        flush=True,
                    )
    return rows


def busy(repeats, iterations, default):
    """`condition` with one other CPU-bound process running."""
    loop = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.5)  # let it start spinning
        return condition("busy", repeats, iterations, default)
    finally:
        loop.terminate()
        loop.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.threads",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--smoke", action="store_true", help="seconds: checks the script runs")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case (default 3)")
    parser.add_argument("--machine", choices=["quiet", "busy", "both"], default="both")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args(argv)
    iterations = SMOKE_ITERATIONS if args.smoke else ITERATIONS
    repeats = 1 if args.smoke else args.repeats
    args.out.mkdir(parents=True, exist_ok=True)

    default = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, default intra-op threads {default}; warmup + draws: "
        + ", ".join(f"{n} + {n} for {c} chains" for c, n in iterations.items()),
        flush=True,
    )
    bl.sample(Best.simulate()[0], chains=4, warmup=10, draws=10, progress=False)  # first-call costs
    rows = []
    if args.machine in ("quiet", "both"):
        rows += condition("quiet", repeats, iterations, default)
    if args.machine in ("busy", "both"):
        rows += busy(repeats, iterations, default)
    runs = pd.DataFrame(rows)
    runs.to_csv(args.out / f"threads_runs_{args.machine}.csv", index=False)
    keys = ["machine", "model", "sampler", "chains", "threads_before", "threads_after", "calls"]
    medians = runs.groupby(keys, sort=False).agg(
        before_s=("before_s", "median"),
        after_s=("after_s", "median"),
        same_draws=("same_draws", "all"),
    )
    medians["speedup"] = medians.before_s / medians.after_s
    medians = medians.reset_index()
    medians.to_csv(args.out / f"threads_{args.machine}.csv", index=False)
    with pd.option_context("display.width", 200, "display.float_format", "{:.2f}".format):
        print(f"\nmedians of {repeats} repeat(s):\n", medians.to_string(index=False))
    print(f"\nwritten to {args.out}/threads_{args.machine}.csv")


if __name__ == "__main__":
    main()
