"""Tracing a model's log density (and its gradient) into one flat graph of tensor operations.

A model's Python code (its `Draw`, the distributions it builds, `vmap`'s batching rules,
autograd's bookkeeping) costs far more per call than the arithmetic on a handful of chains.
Tracing runs that code once under a dispatch mode that records every ATen operation it
issues, forward and backward, into an FX graph. Operations that touch only the data and
constants are then computed once (constant folding), operations that return their input are
dropped, repeated ones shared, unused ones removed, and the graph is written back as one
straight-line Python function, replayed on every call. It is specialised to one batch shape,
dtype and device, which is what a sampler uses for its whole run.

Data-heavy models get their arithmetic's speed: a product of data with per-chain parameters,
which `vmap` makes a batched product over one copy of the data per chain, becomes one matrix
product for all chains; elementwise work on a per-chain value broadcast over the data runs
once per chain; and many chains run in chunks that fit a core's cache.

Code whose control flow depends on parameter values (`if`, `.item()`) cannot be traced: a
Python value read from a tensor is refused, and the caller keeps the model's own code.
(`make_fx` records the same way, but importing it costs about a second per process.)

Linear algebra routines that check their result (`torch.linalg.cholesky`, `solve`, `inv`:
an error when a matrix is not positive definite or is singular) are recorded without the check:
the traced function returns NaN (a rejection) for the chains whose routine failed and the
model's values for the others. Chains lie along dim 0 of the first input and of every output;
a check whose matrices cannot be matched to chains that way fails the trace.

Every private PyTorch name used here comes from `bayeslib.torch_compat`.
"""

import functools
import math
import operator
import warnings
from typing import NamedTuple

import torch
from torch.fx import Graph, GraphModule, Node

from .samplers.base import Target
from .torch_compat import (
    LINALG_CHECK_ERRORS,
    TO_COPY,
    UNSAFE_VIEW,
    DispatchMode,
    direct_call,
    is_aten_op,
    is_mutable,
    is_pointwise,
    is_random,
    op_name,
    overload_name,
    tree_flatten,
    tree_map,
)


class TracingError(RuntimeError):
    """The model's log density could not be traced, or its trace disagrees with the model."""


def trace(fn, *examples: torch.Tensor, what: str = "the traced function"):
    """`fn` (tensors -> a tensor or tuple of tensors) traced at `examples`, simplified, and
    written back as one straight-line Python function of tensor operations, which refuses
    inputs of another shape, dtype or device (`what` names it in that error)."""
    graph_module = recorded(fn, *examples)
    # again: rewritten products round differently, and each line is checked on its value
    return to_python(graph_module, _values(graph_module, examples), what)


def recorded(fn, *examples: torch.Tensor) -> GraphModule:
    """`fn`'s operations at `examples` (`record`), checked for chains (`_check_linalg_chains`)
    and simplified (`simplify`)."""
    graph_module = record(fn, *examples)
    _check_linalg_chains(graph_module, examples)
    simplify(graph_module, _values(graph_module, examples))
    return graph_module


def trace_logdensity(model, z: torch.Tensor, grad: bool = True, jacobian: bool = True):
    """`model`'s log density at batches shaped like `z` (`[chains, dim]`), traced: a callable
    `z -> (lp, grad)` (or `z -> lp` with `grad=False`) equal to `model.logdensity_and_grad`
    (`model.logdensity`), NaN for the chains whose linear algebra fails. Raises `TracingError`
    when the model cannot be traced, or its own code fails at `z`, or the trace does not
    reproduce the model at `z` and at a second point near it. On the CPU, where one chain's
    intermediate results are large (data-heavy models) and there are many chains, the chains
    run in chunks whose intermediate results fit a core's cache (`CHUNK_BYTES`)."""

    eager = functools.partial(
        model.logdensity_and_grad if grad else model.logdensity, jacobian=jacobian
    )
    what = f"Model '{model.name}': its traced log density"
    traced = trace(eager, z, what=what)
    chunk = _chunk(model, traced, z)
    if chunk is not None:
        traced = _in_chunks(trace(eager, z[:chunk], what=what), chunk, z, what)
    _check_same(eager, traced, z)
    _check_nearby(eager, traced, z)
    return traced


# ----- many chains of a data-heavy model, in chunks

# The largest intermediate result of one chunk of chains: about a core's L2 cache. Over it,
# every elementwise operation streams through main memory (and freshly mapped pages).
CHUNK_BYTES = 2**21
MIN_CHUNK = 8  # chains; fewer, and the cost of each call outweighs the cache's gain


def _chunk(model, traced, z: torch.Tensor) -> int | None:
    """The chains per chunk for `traced` at `z`, or None to run all at once. Only for a model
    vmapped over chains (`batched = False`): its chains cannot mix, so any chunk of them gives
    their values."""
    chains = z.shape[0]
    if getattr(model, "batched", True) is not False or z.device.type != "cpu":
        return None
    limit = int(CHUNK_BYTES * chains // max(1, traced.largest_bytes))
    if limit >= chains or limit < MIN_CHUNK:
        return None
    chunk = max(d for d in range(1, limit + 1) if chains % d == 0)
    return chunk if 2 * chunk >= limit else None


def _in_chunks(traced, chunk: int, z: torch.Tensor, what: str):
    """`traced` (traced for `chunk` chains) over the chains of batches shaped like `z`."""
    layout = (z.shape, z.dtype, z.device)
    refuse = functools.partial(_refusal, what, _layout(z))

    def chunked(x):
        if (x.shape, x.dtype, x.device) != layout:
            raise refuse(x)
        parts = [traced(part) for part in x.split(chunk)]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(outputs) for outputs in zip(*parts, strict=True))
        return torch.cat(parts)

    chunked.source, chunked.chunk = traced.source, chunk
    return chunked


# ----- recording


class _Recorder(DispatchMode):
    """Runs every ATen operation as usual and keeps (op, args, kwargs, result). Linear algebra
    checks are not run: their `info` tensors are kept in `infos`."""

    def __init__(self):
        super().__init__()
        self.calls, self.infos = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is LINALG_CHECK_ERRORS:
            self.infos.append(args[0])
            return None
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls.append((func, args, kwargs, out))
        return out


