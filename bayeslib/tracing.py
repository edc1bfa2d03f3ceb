"""Tracing a model's log density (and its gradient) into one flat graph of tensor operations.

A model's Python code (its `Draw`, the distributions it builds, `vmap`'s batching rules,
autograd's bookkeeping) costs far more per call than the arithmetic on a handful of chains.
Tracing runs that code once, with `make_fx`, and records the ATen operations it issues,
forward and backward. Operations that touch only the data and constants are then computed
once (constant folding), repeated ones are shared, and unused ones dropped. The graph is
replayed on every call. It is specialised to one batch shape, dtype and device, which is what
a sampler uses for its whole run.

Code whose control flow depends on parameter values cannot be traced (`make_fx` refuses
it); the caller then keeps the model's own code.
"""

import math
import warnings

import torch
from torch.fx import GraphModule, Node
from torch.fx.experimental.proxy_tensor import make_fx

from .samplers.base import Target


class TracingError(RuntimeError):
    """The model's log density could not be traced, or its trace disagrees with the model."""


def trace(fn, *examples: torch.Tensor):
    """`fn` (tensors -> tensors) traced at `examples`, simplified, and written back as one
    straight-line Python function of tensor operations."""
    try:
        # Functionalised: in-place writes become plain operations, so folding is safe.
        graph_module = make_fx(torch.func.functionalize(fn))(*examples)
    except Exception as error:
        raise TracingError(f"{type(error).__name__}: {error}") from error
    values = _record(graph_module, examples)
    simplify(graph_module, values)
    return to_python(graph_module, values)


def trace_logdensity(model, z: torch.Tensor, grad: bool = True, jacobian: bool = True):
    """`model`'s log density at batches shaped like `z` (`[chains, dim]`), traced: a callable
    `z -> (lp, grad)` (or `z -> lp` with `grad=False`) equal to `model.logdensity_and_grad`
    (`model.logdensity`). Raises `TracingError` when the model cannot be traced or the trace
    does not reproduce the model at `z`."""

    def logdensity(z):
        return model.logdensity(z, jacobian)

    def summed(z):
        lp = logdensity(z)
        return lp.sum(), lp

    grad_and_value = torch.func.grad_and_value(summed, has_aux=True)

    def logdensity_and_grad(z):
        g, (_, lp) = grad_and_value(z)
        return lp, g

    eager = model.logdensity_and_grad if grad else model.logdensity
    traced = trace(logdensity_and_grad if grad else logdensity, z)
    _check_same(eager, traced, z, jacobian)
    return traced


def _check_same(eager, traced, z, jacobian):
    kwargs = {} if jacobian else {"jacobian": False}
    expected, got = eager(z, **kwargs), traced(z)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
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
            "Python code on every call, which is slower. Control flow on parameter values "
            "(if, .item()) prevents tracing: use torch.where instead.",
            stacklevel=3,
        )
        return eager
    if grad:
        return eager._replace(logdensity_and_grad=fast)
    return eager._replace(logdensity=fast)


# ----- graph simplification


def simplify(graph_module: GraphModule, values: dict) -> None:
    """Fold constants, drop operations that return their input, share repeated operations and
    drop unused ones, in place. `values`: every node's value at the traced inputs."""
    graph = graph_module.graph
    _fold_constants(graph_module, values)
    _drop_identities(graph, values)
    _share_repeated(graph)
    graph.eliminate_dead_code()
    graph.lint()
    graph_module.recompile()


class _Recorder(torch.fx.Interpreter):
    def run_node(self, node):
        value = super().run_node(node)
        self.values[node] = value
        return value


def _record(graph_module, examples) -> dict:
    recorder = _Recorder(graph_module)
    recorder.values = {}
    recorder.run(*examples)
    return recorder.values


def _is_op(node: Node) -> bool:
    return node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)


def _is_random(node: Node) -> bool:
    return torch.Tag.nondeterministic_seeded in node.target.tags


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
    _aten._unsafe_view.default,
    _aten.expand.default,
    _aten.alias.default,
    _aten.clone.default,
    _aten._to_copy.default,
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


def to_python(graph_module: GraphModule, values: dict):
    """The graph as a plain Python function: one line per operation, each calling the
    fastest binding of it (`torch.add` is cheaper to call than `torch.ops.aten.add.Tensor`),
    checked to give the traced value; a tensor is released after its last use."""
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
    return traced


def _fastest(node: Node, values: dict):
    """The cheapest binding of the node's operation that gives the traced value."""
    op = node.target
    if not isinstance(op, torch._ops.OpOverload):
        return op
    args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
    name = op._schema.name.split("::")[-1]
    for candidate in (getattr(torch, name, None), getattr(torch.Tensor, name, None)):
        if candidate is None or not callable(candidate):
            continue
        try:
            if _identical(candidate(*args, **kwargs), values[node]):
                return candidate
        except Exception:
            continue
    return op._op


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
