"""`python -m benchmarks.gradient [--baseline REV] [--repeats 51] [--threads 1] [--out DIR]`

Issue 12: the time of one call of the traced log density and gradient (what HMC and NUTS call
once per leapfrog step) for the seed's two models (`Best.simulate()`, `LinearRegression
.simulate()`), float64 on the CPU, at 4 and 1024 chains, with the tracer of git revision
`--baseline` (default: the commit before issue 12's tracer work) and with the tracer of the
working tree. The two alternate within each repeat, each timed over a block of calls that
lasts about 0.02 s; prints the medians over repeats in microseconds per call and the median
ratio of neighbouring blocks, the time of one trace (median of 3, with its checks), and checks
the two give the same numbers. Writes gradient.csv to `--out` when given.
"""

import argparse
import statistics
import subprocess
import time
import types
from pathlib import Path

import pandas as pd
import torch

import bayeslib.tracing as current
from bayeslib.models import Best, LinearRegression

BASELINE = "0858579"  # the commit before issue 12's changes to bayeslib/tracing.py
CHAINS = (4, 1024)
TRACES = 3  # traces timed per tracer (median)
BLOCK_S = 0.02  # seconds of calls per timed block; short, so that before and after interleave


def load_tracing(revision: str) -> types.ModuleType:
    """bayeslib/tracing.py as it was at `revision`, imported beside the current one."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{revision}:bayeslib/tracing.py"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"bayeslib.tracing_{revision}")
    module.__package__ = "bayeslib"  # its relative imports resolve against bayeslib
    exec(compile(source, f"tracing.py@{revision}", "exec"), module.__dict__)
    return module


def per_call(fn, z, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(z)
    return (time.perf_counter() - start) / calls


def timed_trace(tracing, model, z):
    start = time.perf_counter()
    traced = tracing.trace_logdensity(model, z)
    return traced, time.perf_counter() - start


def calls_for(fn, z, seconds: float) -> int:
    fn(z)
    return max(5, int(seconds / per_call(fn, z, 10)))


def compare(model, chains: int, baseline, repeats: int) -> dict:
    z = torch.randn(
        chains, model.dim, generator=torch.Generator().manual_seed(0), dtype=model.dtype
    )
    traces = {"before": [], "after": []}
    for _ in range(TRACES):
        traces["before"].append(timed_trace(baseline, model, z))
        traces["after"].append(timed_trace(current, model, z))
    (before, _), (after, _) = traces["before"][-1], traces["after"][-1]
    for b, a in zip(before(z), after(z), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    calls = calls_for(after, z, BLOCK_S)
    before_s, after_s = [], []
    for _ in range(repeats):
        before_s.append(per_call(before, z, calls))
        after_s.append(per_call(after, z, calls))
    return {
        "model": model.name,
        "chains": chains,
        "calls_per_block": calls,
        "before_us": statistics.median(before_s) * 1e6,
        "after_us": statistics.median(after_s) * 1e6,
        # the median of the ratios of neighbouring blocks: robust to the machine's load changing
        "after_over_before": statistics.median(
            [a / b for a, b in zip(after_s, before_s, strict=True)]
        ),
        "trace_before_s": statistics.median(s for _, s in traces["before"]),
        "trace_after_s": statistics.median(s for _, s in traces["after"]),
    }


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the old tracer")
    parser.add_argument("--repeats", type=int, default=51)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    baseline = load_tracing(args.baseline)
    models = [Best.simulate()[0], LinearRegression.simulate()[0]]
    rows = [compare(m, c, baseline, args.repeats) for m in models for c in CHAINS]
    table = pd.DataFrame(rows)
    print(
        f"per-gradient time, median of {args.repeats} repeats, {args.threads} thread(s), "
        f"torch {torch.__version__}; before = tracer at {args.baseline}, after = working tree"
    )
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "gradient.csv", index=False)
    return table


if __name__ == "__main__":
    main()