def record(fn, *examples: torch.Tensor) -> GraphModule:
    """The ATen operations `fn(*examples)` runs, as an FX graph of `examples`. Tensors that no
    recorded operation made are constants (the data, numbers). In-place writes become plain
    operations where nothing else shares the written tensor's memory. Linear algebra checks
    become data: outputs are NaN for the chains whose routine failed."""
    inputs = [e.detach().clone() for e in examples]
    recorder = _Recorder()
    try:
        with recorder:
            result = fn(*inputs)
    except Exception as error:
        raise TracingError(f"{type(error).__name__}: {error}") from error
    if recorder.infos:
        with recorder:
            result = _nan_where_failed(result, recorder.infos, _chains(examples))
    calls = recorder.calls
    for func, *_, out in calls:
        if not all(isinstance(x, torch.Tensor) for x in tree_flatten(out)[0]):
            raise TracingError(
                f"{func} reads a Python value out of a tensor: control flow on parameter "
                "values (if, .item()) cannot be traced"
            )

    root, graph, nodes = torch.nn.Module(), Graph(), {}
    for i, tensor in enumerate(inputs):
        nodes[id(tensor)] = graph.placeholder(f"z{i}")

    def as_node(value):
        if not isinstance(value, torch.Tensor):
            return value
        if id(value) not in nodes:
            name = f"_constant_{len(nodes)}"
            root.register_buffer(name, value)
            nodes[id(value)] = graph.get_attr(name)
        return nodes[id(value)]

    existing = {id(tensor) for tensor in inputs}  # tensors made so far
    for i, (func, args, kwargs, out) in enumerate(calls):
        existing.update(id(t) for t in tree_flatten((args, kwargs, out))[0])
        if is_mutable(func):
            made_here = id(args[0]) in nodes and nodes[id(args[0])].op == "call_function"
            func = _functional(func, args, calls[i + 1 :], made_here, existing)
        node = graph.call_function(func, tree_map(as_node, args), tree_map(as_node, kwargs))
        if isinstance(out, tuple | list):
            for k, item in enumerate(out):
                nodes[id(item)] = graph.call_function(operator.getitem, (node, k))
        else:
            nodes[id(out)] = node
    graph.output(tree_map(as_node, result))
    for info in recorder.infos:
        node = nodes[id(info)]
        if node.op == "call_function" and node.target is operator.getitem:
            node.meta["linalg_info"] = True  # checked by _check_linalg_chains
    return GraphModule(root, graph)


def _functional(func, args, later_calls, made_here, existing):
    """The out-of-place twin of an in-place op (`mul_` -> `mul`), when the written tensor is
    an intermediate result (`made_here`) that no other tensor made before the write
    (`existing`: their ids) views and uses later. Views made after the write (autograd saving
    the result of `exp_`) see the written value, which the twin's result is."""
    written = args[0]
    name, overload = op_name(func), overload_name(func)
    twin = getattr(getattr(torch.ops.aten, name.rstrip("_"), None), overload, None)
    if twin is None or is_mutable(twin) or not isinstance(written, torch.Tensor):
        raise TracingError(f"{func} writes in place and has no out-of-place form")
    if not made_here:
        raise TracingError(f"{func} writes into the input or the data")
    storage = written.untyped_storage().data_ptr()
    for _, later_args, later_kwargs, _ in later_calls:
        for t in tree_flatten((later_args, later_kwargs))[0]:
            if isinstance(t, torch.Tensor) and t is not written and id(t) in existing:
                if t.untyped_storage().data_ptr() == storage:
                    raise TracingError(f"{func} writes into a tensor that another one views")
    return twin


# ----- linear algebra checks as data


def _chains(examples) -> int:
    if not examples or examples[0].ndim == 0:
        raise TracingError("a linear algebra check needs chains along dim 0 of the first input")
    return examples[0].shape[0]


def _per_chain(info: torch.Tensor, chains: int) -> bool:
    """Whether `info` holds one row per chain (dim 0), as `vmap` and a batched model's leading
    chain dimension give; otherwise it concerns every chain (its matrices must not depend on
    the chains, which `_check_linalg_chains` checks)."""
    return chains > 1 and info.ndim > 0 and info.shape[0] == chains


def _failed_chains(info: torch.Tensor, chains: int) -> torch.Tensor:
    """`[chains]`: whether any of the chain's matrices failed (a nonzero info)."""
    failed = info != 0
    if _per_chain(info, chains):
        return failed.reshape(chains, -1).any(1)
    return failed.any().expand(chains)


def _nan_where_failed(result, infos, chains: int):
    """`result` (tensors with chains on dim 0), NaN for the chains whose routine failed."""
    failed = functools.reduce(operator.or_, (_failed_chains(info, chains) for info in infos))

    def reject(out):
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != chains:
            raise TracingError(
                f"an output of shape {tuple(getattr(out, 'shape', ()))} has no chain dimension "
                f"(dim 0, {chains} chains) to reject where a linear algebra routine failed"
            )
        return torch.where(failed.reshape((chains,) + (1,) * (out.ndim - 1)), math.nan, out)

    return tree_map(reject, result)


def _check_linalg_chains(graph_module: GraphModule, examples) -> None:
    """Each linear algebra check rejects the chains its matrices belong to: row `c` of a
    per-chain check's inputs must depend on chain `c` only, the inputs of a check that
    concerns every chain on no chain. Tested by moving groups of chains of the first input
    and seeing which rows move."""
    infos = [node for node in graph_module.graph.nodes if node.meta.get("linalg_info")]
    if not infos or _chains(examples) == 1:
        return
    z, rest, chains = examples[0], tuple(examples[1:]), _chains(examples)
    order = {node: i for i, node in enumerate(graph_module.graph.nodes)}
    last = max(infos, key=order.__getitem__)  # after every check's routine and inputs
    before = _values(graph_module, examples, until=last)
    step = _nearby(z, 1e-3) - z
    for moved in _chain_groups(chains, z.device):
        after = _values(graph_module, (z + step * moved[:, None], *rest), until=last)
        for info in infos:
            _check_rows(info, before, after, moved, chains)


def _chain_groups(chains: int, device):
    """Groups of chains (`[chains]` masks) such that for any two chains, one group holds the
    first and not the second: for each bit of the index, the chains with it set, then the
    others."""
    index = torch.arange(chains, device=device)
    for bit in range(max(1, (chains - 1).bit_length())):
        group = (index >> bit) & 1 == 1
        yield group
        yield ~group


def _check_rows(info: Node, before: dict, after: dict, moved, chains: int) -> None:
    """Moving the chains in `moved` (`before` -> `after`) moved exactly their rows (dim 0) of
    the inputs of `info`'s routine if the check is per chain, else nothing."""
    routine, per_chain = info.args[0], _per_chain(before[info], chains)
    rows = torch.zeros_like(moved)
    matched = True
    for source in routine.all_input_nodes:
        b, a = before[source], after[source]
        changed = ~((b == a) | (b.isnan() & a.isnan()))
        if not changed.any():
            continue
        if not per_chain or b.ndim == 0 or b.shape[0] != chains:
            matched = False
            break
        rows |= changed.reshape(chains, -1).any(1)
    if not matched or (per_chain and not torch.equal(rows, moved)):
        shapes = ", ".join(str(tuple(before[n].shape)) for n in routine.all_input_nodes)
        raise TracingError(
            f"the result of {routine.target} cannot be matched to chains: row c of its inputs "
            f"({shapes}) must move with chain c alone, or no input with any chain (chains lie "
            f"along dim 0, {chains} chains); a batched model must keep its chains first in the "
            "matrices it factorises"
        )


