"""A sampler's fixed-shape work replayed as captured CUDA graphs.

A NUTS doubling or an HMC leapfrog step is hundreds of small operations on tensors whose
shapes stay fixed for a run. Launched one by one from Python, each costs some 10 us on a GPU:
at a thousand chains, far more than its arithmetic. Captured once as a CUDA graph and replayed,
the whole phase is one launch.

A *phase* is a pure function ``phase(ws) -> dict`` of new values for some entries of a
*workspace* ``ws`` (a dict of tensors, and of tuples of tensors such as a metric).
`run_phase` gives the workspace with those values: without graphs (``graphs`` None), a new
dict; with them, the same static workspace updated in place. A phase runs eagerly the first
time (on a side stream: this also warms up the libraries it calls), and is then captured and
replayed. Randomness is drawn outside phases and loaded as inputs, so the draws are the same,
bit for bit, with and without graphs.
"""

import torch
from torch import Tensor


class Graphs:
    """One run's captured phases and the static workspace they read and write: valid for
    one shape of chains, dtype and device (a run's)."""

    def __init__(self):
        self.workspace: dict = {}
        self.captured: dict = {}
        self.pool = None  # one memory pool for every phase: none keeps tensors between them

    def __repr__(self) -> str:
        return f"Graphs({len(self.captured)} captured)"


def load(graphs: Graphs | None, values: dict, ws: dict | None = None) -> dict:
    """Workspace `ws` (none yet: empty) holding `values` too (inputs of the phases to come):
    without graphs a new dict, else the static workspace with only `values` copied into it."""
    if graphs is None:
        return {**(ws or {}), **values}
    _store(graphs.workspace, values)
    return graphs.workspace


def run_phase(graphs: Graphs | None, key, phase, ws: dict) -> dict:
    """`ws` updated with `phase(ws)`; with `graphs`, `key` names the phase's graph (the same
    key must always mean the same phase)."""
    if graphs is None:
        return {**ws, **phase(ws)}
    graph = graphs.captured.get(key)
    if graph is None:

        def step():
            _store(ws, phase(ws))

        if key in graphs.captured:  # seen once: capture it now
            graph = graphs.captured[key] = capture(step, graphs)
        else:
            warm_up(step)
            graphs.captured[key] = None
            return ws
    graph.replay()
    return ws


def warm_up(step) -> None:
    """`step` run once eagerly, on a side stream, as PyTorch asks before a capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)


def capture(step, graphs: Graphs):
    """`step` captured as a CUDA graph (not run: `replay` runs it)."""
    graph = torch.cuda.CUDAGraph()
    if graphs.pool is None:
        graphs.pool = torch.cuda.graph_pool_handle()
    try:
        with torch.cuda.graph(graph, pool=graphs.pool):
            step()
    except RuntimeError as error:
        raise RuntimeError(
            f"capturing the sampler's step as a CUDA graph failed ({error}); sample with "
            "cuda_graphs=False to run it without graphs"
        ) from error
    return graph


def _store(ws: dict, new: dict) -> None:
    """`new`'s values written into `ws`'s tensors (a copy of each new name's value added)."""
    for name, value in new.items():
        if name in ws:
            _copy(ws[name], value)
        else:
            ws[name] = _clone(value)


def _copy(static, value) -> None:
    if isinstance(static, Tensor):
        static.copy_(value)
    else:
        for s, v in zip(static, value, strict=True):
            _copy(s, v)


def _clone(value):
    if isinstance(value, Tensor):
        return value.clone()
    return type(value)(*(_clone(v) for v in value))
