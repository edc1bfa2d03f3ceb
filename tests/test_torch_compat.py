"""The private PyTorch names in `bayeslib.torch_compat` still exist and behave as the tracer
relies on. A failure here names what a torch release changed; `bayeslib.tracing` must be
adapted (in `torch_compat`) before that release is allowed in pyproject.toml."""

import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bayeslib import torch_compat as tc

aten = torch.ops.aten


class Calls(tc.DispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        call = [func, args, None]  # kept even when func raises
        self.calls.append(call)
        call[2] = func(*args, **(kwargs or {}))
        return call[2]


def recorded(fn, *args):
    mode = Calls()
    with mode:
        fn(*args)
    return mode.calls


def test_dispatch_mode_sees_every_aten_operation():
    x = torch.randn(3, dtype=torch.float64)
    calls = recorded(lambda x: (x.exp() + 1.0).sum(), x)
    assert [func for func, *_ in calls] == [aten.exp.default, aten.add.Tensor, aten.sum.default]


def test_the_skip_dynamo_hook_is_consulted_when_a_mode_class_is_made():
    """With the hook True (torch's default) `__torch_dispatch__` is wrapped at class creation;
    `DispatchMode` answers False and keeps it as written."""

    def dispatch(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))

    hooked = type("Hooked", (TorchDispatchMode,), {"__torch_dispatch__": dispatch})
    ours = type("Ours", (tc.DispatchMode,), {"__torch_dispatch__": dispatch})
    assert TorchDispatchMode._should_skip_dynamo() is True
    assert hooked.__dict__["__torch_dispatch__"] is not dispatch
    assert ours.__dict__["__torch_dispatch__"] is dispatch