def _nearby(z: torch.Tensor, scale: float) -> torch.Tensor:
    """A point near `z`, from a generator of its own: the global one is left as it is."""
    generator = torch.Generator(device=z.device).manual_seed(0)
    noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    return z + scale * (1 + z.abs()) * noise


# ----- checking a trace


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _check_same(eager, traced, z) -> None:
    """The trace gives the model's own values at `z`."""
    try:
        expected = _as_tuple(eager(z))
    except Exception as error:
        raise TracingError(
            f"the model's own code fails where it is checked ({type(error).__name__}: {error})"
        ) from error
    _compare(expected, _as_tuple(traced(z)))


def _check_nearby(eager, traced, z) -> None:
    """The trace gives the model's own values at a second point near `z`. Where the model's
    code raises there (a routine failed for some chains, and it raises for the batch), the
    chains the trace rejects keep their `z`."""
    near = _nearby(z, 0.1)
    try:
        eager(near)
    except Exception:
        rejected = _as_tuple(traced(near))[0].isnan()
        near = torch.where(rejected[:, None], z, near)
    _check_same(eager, traced, near)


def _compare(expected: tuple, got: tuple) -> None:
    for e, g in zip(expected, got, strict=True):
        if e.shape != g.shape or not torch.allclose(e, g, rtol=1e-6, atol=1e-8, equal_nan=True):
            raise TracingError("the traced log density differs from the model's own")


def make_target(model, z, grad=True, traced=True) -> Target:
    """The batched log density a sampler calls, for batches shaped like `z`: traced where the
    model can be traced (and `traced`), else (with a warning) the model's own, slower code.
    Only what the sampler uses is traced: the gradient for HMC and NUTS, the log density for
    Metropolis."""
    eager = Target(model.logdensity_and_grad, model.logdensity)
    if not traced:
        return eager
    try:
        fast = trace_logdensity(model, z, grad)
    except TracingError as error:
        warnings.warn(
            f"Model '{model.name}': its log density could not be traced ({error}); running its "
            "Python code on every call, which is slower."
            + (
                " Use torch.where instead of if or .item() on parameter values."
                if "Python value" in str(error)
                else ""
            ),
            stacklevel=3,
        )
        return eager
    if grad:
        return eager._replace(logdensity_and_grad=fast, traced=True)
    return eager._replace(logdensity=fast, traced=True)


# ----- graph simplification


def simplify(graph_module: GraphModule, values: dict) -> None:
    """Fold constants, multiply data by all chains' parameters at once, drop operations that
    return their input, merge chains of views and of scalings by numbers, assemble the
    gradient from its pieces in one `cat`, share repeated operations and drop unused ones, in
    place. `values`: every node's value at the traced inputs (new nodes get theirs)."""
    graph = graph_module.graph
    _fold_constants(graph_module, values)
    _shared_products_as_mm(graph_module, values)
    _transposed_products(graph_module, values)
    _drop_identities(graph, values)
    _elementwise_before_broadcast(graph_module, values)
    _scalings_folded(graph_module, values)
    _sums_of_broadcasts(graph_module, values)
    _sums_of_one(graph_module, values)
    _views_of_views(graph_module, values)
    _drop_identities(graph, values)
    _scalar_factors_folded(graph_module, values)
    _negations_absorbed(graph_module, values)
    _products_of_masks(graph_module, values)
    _gradient_pieces_joined(graph_module, values)
    _clamp_masks(graph_module, values)
    _sums_shared(graph_module, values)
    _share_repeated(graph)
    graph.eliminate_dead_code()
    graph.lint()
    graph_module.recompile()


class _Reached(Exception):
    pass


class _Interpreter(torch.fx.Interpreter):
    """Keeps every node's value in `values`; stops after the node `until`."""

    def __init__(self, graph_module, until=None):
        super().__init__(graph_module)
        self.values, self.until = {}, until

    def run_node(self, node):
        value = self.values[node] = super().run_node(node)
        if node is self.until:
            raise _Reached
        return value


def _values(graph_module, examples, until: Node | None = None) -> dict:
    """Every node's value when the graph runs on `examples` (up to `until`)."""
    interpreter = _Interpreter(graph_module, until)
    try:
        interpreter.run(*examples)
    except _Reached:
        pass
    return interpreter.values


def _is_op(node: Node) -> bool:
    return node.op == "call_function" and is_aten_op(node.target)


def _is_random(node: Node) -> bool:
    return is_random(node.target)


_aten = torch.ops.aten

# Operations whose result depends on their input's shape only (fixed in a trace).
_SHAPE_ONLY = {
    _aten.zeros_like.default,
    _aten.ones_like.default,
    _aten.full_like.default,
    _aten.new_zeros.default,
    _aten.new_ones.default,
    _aten.new_full.default,
}


def _fold_constants(graph_module: GraphModule, values: dict) -> None:
    """Compute once every operation whose inputs are all constants (data, numbers) or whose
    result depends on shapes only."""
    graph = graph_module.graph
    constants = set()
    for node in graph.nodes:
        if node.op == "get_attr":
            constants.add(node)
        elif _is_op(node) and not _is_random(node):
            if node.target in _SHAPE_ONLY or all(n in constants for n in node.all_input_nodes):
                constants.add(node)
    for i, node in enumerate(list(graph.nodes)):
        if node.op != "call_function" or node not in constants:
            continue
        if not isinstance(values[node], torch.Tensor):
            continue
        name = f"_folded_{i}"
        graph_module.register_buffer(name, values[node])
        with graph.inserting_before(node):
            constant = graph.get_attr(name)
        values[constant] = values[node]
        node.replace_all_uses_with(constant)


# Operations that return their first input when the result has its shape, dtype and device.
_SAME_WHEN_SAME_LAYOUT = {
    _aten.view.default,
    UNSAFE_VIEW,
    _aten.expand.default,
    _aten.alias.default,
    _aten.detach.default,
    _aten.clone.default,
    TO_COPY,
}
# (operation, the scalar that leaves its first input unchanged, or a constant tensor of it).
_NEUTRAL = {
    _aten.add.Tensor: 0,
    _aten.sub.Tensor: 0,
    _aten.mul.Tensor: 1,
    _aten.div.Tensor: 1,
    _aten.mul.Scalar: 1,
    _aten.div.Scalar: 1,
    _aten.pow.Tensor_Scalar: 1,
}


