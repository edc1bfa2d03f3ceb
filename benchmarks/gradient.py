"""`python -m benchmarks.gradient [--baseline REV] [--repeats 51] [--threads 1] [--out DIR]`

Issue 12: the time of one call of the traced log density and gradient (what HMC and NUTS call
once per leapfrog step) for the seed's two models (`Best.simulate()`, `LinearRegression
.simulate()`), float64 on the CPU, at 4 and 1024 chains, with the tracer of git revision
`--baseline` (default: the commit before issue 12's tracer work) and with the tracer of the
working tree. The two alternate within each repeat, each timed over a block of calls that
lasts about 0.02 s; prints the medians over repeats in microseconds per call and the median
ratio of neighbouring blocks, the time of one trace (median of 3, with its checks), and checks
the two give the same numbers (to rounding). Writes gradient.csv to `--out` when given.

Issue 13: the same for the data-heavy regression (`benchmarks.cases.regression_data`: 5000
rows, 24 predictors correlated 0.9; the seed's linear model), written `X @ beta`
(`LinearRegression`) and `beta @ X.T` (which `vmap` turns into a batched product over one copy
of X per chain), at 4 and 1024 chains: the traced gradient of the working tree, of the tracer
at `--before-rewrites` (the commit before issue 13's rewrites of the traced graph), the working
tree's traced gradient compiled (`bayeslib.compiling`, as `sample(compile=True)` does; from its
cache after the first run), and the same arithmetic written by hand for all chains in plain
torch (`X @ B.T`, `r @ X`), checked to give the same numbers. The four alternate in each
repeat; medians, and the medians of the ratios to the hand-written gradient of neighbouring
blocks. Writes data_heavy.csv to `--out` when given.
"""

import argparse
import math
import statistics
import subprocess
import time
import types
from pathlib import Path

import pandas as pd
import torch

import bayeslib.tracing as current
from bayeslib import compiling
from bayeslib.models import Best, LinearRegression

from .cases import regression_data

BASELINE = "0858579"  # the commit before issue 12's changes to bayeslib/tracing.py
BEFORE_REWRITES = "045280b"  # the commit before issue 13's rewrites in bayeslib/tracing.py
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
        # issue 13's rewrites round differently (another summation order, vectorised math)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * b.abs().max())
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


class RowRegression(LinearRegression):
    """`LinearRegression` written `beta @ X.T` (as NumPyro models often are)."""

    def observe(self, p):
        return {"y": torch.distributions.Normal(p.beta @ self.X.T, p.sigma)}


def by_hand(model):
    """`LinearRegression`'s log density and gradient for all chains, written in plain torch:
    beta = -100 + 200 sigmoid(z_beta), sigma = 100 sigmoid(z_sigma) (their Uniform priors'
    transforms, with the log Jacobians), y ~ Normal(X @ beta, sigma)."""
    X, y = model.X, model.y
    rows, k = X.shape
    constant = -rows * 0.5 * math.log(2 * math.pi)
    logsigmoid = torch.nn.functional.logsigmoid

    def logdensity_and_grad(z):
        u, v = torch.sigmoid(z[:, :k]), torch.sigmoid(z[:, k])
        sigma = 100.0 * v
        residual = y - (-100.0 + 200.0 * u) @ X.T
        squares = (residual * residual).sum(1)
        jacobian = (logsigmoid(z) + logsigmoid(-z)).sum(1)
        lp = constant - 0.5 * squares / sigma**2 - rows * torch.log(sigma) + jacobian
        grad_beta = (residual @ X) / (sigma**2)[:, None] * (200.0 * u * (1 - u)) + 1 - 2 * u
        grad_sigma = (squares / sigma**3 - rows / sigma) * (100.0 * v * (1 - v)) + 1 - 2 * v
        return lp, torch.cat([grad_beta, grad_sigma[:, None]], 1)

    return logdensity_and_grad


def data_heavy(model, chains: int, before_rewrites, repeats: int) -> dict:
    z = 0.1 * torch.randn(
        chains, model.dim, generator=torch.Generator().manual_seed(0), dtype=model.dtype
    )
    traced = current.trace_logdensity(model, z)
    fns = {
        "hand": by_hand(model),
        "traced": traced,
        "compiled": compiling.compile_function(traced, (z,), "the regression's gradient"),
        "before": before_rewrites.trace_logdensity(model, z),
    }
    expected = model.logdensity_and_grad(z)
    for fn in fns.values():
        for got, want in zip(fn(z), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * want.abs().max())
    calls = max(1, int(BLOCK_S / per_call(fns["hand"], z, 3)))
    seconds = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds[name].append(per_call(fn, z, calls))

    def over_hand(name):
        return statistics.median(a / h for a, h in zip(seconds[name], seconds["hand"], strict=True))

    return {
        "model": "X @ beta" if type(model) is LinearRegression else "beta @ X.T",
        "chains": chains,
        "calls_per_block": calls,
        "hand_us": statistics.median(seconds["hand"]) * 1e6,
        "traced_us": statistics.median(seconds["traced"]) * 1e6,
        "compiled_us": statistics.median(seconds["compiled"]) * 1e6,
        "before_us": statistics.median(seconds["before"]) * 1e6,
        "traced_over_hand": over_hand("traced"),
        "compiled_over_hand": over_hand("compiled"),
        "before_over_hand": over_hand("before"),
    }


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the old tracer")
    parser.add_argument(
        "--before-rewrites",
        default=BEFORE_REWRITES,
        help="git revision of the tracer without issue 13's rewrites",
    )
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
    before_rewrites = load_tracing(args.before_rewrites)
    data = {k: torch.as_tensor(v) for k, v in regression_data().items()}
    heavy = pd.DataFrame(
        [
            data_heavy(form(**data), chains, before_rewrites, args.repeats)
            for form in (LinearRegression, RowRegression)
            for chains in CHAINS
        ]
    )
    print(
        f"\ndata-heavy regression (5000 x 24), per-gradient time, median of {args.repeats} "
        f"repeats, {args.threads} thread(s); traced = working tree, before = tracer at "
        f"{args.before_rewrites}, compiled = working tree's, compiled; hand = plain torch for "
        "all chains"
    )
    print(heavy.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "gradient.csv", index=False)
        heavy.to_csv(args.out / "data_heavy.csv", index=False)
    return table


if __name__ == "__main__":
    main()
