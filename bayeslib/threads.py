"""How many intra-op threads the library's hot loops run with.

Sampling, optimising and simulating run thousands of small tensor operations one after the
other. PyTorch's intra-op threads gain on an operation only when it is large enough to split;
below that they only wait on each other, and on a machine where another process keeps a core
busy a thread waiting for a descheduled sibling turns microseconds into milliseconds (issue 16:
NUTS on the seed's linear regression, 4 chains, took 102.7 s with torch's default 2 threads and
8.4 s with 1). So the entry points (`bl.sample`, `bl.find_map`, the predictive functions) run
with one thread per `ELEMENTS_PER_THREAD` elements per operation, at most the caller's
`torch.get_num_threads()`, and restore the caller's setting afterwards, also when they raise.
Where the work would use more than one thread, the count is also capped by the cores idle at
the call (read from /proc/stat over `IDLE_SAMPLE_S`, Linux only): a busy core only slows the
threads down. Their `threads=` argument overrides the choice. On CUDA the setting is left as it
is.
"""

import functools
import inspect
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

# Elements per tensor operation (chains, or draws simulated at once, x the size of the largest
# observed data field of one data set x the data sets of a stack) that each thread needs.
# Measured on a 2-core AMD EPYC (torch 2.13.0, CPU), the traced log density and gradient of the
# seed's models, 2 threads against 1, quiet machine: 2 threads start to gain at about 32k
# elements (LinearRegression, 200 observations: 1.05x the time at 128 chains, 0.83x at 192,
# 0.69x at 1024; Best, 2 x 20: 1.02x at 1024 chains, 0.93x at 2048, 0.85x at 4096), which is
# ATen's grain size (32768): smaller operations are not split at all, and only matrix products
# pay for the threads. With another process keeping a core busy, 2 threads took 2-6x the time
# of 1 at every size. So a second thread comes at twice the crossover, one grain per thread.
ELEMENTS_PER_THREAD = 32768

# How long `idle_cores` watches the CPUs: long enough for a few scheduler ticks (10 ms at 100 Hz),
# short next to a loop that gains from a second thread.
IDLE_SAMPLE_S = 0.05


def check_threads(threads, caller: str):
    """`threads` as given, if a positive int or None; else a ValueError naming `caller`."""
    if threads is None or (
        isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1
    ):
        return threads
    raise ValueError(f"{caller}: threads must be a positive int or None, not {threads!r}")


def work(model, batch=1, device=None, new_data=None) -> int | None:
    """Elements per tensor operation in a loop over `model`: `batch` (chains, or draws at once)
    times the size of its largest observed data field (the likelihood's operations are that
    size per chain; its largest data tensor where none is observed) or of `new_data` ({field:
    values} replacing them), times the data sets of a `bl.stack`. None on CUDA (`device`, else
    the model's), where threads are left alone."""
    device = str(getattr(model, "device", "cpu") if device is None else device)
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return None
    models = getattr(model, "models", [model])  # a bl.stack holds its data sets' models
    data = getattr(models[0], "data", {})
    observed = [data[field] for field in getattr(models[0], "observed", []) if field in data]
    values = [*(observed or data.values()), *(new_data or {}).values()]
    largest = max((_size(value) for value in values), default=1)
    batch = batch if isinstance(batch, int) and batch >= 1 else 1
    return batch * largest * len(models)


def _size(value) -> int:
    if torch.is_tensor(value):
        return value.numel()
    try:
        return int(np.size(value))
    except (TypeError, ValueError):  # not an array: the model will say so
        return 1


def choose_threads(elements: int | None, available: int | None = None) -> int | None:
    """Threads for operations on `elements` elements: one per `ELEMENTS_PER_THREAD`, at least
    1, at most `available` (default: `torch.get_num_threads()`, capped by `idle_cores()` where
    more than one thread would be chosen). None for None (CUDA)."""
    if elements is None:
        return None
    wanted = max(1, elements // ELEMENTS_PER_THREAD)
    if available is None:
        available = torch.get_num_threads()
        if min(wanted, available) > 1:
            idle = idle_cores()
            available = available if idle is None else min(available, max(1, round(idle)))
    return min(wanted, available)


def idle_cores(interval: float = IDLE_SAMPLE_S) -> float | None:
    """Cores idle over the next `interval` seconds (idle and I/O-wait time of all CPUs, from
    /proc/stat), None where that cannot be read."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(interval)
    second = _cpu_times()
    (cores, before), (_, after) = first, second
    spent = [b - a for a, b in zip(before, after, strict=True)]
    idle = spent[3] + spent[4]  # the idle and iowait columns
    return cores * idle / sum(spent) if sum(spent) > 0 else float(cores)


def _cpu_times() -> tuple[int, list[int]] | None:
    """(CPUs, jiffies of all CPUs: user, nice, system, idle, iowait, ...) from /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        cores = sum(line.startswith("cpu") and line[3].isdigit() for line in lines)
        return cores, [int(value) for value in lines[0].split()[1:8]]
    except (OSError, IndexError, ValueError):
        return None


@contextmanager
def intra_op_threads(threads: int | None):
    """Run the block with `threads` intra-op threads (None: as they are), then restore the
    setting found on entry, also when the block raises."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def chooses_threads(elements):
    """Decorator for an entry point with a ``threads=None`` argument: the call runs with
    `threads` intra-op threads, or where that is None with `choose_threads(elements(args))`,
    `args` being the call's arguments by name (defaults filled in). Library calls made inside
    it are passed the setting it chose (``threads=torch.get_num_threads()``)."""

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                arguments = signature.bind(*args, **kwargs)
            except TypeError:
                return fn(*args, **kwargs)  # raises the function's own error
            arguments.apply_defaults()
            threads = check_threads(arguments.arguments["threads"], fn.__name__)
            if threads is None:
                threads = choose_threads(elements(arguments.arguments))
            with intra_op_threads(threads):
                return fn(*args, **kwargs)

        return run

    return decorate


__all__ = [
    "ELEMENTS_PER_THREAD",
    "check_threads",
    "choose_threads",
    "chooses_threads",
    "idle_cores",
    "intra_op_threads",
    "work",
]