def _shared_products_as_mm(graph_module: GraphModule, values: dict) -> None:
    """Replace a batched product (`bmm`) of a matrix shared by every chain with per-chain
    matrices by one matrix product for all chains. Under `vmap`, data times a parameter
    (`beta @ X.T`, `X @ beta[:, None]`, and their gradients) becomes a `bmm` over the data
    expanded to one copy per chain, which runs as many small products as there are chains;
    stacking the chains' matrices makes it one large product, at the speed of the arithmetic.
    Shared means a constant whose batch dimension has stride 0 (the data, expanded) or size 1,
    or an `expand` of one matrix; the result is the same up to the rounding of another summation
    order."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not _aten.bmm.default:
            continue
        left, right = node.args
        with graph.inserting_before(node):
            shared = _shared_matrix(graph_module, right, values)
            if shared is not None:  # A[c] @ S, for all c: (stacked A) @ S
                product = _per_chain_times_shared(graph, left, shared, values)
            else:
                shared = _shared_matrix(graph_module, left, values, transposed=True)
                if shared is None:
                    continue
                # S @ B[c] = (B[c]^T @ S^T)^T
                per_chain = _new(graph, values, _aten.transpose.int, (right, 1, 2))
                product = _per_chain_times_shared(graph, per_chain, shared, values)
                product = _new(graph, values, _aten.transpose.int, (product, 1, 2))
            if not values[product].is_contiguous():  # as bmm's result, which views may need
                product = _new(
                    graph,
                    values,
                    _aten.clone.default,
                    (product,),
                    {"memory_format": torch.contiguous_format},
                )
        node.replace_all_uses_with(product)


def _shared_matrix(graph_module, node, values: dict, transposed: bool = False):
    """The one matrix (transposed, if asked) that every chain's matrix in `node`
    (`[chains, m, k]`) is, as a node; None where the chains' matrices may differ."""
    graph, value = graph_module.graph, values[node]
    if node.op == "get_attr" and (value.stride(0) == 0 or value.shape[0] == 1):
        return _constant(graph_module, value[0].t() if transposed else value[0], values)
    if node.op == "call_function" and node.target is _aten.expand.default:
        source, (m, k) = node.args[0], value.shape[1:]
        if tuple(values[source].shape) in ((m, k), (1, m, k)):
            matrix = _new(graph, values, _aten.view.default, (source, [m, k]))
            return _new(graph, values, _aten.t.default, (matrix,)) if transposed else matrix
    return None


def _per_chain_times_shared(graph, per_chain, shared, values: dict):
    """`per_chain` (`[chains, m, k]`) times `shared` (`[k, n]`), as one `mm`."""
    chains, m, k = values[per_chain].shape
    n = values[shared].shape[1]
    stacked = _new(graph, values, _aten.reshape.default, (per_chain, [chains * m, k]))
    product = _new(graph, values, _aten.mm.default, (stacked, shared))
    return _new(graph, values, _aten.view.default, (product, [chains, m, n]))


def _new(graph, values: dict, op, args, kwargs=None):
    """A new node calling `op`, with its value."""
    node = graph.call_function(op, args, kwargs or {})
    concrete = torch.fx.node.map_arg((args, kwargs or {}), values.__getitem__)
    values[node] = op(*concrete[0], **concrete[1])
    return node


def _transposed_products(graph_module: GraphModule, values: dict) -> None:
    """Replace `mm(a, b)` transposed by `mm(b.t(), a.t())`: the product is then laid out as
    its users read it (`X @ B.T` for chains `B` is `[rows, chains]`; the elementwise work that
    follows runs along rows, chain by chain)."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or not _is_transpose(node):
            continue
        product = node.args[0]
        if product.op != "call_function" or product.target is not _aten.mm.default:
            continue
        a, b = product.args
        with graph.inserting_before(node):
            left, right = _transposed(graph_module, b, values), _transposed(graph_module, a, values)
            node.replace_all_uses_with(_new(graph, values, _aten.mm.default, (left, right)))


def _is_transpose(node: Node) -> bool:
    if node.target is _aten.t.default:
        return True
    return node.target is _aten.permute.default and list(node.args[1]) == [1, 0]


def _transposed(graph_module: GraphModule, node: Node, values: dict) -> Node:
    if node.op == "call_function" and _is_transpose(node):
        return node.args[0]
    if node.op == "get_attr":
        return _constant(graph_module, values[node].t(), values)
    return _new(graph_module.graph, values, _aten.t.default, (node,))


def _constant(graph_module: GraphModule, value: torch.Tensor, values: dict) -> Node:
    """A new constant node (inserted where the graph is inserting)."""
    name = f"_rewritten_{len(values)}"
    graph_module.register_buffer(name, value)
    node = graph_module.graph.get_attr(name)
    values[node] = value
    return node


def _elementwise_before_broadcast(graph_module: GraphModule, values: dict) -> None:
    """Compute an elementwise operation whose tensor inputs are all broadcasts (a per-chain
    scale expanded over the data: `log(sigma)` for every row) on the inputs before the
    broadcast, and broadcast its result: the same numbers (to the last bit, in which vectorised
    and scalar math may differ), computed once per chain instead of once per row. Constants
    that repeat along a dimension (-1 for every row) are read as one value along it."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        if not _is_op(node) or _is_random(node) or not is_pointwise(node.target):
            continue
        out = values[node]
        if not isinstance(out, torch.Tensor) or node.kwargs or out.ndim == 0:
            continue
        with graph.inserting_before(node):
            args = [
                _compact(graph_module, a, out.ndim, values) if isinstance(a, Node) else a
                for a in node.args
            ]
            if None in args:
                continue
            if all(a is b for a, b in zip(args, node.args, strict=True)):
                continue
            small = _new(graph, values, node.target, tuple(args))
            if values[small].dtype != out.dtype:
                continue
            if values[small].shape != out.shape:
                small = _new(graph, values, _aten.expand.default, (small, list(out.shape)))
            node.replace_all_uses_with(small)


def _compact(graph_module: GraphModule, node: Node, ndim: int, values: dict):
    """`node`'s value with `ndim` dimensions, of size 1 where it is a broadcast: the source of
    an `expand`, or a constant kept once along the dimensions it repeats along; None for a
    non-tensor."""
    value = values[node]
    if not isinstance(value, torch.Tensor):
        return None
    if value.ndim < ndim:  # broadcast as it is
        return node
    if node.op == "call_function" and node.target is _aten.expand.default:
        return _with_ndim(graph_module, node.args[0], ndim, values)
    if node.op == "get_attr":
        small = value
        for dim in range(ndim):
            first = small.narrow(dim, 0, 1)
            if small.shape[dim] > 1 and bool(
                ((small == first) | (small.isnan() & first.isnan())).all()
            ):
                small = first
        if small.shape != value.shape:
            return _constant(graph_module, small.contiguous(), values)
    return node


# ----- fewer passes over the data: scalings folded, sums taken before broadcasts

_SCALINGS = {_aten.mul.Tensor, _aten.mul.Scalar, _aten.div.Tensor, _aten.div.Scalar}
_SHIFTS = {_aten.add.Tensor: 1, _aten.sub.Tensor: -1}