def test_recording_does_not_import_dynamo():
    """What the hook is for: torch._dynamo (about a second to import) stays unimported while a
    `DispatchMode` records, and a default mode imports it on its first operation. In a fresh
    process that loads torch_compat.py alone (not the rest of bayeslib)."""
    code = f"""
import importlib.util, sys, torch
from torch.utils._python_dispatch import TorchDispatchMode
spec = importlib.util.spec_from_file_location("torch_compat", {tc.__file__!r})
tc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tc)

class Ours(tc.DispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {{}}))

class Default(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {{}}))

with Ours():
    torch.ones(2).exp()
print("torch._dynamo" in sys.modules)
with Default():
    torch.ones(2).exp()
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_tree_flatten_and_tree_map_walk_nested_arguments():
    a, b = torch.ones(1), torch.zeros(2)
    leaves, _ = tc.tree_flatten(((a, 2), {"k": [b, None]}))
    assert leaves[0] is a and leaves[1] == 2 and leaves[2] is b and leaves[3] is None
    mapped = tc.tree_map(lambda x: x + 1 if isinstance(x, torch.Tensor) else x, [a, (b, 3)])
    assert isinstance(mapped, list) and isinstance(mapped[1], tuple) and mapped[1][1] == 3
    assert torch.equal(mapped[1][0], torch.ones(2))


def test_is_aten_op():
    assert tc.is_aten_op(aten.add.Tensor)
    assert not tc.is_aten_op(aten.add)  # the packet of overloads
    assert not tc.is_aten_op(torch.add)


@pytest.mark.parametrize(
    ("op", "name", "overload", "mutable"),
    [
        (aten.add.Tensor, "add", "Tensor", False),
        (aten.mul_.Tensor, "mul_", "Tensor", True),
        (aten.exp.default, "exp", "default", False),
        (aten.exp.out, "exp", "out", True),
        (aten.copy_.default, "copy_", "default", True),
    ],
)
def test_schema_names_and_mutability(op, name, overload, mutable):
    assert tc.op_name(op) == name
    assert tc.overload_name(op) == overload
    assert tc.is_mutable(op) is mutable


def test_an_in_place_op_finds_its_out_of_place_twin_by_name():
    op = aten.mul_.Tensor
    twin = getattr(getattr(aten, tc.op_name(op).rstrip("_")), tc.overload_name(op))
    assert twin is aten.mul.Tensor and not tc.is_mutable(twin)


def test_is_random():
    for op in (aten.normal.Tensor_float, aten.rand_like.default, aten.bernoulli.p):
        assert tc.is_random(op)
    for op in (aten.add.Tensor, aten.exp.default, aten.linalg_cholesky_ex.default):
        assert not tc.is_random(op)


def test_is_pointwise():
    for op in (aten.add.Tensor, aten.log.default, aten.where.self, aten.pow.Tensor_Scalar):
        assert tc.is_pointwise(op)
    for op in (
        aten.sum.dim_IntList,
        aten.mm.default,
        aten.expand.default,
        aten.normal.Tensor_float,
    ):
        assert not tc.is_pointwise(op)


def test_direct_call_gives_the_op_result():
    x = torch.randn(2, 3, dtype=torch.float64)
    for op, args in [
        (aten.add.Tensor, (x, x)),
        (aten.sum.dim_IntList, (x, [1])),
        (aten.linalg_cholesky_ex.default, (torch.eye(3, dtype=torch.float64),)),
    ]:
        fast = tc.direct_call(op)
        assert callable(fast)
        got, expected = fast(*args), op(*args)
        for g, e in zip(tc.tree_flatten(got)[0], tc.tree_flatten(expected)[0], strict=True):
            assert torch.equal(g, e)


def test_linalg_check_errors_is_how_cholesky_raises():
    """`torch.linalg.cholesky` = `linalg_cholesky_ex`, then the check with its info tensor as
    the first argument; the check raises for a nonzero info and returns None otherwise."""
    K = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 2.0], [2.0, 1.0]]], dtype=torch.float64)
    mode = Calls()
    with pytest.raises(torch.linalg.LinAlgError), mode:
        torch.linalg.cholesky(K)
    (cholesky, _, (_, info)), (check, args, _) = mode.calls
    assert cholesky is aten.linalg_cholesky_ex.default and check is tc.LINALG_CHECK_ERRORS
    assert args[0] is info and info.tolist() == [0, 2]
    no_error = torch.zeros(2, dtype=torch.int32)
    assert tc.LINALG_CHECK_ERRORS(no_error, "linalg.cholesky", is_matrix=False) is None
    with pytest.raises(torch.linalg.LinAlgError, match="not positive-definite"):
        tc.LINALG_CHECK_ERRORS(info, "linalg.cholesky", is_matrix=False)


@pytest.mark.parametrize(
    "fn",
    [
        lambda K, b: torch.linalg.cholesky(K),
        lambda K, b: torch.linalg.solve(K, b),
        lambda K, b: torch.linalg.inv(K),
    ],
    ids=["cholesky", "solve", "inv"],
)
@pytest.mark.parametrize("in_dim", [0, 1])
def test_under_vmap_info_has_the_chains_on_dim_0(fn, in_dim):
    """vmap's batching rules move the vmapped dimension to the front before the routine: the
    info the check receives has one row per chain on dim 0 (what `bayeslib.tracing` assumes
    for models written for one draw), here for chains 1 and 3 failing among 4."""
    singular = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64) * -1
    K = torch.eye(2, dtype=torch.float64).repeat(4, 3, 1, 1)
    K[[1, 3], 2] = singular
    b = torch.ones(3, 2, dtype=torch.float64)
    mode = Calls()
    with mode:
        try:
            torch.func.vmap(lambda K: fn(K, b), in_dims=in_dim)(K.movedim(0, in_dim))
        except torch.linalg.LinAlgError:
            pass
    (info,) = [args[0] for func, args, _ in mode.calls if func is tc.LINALG_CHECK_ERRORS]
    assert info.shape == (4, 3)
    assert (info != 0).any(1).tolist() == [False, True, False, True]


def test_unsafe_view_and_to_copy_are_what_reshape_and_to_issue():
    x = torch.randn(2, 3, dtype=torch.float64)
    ops = [f for f, *_ in recorded(lambda x: (x.mT @ x).float(), x)]
    assert tc.TO_COPY in ops
    ops = [f for f, *_ in recorded(lambda x: torch.matmul(x, torch.ones(2, 3, 4)), x.float())]
    assert tc.UNSAFE_VIEW in ops


def test_aoti_compiles_a_graph_of_aten_operations_and_loads_it_without_inductor(tmp_path):
    """`aoti_compile` packages an FX graph of ATen operations (with a constant, as the
    recorder leaves the data) for inputs laid out as the examples; `aoti_load` runs it, in a
    fresh process that has not imported torch._inductor (about two seconds) and does not
    import it to load."""
    graph = torch.fx.Graph()
    x, c = graph.placeholder("x"), graph.placeholder("c")
    y = graph.call_function(aten.mul.Tensor, (x, c))
    graph.output(
        (
            graph.call_function(aten.add.Tensor, (y, 1.0)),
            graph.call_function(aten.sum.default, (y,)),
        )
    )
    module = torch.fx.GraphModule(torch.nn.Module(), graph)
    examples = [torch.randn(4, 3, dtype=torch.float64), torch.arange(3.0, dtype=torch.float64)]
    path = tmp_path / "f.pt2"
    tc.aoti_compile(module, examples, path)
    code = f"""
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("torch_compat", {tc.__file__!r})
tc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tc)
x = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3)
c = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
added, total = tc.aoti_load({str(path)!r}).run([x, c])
assert torch.allclose(added, x * c + 1) and torch.allclose(total, (x * c).sum())
print("torch._inductor" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