def _scaling(graph_module: GraphModule, node: Node, values: dict):
    """`node` as `(base, factor)` with `node = base * factor`, where `factor` (a number, or a
    node of `base`'s number of dimensions) has fewer elements than `node`: a per-chain scale
    applied to the data. None for anything else."""
    if not _is_op(node) or node.kwargs or not _floating(values[node]):
        return None
    out = values[node]
    if node.target is _aten.neg.default:
        return node.args[0], -1.0
    if node.target not in _SCALINGS or len(node.args) != 2:
        return None
    a, b = node.args
    divide = node.target in (_aten.div.Tensor, _aten.div.Scalar)
    for base, factor in ((a, b), (b, a)) if not divide else ((a, b),):
        if not isinstance(base, Node) or values[base].shape != out.shape:
            continue
        if _is_number(factor):
            return base, (1.0 / factor if divide else float(factor))
        small = _broadcast_view(graph_module, factor, out.ndim, values)
        if small is None or values[small].numel() >= out.numel():
            continue
        if divide:
            small = _new(graph_module.graph, values, _aten.reciprocal.default, (small,))
        return base, small
    return None


def _broadcast_view(graph_module: GraphModule, node, ndim: int, values: dict):
    """`node` viewed with `ndim` dimensions, of size 1 where it is broadcast; None for a
    non-tensor or another dtype than floating point."""
    if not isinstance(node, Node) or not _floating(values[node]):
        return None
    return _with_ndim(graph_module, _compact(graph_module, node, ndim, values), ndim, values)


def _with_ndim(graph_module: GraphModule, node: Node, ndim: int, values: dict) -> Node:
    """`node` viewed with `ndim` dimensions, leading ones of size 1 added (as broadcasting
    reads it)."""
    shape = values[node].shape
    if len(shape) == ndim:
        return node
    return _new(
        graph_module.graph, values, _aten.view.default, (node, [1] * (ndim - len(shape)) + [*shape])
    )


def _floating(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _times(graph, values: dict, a, b):
    """a * b for numbers and nodes."""
    if not isinstance(a, Node) and not isinstance(b, Node):
        return a * b
    if not isinstance(a, Node):
        a, b = b, a
    return _new(graph, values, _aten.mul.Tensor, (a, b))


def _scalings_folded(graph_module: GraphModule, values: dict) -> None:
    """Replace a scaling of a scaling of the data (`-(2 * (r * s))`, `x / (2 sigma^2) * g`,
    with per-chain `s`, `sigma`, `g`) by one: `r * (-2 * s)`, the factors multiplied on their
    small tensors: one pass over the data instead of several (where the inner result has no
    other use). The same numbers up to rounding."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        if not node.users or not _large(values.get(node)):
            continue
        with graph.inserting_before(node):
            folded = _scalings_of_scaling(graph_module, node, values)
        if folded is not None:
            node.replace_all_uses_with(folded)
        graph.eliminate_dead_code()


def _scalings_of_scaling(graph_module: GraphModule, node: Node, values: dict):
    """`node`, a scaling of a scaling used nowhere else, as one scaling; None otherwise."""
    outer = _scaling(graph_module, node, values)
    if outer is None or len(outer[0].users) != 1:
        return None
    inner = _scaling(graph_module, outer[0], values)
    if inner is None:
        return None
    graph = graph_module.graph
    folded = _times(graph, values, inner[0], _times(graph, values, inner[1], outer[1]))
    if values[folded].shape != values[node].shape or values[folded].dtype != values[node].dtype:
        return None
    return folded


# Elements below which a pass over a tensor costs about what the small operations that save it
# cost (a few microseconds each, on the CPU): smaller tensors are left as traced.
LARGE = 4096


def _large(value) -> bool:
    return isinstance(value, torch.Tensor) and value.numel() >= LARGE


def _sums_of_broadcasts(graph_module: GraphModule, values: dict) -> None:
    """Sum before shifting or scaling by per-chain values: `sum(x - c)` over rows is
    `sum(x) - rows * c`, `sum(x * s)` is `sum(x) * s`, for `c`, `s` the same along the summed
    dimensions. A log likelihood's `sum(-(y - mu)^2 / (2 sigma^2) - log(sigma) - 0.919)` and
    the gradient terms of `sigma` then pass over the data once, in one `sum` they share. The
    same numbers up to rounding (the tracer compares the result with the model's own)."""
    graph = graph_module.graph
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target is not _aten.sum.dim_IntList:
                continue
            with graph.inserting_before(node):
                moved = _sum_moved_in(graph_module, node, values)
            if moved is not None:
                node.replace_all_uses_with(moved)
                graph.erase_node(node)
                changed = True
        graph.eliminate_dead_code()


def _sum_moved_in(graph_module: GraphModule, node: Node, values: dict):
    """`node` (a sum over some dimensions) with the sum taken before its input's last shift
    or scaling by values constant along the summed dimensions; None where there is none."""
    if node.kwargs or len(node.args) < 2 or not _floating(values[node]):
        return None
    x, dims = node.args[0], node.args[1]
    keepdim = node.args[2] if len(node.args) > 2 else False
    if not isinstance(x, Node) or not dims or not _floating(values[x]) or not _large(values[x]):
        return None
    graph, big = graph_module.graph, values[x]
    dims = sorted(d % big.ndim for d in dims)
    count = math.prod(big.shape[d] for d in dims)

    def summed(n):
        return _new(graph, values, _aten.sum.dim_IntList, (n, dims, keepdim))

    def constant_along(term):
        """`term` summed over `dims` (`count` times it), or None where it varies along them."""
        if _is_number(term):
            return term * count
        small = _broadcast_view(graph_module, term, big.ndim, values)
        if small is None or any(values[small].shape[d] != 1 for d in dims):
            return None
        return _times(graph, values, summed(small), float(count))

    result = None
    scaling = _scaling(graph_module, x, values)
    if scaling is not None:
        base, factor = scaling
        if isinstance(factor, Node):
            if any(values[factor].shape[d] != 1 for d in dims):
                return None
            factor = summed(factor)  # of size 1 along the summed dimensions: the same values
        result = _times(graph, values, summed(base), factor)
    elif _is_op(x) and x.target in _SHIFTS and len(x.args) == 2 and not x.kwargs:
        a, b = x.args
        sign = _SHIFTS[x.target]
        if isinstance(a, Node) and values[a].shape == big.shape:
            shift = constant_along(b)
            if shift is not None:
                shift = _times(graph, values, shift, float(sign))
                result = _new(graph, values, _aten.add.Tensor, (summed(a), shift))
        if result is None and isinstance(b, Node) and values[b].shape == big.shape:
            shift = constant_along(a)
            if shift is not None:
                part = (
                    summed(b) if sign > 0 else _new(graph, values, _aten.neg.default, (summed(b),))
                )
                result = _new(graph, values, _aten.add.Tensor, (part, shift))
    if result is None or not isinstance(result, Node):
        return None
    out = values[node]
    if values[result].shape != out.shape or values[result].dtype != out.dtype:
        return None
    return result


# ----- fewer small operations: each costs 1-7 us of dispatch whatever its size

_VIEWS = {
    _aten.view.default,
    UNSAFE_VIEW,
    _aten.reshape.default,
    _aten.unsqueeze.default,
    _aten.squeeze.default,
    _aten.squeeze.dim,
    _aten.squeeze.dims,
}


def _sums_of_one(graph_module: GraphModule, values: dict) -> None:
    """Replace a sum over dimensions of size 1 (a per-chain term of one element, summed as a
    log density is) by a view: the same values without arithmetic."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        if not _is_op(node) or node.target is not _aten.sum.dim_IntList or node.kwargs:
            continue
        x, dims = node.args[0], node.args[1] if len(node.args) > 1 else None
        if not isinstance(x, Node) or not values[x].is_contiguous() or not dims:
            continue
        if any(values[x].shape[d] != 1 for d in dims):
            continue
        with graph.inserting_before(node):
            view = _new(graph, values, _aten.view.default, (x, list(values[node].shape)))
        if _identical(values[view], values[node]):
            node.replace_all_uses_with(view)


def _views_of_views(graph_module: GraphModule, values: dict) -> None:
    """Replace a view of a view of a contiguous tensor (`x.unsqueeze(1).view(4, 24)`, which
    `vmap` leaves around products) by one `view` of that tensor; a view back to its shape is
    then dropped as an identity. The same values, no arithmetic."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        if not _is_view(node) or not _is_view(node.args[0]):
            continue
        source = node.args[0]
        while _is_view(source):
            source = source.args[0]
        if not (values[source].is_contiguous() and values[node].is_contiguous()):
            continue
        with graph.inserting_before(node):
            view = _new(graph, values, _aten.view.default, (source, list(values[node].shape)))
        node.replace_all_uses_with(view)


def _is_view(node) -> bool:
    return (
        isinstance(node, Node)
        and _is_op(node)
        and node.target in _VIEWS
        and isinstance(node.args[0], Node)
    )


def _scalar_factors_folded(graph_module: GraphModule, values: dict) -> None:
    """Replace a scaling by a number of a scaling by a number (`-(2 * x) * -1.0`, as autograd
    writes the gradient of a square) by one scaling, `x * 2.0`, or by `x` itself when the
    factors cancel; a scaling by a power of two inside a product or quotient is moved out of
    it to meet the scaling around it (`-(-a * b)` is `a * b`). Only where the factors'
    product is exact and scaling commutes with rounding (a power of two: `-1`, `2`, `0.5`),
    so the values are the same to the last bit."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        outer = _number_scaling(node, values)
        if outer is None or len(outer[0].users) != 1:
            continue
        with graph.inserting_before(node):
            inner = _number_scaling(outer[0], values) or _scaling_moved_out(outer[0], values, graph)
            if inner is None or not (_power_of_two(outer[1]) or _power_of_two(inner[1])):
                continue
            folded = _scaled(graph, values, inner[0], inner[1] * outer[1])
        if _identical(values[folded], values[node]):
            node.replace_all_uses_with(folded)


def _scaling_moved_out(node: Node, values: dict, graph):
    """`node`, a product or quotient with one factor (or the dividend) scaled by a power of
    two used nowhere else, as `(the product of the unscaled, that power)`; None otherwise."""
    if not _is_op(node) or node.kwargs or len(node.args) != 2:
        return None
    if node.target not in (_aten.mul.Tensor, _aten.div.Tensor):
        return None
    a, b = node.args
    movable = (0,) if node.target is _aten.div.Tensor else (0, 1)
    for i in movable:
        inner = _number_scaling(node.args[i], values)
        if inner is None or len(node.args[i].users) != 1 or not _power_of_two(inner[1]):
            continue
        args = (inner[0], b) if i == 0 else (a, inner[0])
        if not all(isinstance(x, Node) for x in args):
            return None
        unscaled = _new(graph, values, node.target, args)
        if values[unscaled].shape != values[node].shape:
            return None
        return unscaled, inner[1]
    return None


def _scaled(graph, values: dict, node: Node, factor: float) -> Node:
    if factor == 1.0:
        return node
    if factor == -1.0:
        return _new(graph, values, _aten.neg.default, (node,))
    return _new(graph, values, _aten.mul.Tensor, (node, factor))


def _negations_absorbed(graph_module: GraphModule, values: dict) -> None:
    """Replace `x + (-y)` by `x - y` and `x - (-y)` by `x + y`, where the negation, or a
    negated factor of a product (`x + (-a) * b`), is used nowhere else: one operation fewer,
    the same values (IEEE subtraction is the addition of the negation)."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        if not _is_op(node) or node.kwargs or len(node.args) != 2:
            continue
        if node.target not in (_aten.add.Tensor, _aten.sub.Tensor):
            continue
        terms = [1] if node.target is _aten.sub.Tensor else [1, 0]
        for i in terms:
            term, other = node.args[i], node.args[1 - i]
            if not isinstance(term, Node) or not isinstance(other, Node) or len(term.users) != 1:
                continue
            with graph.inserting_before(node):
                negated = _number_scaling(term, values) or _scaling_moved_out(term, values, graph)
                if negated is None or negated[1] != -1.0:
                    continue
                op = _aten.add.Tensor if node.target is _aten.sub.Tensor else _aten.sub.Tensor
                absorbed = _new(graph, values, op, (other, negated[0]))
            if _identical(values[absorbed], values[node]):
                node.replace_all_uses_with(absorbed)
                break


def _products_of_masks(graph_module: GraphModule, values: dict) -> None:
    """Replace the product of two masks converted to numbers (`(low <= x) * (x < high)`, as
    `Uniform.log_prob` writes its support) by the conversion of their `logical_and`."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        if not _is_op(node) or node.target is not _aten.mul.Tensor or len(node.args) != 2:
            continue
        a, b = node.args
        masks = [_converted_mask(x, values) for x in (a, b)]
        if None in masks or a.kwargs != b.kwargs:
            continue
        with graph.inserting_before(node):
            both = _new(graph, values, _aten.logical_and.default, tuple(masks))
            converted = _new(graph, values, TO_COPY, (both,), dict(a.kwargs))
        if _identical(values[converted], values[node]):
            node.replace_all_uses_with(converted)


def _converted_mask(node, values: dict):
    """The boolean tensor `node` converts to another dtype, or None."""
    if not (isinstance(node, Node) and _is_op(node) and node.target is TO_COPY):
        return None
    source = node.args[0]
    if len(node.args) != 1 or not isinstance(source, Node):
        return None
    return source if values[source].dtype == torch.bool else None


def _number_scaling(node, values: dict):
    """`node` as `(base, factor)`, `node = base * factor` exactly for a number `factor`
    (`neg`, a product with a number, a division by a power of two), base and node of one
    floating layout; None for anything else."""
    if not isinstance(node, Node) or not _is_op(node) or node.kwargs:
        return None
    out = values[node]
    if not _floating(out):
        return None
    if node.target is _aten.neg.default:
        base, factor = node.args[0], -1.0
    elif node.target in _SCALINGS and len(node.args) == 2:
        base, factor = node.args
        if not _is_number(factor):
            base, factor = factor, base
        if not _is_number(factor):
            return None
        factor = float(factor)
        if node.target in (_aten.div.Tensor, _aten.div.Scalar):
            if not _power_of_two(factor):
                return None
            factor = 1.0 / factor
    else:
        return None
    if not isinstance(base, Node) or not _floating(values[base]):
        return None
    same = values[base].shape == out.shape and values[base].dtype == out.dtype
    return (base, factor) if same else None


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _power_of_two(x: float) -> bool:
    return math.isfinite(x) and x != 0 and abs(math.frexp(x)[0]) == 0.5


# Gradients of parts of the input: a zero tensor of the input's shape with one part written.
_PIECES = {_aten.slice_backward.default, _aten.select_backward.default}


def _gradient_pieces_joined(graph_module: GraphModule, values: dict) -> None:
    """Replace a sum of gradients of parts of one tensor (the gradient of `z` from each
    parameter's slice `z[:, 0:24]`, `z[:, 24]`: each a zero tensor with its part written, then
    added up) by one `cat` of the parts, gaps filled with zeros, plus the sum's other terms.
    The same values (the zeros added are dropped; checked), in one operation instead of two or
    three per parameter."""
    graph = graph_module.graph
    for node in reversed(list(graph.nodes)):
        if not _is_add(node) or any(_is_add(user) for user in node.users):
            continue  # only whole sums: the outermost addition
        terms = [(term, _piece(term)) for term in _summands(node)]
        pieces = [piece for _, piece in terms if piece is not None]
        others = [term for term, piece in terms if piece is None]
        if len(pieces) < 2 or len({(p.sizes, p.dim) for p in pieces}) != 1:
            continue
        with graph.inserting_before(node):
            joined = _joined(graph_module, pieces, values[node], values)
            for other in others if joined is not None else ():
                joined = _new(graph, values, _aten.add.Tensor, (joined, other))
        if joined is not None and _identical(values[joined], values[node]):
            node.replace_all_uses_with(joined)


def _is_add(node) -> bool:
    return (
        isinstance(node, Node)
        and _is_op(node)
        and node.target is _aten.add.Tensor
        and len(node.args) == 2
        and not node.kwargs
        and all(isinstance(a, Node) for a in node.args)
    )


def _summands(node: Node) -> list:
    """The terms of a sum written as additions of additions (used nowhere else)."""
    if not _is_add(node):
        return [node]
    terms = []
    for a in node.args:
        terms += _summands(a) if _is_add(a) and len(a.users) == 1 else [a]
    return terms


class _Piece(NamedTuple):
    part: Node  # the gradient of the part
    indexed: bool  # a part taken by an index: it lacks `dim`
    sizes: tuple  # of the whole
    dim: int
    start: int
    end: int


def _piece(node: Node) -> _Piece | None:
    """`node`, a gradient of a slice (step 1) or of an index of a tensor, as a `_Piece`."""
    if not (_is_op(node) and node.target in _PIECES) or node.kwargs:
        return None
    part, sizes, dim = node.args[0], tuple(node.args[1]), node.args[2]
    dim %= len(sizes)
    if node.target is _aten.select_backward.default:
        start = node.args[3] % sizes[dim]
        return _Piece(part, True, sizes, dim, start, start + 1)
    start, end, step = node.args[3:6]
    if step != 1:
        return None
    start = max(0, start + sizes[dim] if start < 0 else start)
    end = min(sizes[dim], end + sizes[dim] if end < 0 else end)
    return _Piece(part, False, sizes, dim, start, end)


def _joined(graph_module: GraphModule, pieces: list, like: torch.Tensor, values: dict):
    """The pieces' sum (`like` it) as one `cat` along their dimension, parts of the same range
    added first; None where parts overlap."""
    graph, sizes, dim = graph_module.graph, pieces[0].sizes, pieces[0].dim
    parts, at = [], 0

    def zeros(start, end):
        shape = [*sizes[:dim], end - start, *sizes[dim + 1 :]]
        return _constant(graph_module, like.new_zeros(shape), values)

    for start, end in sorted({(p.start, p.end) for p in pieces}):
        if start < at:
            return None
        if start > at:
            parts.append(zeros(at, start))
        same = [p for p in pieces if (p.start, p.end) == (start, end)]
        part = None
        for p in same:
            value = p.part
            if p.indexed:
                value = _new(graph, values, _aten.unsqueeze.default, (value, dim))
            part = value if part is None else _new(graph, values, _aten.add.Tensor, (part, value))
        parts.append(part)
        at = end
    if at < sizes[dim]:
        parts.append(zeros(at, sizes[dim]))
    return _new(graph, values, _aten.cat.default, (parts, dim))


def _clamp_masks(graph_module: GraphModule, values: dict) -> None:
    """Replace the gradient mask of `clamp(x, lo, hi)`, `(x >= lo) & (x <= hi)` as autograd
    writes it, by `clamp(x, lo, hi) == x`: one operation instead of three, the same mask (NaN
    is outside both)."""
    graph = graph_module.graph
    clamps = {}
    for node in list(graph.nodes):
        if _is_op(node) and node.target is _aten.clamp.default and len(node.args) == 3:
            clamps[_hashable(node.args)] = node
        if not _is_op(node) or node.target is not _aten.logical_and.default:
            continue
        bounds = {}
        for test in node.args:
            if isinstance(test, Node) and _is_op(test) and len(test.args) == 2:
                bounds[test.target] = test.args
        low, high = bounds.get(_aten.ge.Scalar), bounds.get(_aten.le.Scalar)
        if len(bounds) != 2 or low is None or high is None or low[0] is not high[0]:
            continue
        clamp = clamps.get(_hashable((low[0], low[1], high[1])))
        if clamp is None or not (_is_number(low[1]) and _is_number(high[1])):
            continue
        if low[1] > high[1]:  # clamp then gives `hi` everywhere
            continue
        with graph.inserting_before(node):
            mask = _new(graph, values, _aten.eq.Tensor, (clamp, low[0]))
        if _identical(values[mask], values[node]):
            node.replace_all_uses_with(mask)


def _sums_shared(graph_module: GraphModule, values: dict) -> None:
    """Replace a sum that repeats an earlier one but for `keepdim` (autograd sums a squared
    residual once for the log density and again, keeping its dimensions, for a gradient) by
    a view of the earlier one: one pass over the data instead of two."""
    graph = graph_module.graph
    earlier = {}
    for node in list(graph.nodes):
        if not _is_op(node) or node.target is not _aten.sum.dim_IntList or node.kwargs:
            continue
        if len(node.args) < 2 or not isinstance(node.args[0], Node):
            continue
        x, dims, ndim = node.args[0], node.args[1], values[node.args[0]].ndim
        key = (x, tuple(sorted(d % ndim for d in dims or range(ndim))))  # None, []: all
        first = earlier.setdefault(key, node)
        if first is node:
            continue
        if values[first].shape == values[node].shape:
            continue  # the same sum: `_share_repeated` shares it
        with graph.inserting_before(node):
            view = _new(graph, values, _aten.view.default, (first, list(values[node].shape)))
        if _identical(values[view], values[node]):
            node.replace_all_uses_with(view)


def _drop_identities(graph, values: dict) -> None:
    """Replace `x.view(x.shape)`, `x * 1`, `x + zeros` and the like by `x`."""
    for node in list(graph.nodes):
        if not _is_op(node) or not node.args or not isinstance(node.args[0], Node):
            continue
        source, out = values[node.args[0]], values[node]
        if not (isinstance(source, torch.Tensor) and isinstance(out, torch.Tensor)):
            continue
        if (source.shape, source.dtype, source.device) != (out.shape, out.dtype, out.device):
            continue
        if node.target in _SAME_WHEN_SAME_LAYOUT or _is_neutral(node, values):
            node.replace_all_uses_with(node.args[0])


def _is_neutral(node, values) -> bool:
    neutral = _NEUTRAL.get(node.target)
    if neutral is None or len(node.args) != 2 or node.kwargs:
        return False
    other = node.args[1]
    if isinstance(other, Node):
        if other.op != "get_attr":
            return False
        other = values[other]
        return bool((other == neutral).all())
    return isinstance(other, int | float) and other == neutral


def _share_repeated(graph) -> None:
    """Replace an operation by an earlier identical one (same op, same inputs)."""
    seen = {}
    for node in list(graph.nodes):
        if not _is_op(node) or _is_random(node):
            continue
        key = (node.target, _hashable(node.args), _hashable(node.kwargs))
        if key in seen:
            node.replace_all_uses_with(seen[key])
        else:
            seen[key] = node


def _hashable(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, *(_hashable(v) for v in value))
    if isinstance(value, torch.dtype | torch.device | torch.layout | torch.memory_format):
        return str(value)
    return value


# ----- the graph as one Python function


def to_python(graph_module: GraphModule, values: dict, what: str = "the traced function"):
    """The graph as a plain Python function: one line per operation, each calling the
    fastest binding of it (`torch.add` is cheaper to call than `torch.ops.aten.add.Tensor`),
    checked to give the traced value; a tensor is released after its last use. It raises
    `TracingError` for an input of another shape, dtype or device than the traced one (the
    graph holds constants folded for that shape)."""
    nodes = list(graph_module.graph.nodes)
    last_use = {}
    for i, node in enumerate(nodes):
        for source in node.all_input_nodes:
            last_use[source] = i
    names, scope, lines, args = {}, {}, [], []

    def bind(value):
        name = f"k{len(scope)}"
        scope[name] = value
        return name

    def render(value):
        if isinstance(value, Node):
            return names[value]
        if isinstance(value, list | tuple):
            inner = ", ".join(render(v) for v in value)
            return (
                f"[{inner}]"
                if isinstance(value, list)
                else f"({inner}{',' if len(value) == 1 else ''})"
            )
        if isinstance(value, bool | int | str) or value is None:
            return repr(value)
        if isinstance(value, float) and math.isfinite(value):
            return repr(value)
        return bind(value)

    for i, node in enumerate(nodes):
        if node.op == "output":
            lines.append(f"return {render(node.args[0])}")
            break
        name = names[node] = f"v{i}"
        if node.op == "placeholder":
            args.append(name)
            example = values[node]
            layout = (bind(example.shape), bind(example.dtype), bind(example.device))
            refuse = bind(functools.partial(_refusal, what, _layout(example)))
            lines.append(
                f"if {name}.shape != {layout[0]} or {name}.dtype != {layout[1]} "
                f"or {name}.device != {layout[2]}:"
            )
            lines.append(f"    raise {refuse}({name})")
            if example.is_contiguous():  # every result then has its traced layout (views)
                lines.append(f"{name} = {name}.contiguous()")
            continue
        if node.op == "get_attr":
            scope[name] = values[node]
            names[node] = name
            continue
        fn = bind(_fastest(node, values))
        call_args = ", ".join(render(a) for a in node.args)
        call_kwargs = "".join(f", {k}={render(v)}" for k, v in node.kwargs.items())
        if node.kwargs and not node.args:
            call_kwargs = call_kwargs[2:]
        lines.append(f"{name} = {fn}({call_args}{call_kwargs})")
        done = [
            names[s] for s in node.all_input_nodes if last_use.get(s) == i and s.op != "get_attr"
        ]
        if done:
            lines.append(f"del {', '.join(sorted(set(done)))}")
    source = f"def traced({', '.join(args)}):\n" + "".join(f"    {line}\n" for line in lines)
    exec(compile(source, "<bayeslib.tracing>", "exec"), scope)
    traced = scope["traced"]
    traced.source = source
    traced.largest_bytes = max(  # of memory an operation writes (an expand writes none)
        (v.untyped_storage().nbytes() for n, v in values.items() if _is_op(n) and _is_tensor(v)),
        default=0,
    )
    return traced


def _is_tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


def _layout(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, {t.dtype} on {t.device}"


def _refusal(what: str, traced_for: str, given: torch.Tensor) -> TracingError:
    return TracingError(
        f"{what} was traced for inputs of {traced_for} (shape-only operations were folded for "
        f"it) and is given {_layout(given)}: trace it again for these inputs (make_target)"
    )


def _fastest(node: Node, values: dict):
    """The cheapest binding of the node's operation that gives the traced value."""
    op = node.target
    if not is_aten_op(op):
        return op
    args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
    name = op_name(op)
    for candidate in (getattr(torch, name, None), getattr(torch.Tensor, name, None)):
        if candidate is None or not callable(candidate):
            continue
        try:
            if _identical(candidate(*args, **kwargs), values[node]):
                return candidate
        except Exception:
            continue
    return direct_call(op)


def _identical(a, b) -> bool:
    if isinstance(a, tuple | list):
        return (
            isinstance(b, tuple | list)
            and len(a) == len(b)
            and all(_identical(x, y) for x, y in zip(a, b, strict=True))
        )
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    same_layout = (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device)
    return same_layout and bool(((a == b) | (a.isnan() & b.isnan())).all())
