"""Every private PyTorch name the tracer (`bayeslib.tracing`) and the compiler
(`bayeslib.compiling`) use, in one place.

None of these is covered by PyTorch's compatibility promise. Each one is tested in
`tests/test_torch_compat.py` for the behaviour the tracer relies on, so that a torch release
that removes or changes one fails those tests by name instead of changing traced log densities.
"""

import logging
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

__all__ = [
    "LINALG_CHECK_ERRORS",
    "aoti_compile",
    "aoti_load",
    "TO_COPY",
    "UNSAFE_VIEW",
    "DispatchMode",
    "direct_call",
    "is_aten_op",
    "is_mutable",
    "is_pointwise",
    "is_random",
    "op_name",
    "overload_name",
    "tree_flatten",
    "tree_map",
]

_aten = torch.ops.aten

# Raises when a linear algebra routine's `info` is nonzero (`torch.linalg.cholesky` calls
# `linalg_cholesky_ex`, then this with the info tensor as its first argument).
LINALG_CHECK_ERRORS = _aten._linalg_check_errors.default
# The ATen operations that `reshape` and `.to()` issue; they return their input when nothing
# changes.
UNSAFE_VIEW = _aten._unsafe_view.default
TO_COPY = _aten._to_copy.default


class DispatchMode(TorchDispatchMode):
    """A `TorchDispatchMode` whose `__torch_dispatch__` is left as written."""

    @classmethod
    def _should_skip_dynamo(cls):
        # Nothing is compiled while recording; the default (True) wraps __torch_dispatch__ in
        # torch._dynamo's disable, whose import alone takes about a second.
        return False


def is_aten_op(target) -> bool:
    """Whether `target` is one overload of an ATen operation (`torch.ops.aten.add.Tensor`)."""
    return isinstance(target, torch._ops.OpOverload)


def op_name(op) -> str:
    """The operation's name without namespace or overload: 'add', 'mul_'."""
    return op._schema.name.split("::")[-1]


def overload_name(op) -> str:
    """The overload's name: 'Tensor' for `aten.add.Tensor`, 'default' for `aten.exp.default`."""
    return op._overloadname


def is_mutable(op) -> bool:
    """Whether the operation writes into one of its arguments (`mul_`, `copy_`, `out=`)."""
    return op._schema.is_mutable


def is_random(op) -> bool:
    """Whether the operation draws from a random number generator."""
    return torch.Tag.nondeterministic_seeded in op.tags


def is_pointwise(op) -> bool:
    """Whether the operation works element by element on broadcast inputs (`add`, `log`)."""
    return torch.Tag.pointwise in op.tags


def direct_call(op):
    """The operation's C++ entry point: the same result as `op(...)`, without its Python
    wrapper's cost."""
    return op._op


def aoti_compile(graph_module, examples, path) -> None:
    """`graph_module` (ATen operations) compiled ahead of time by Inductor for inputs laid out
    as `examples`, packaged at `path` (`bayeslib.compiling`)."""
    import torch._inductor  # about two seconds: only where something is compiled

    # Deprecations inside torch.export and Inductor, and Inductor's log lines about how it
    # runs operations it has no C++ for (linear algebra: through ATen, which is right).
    inductor_log = logging.getLogger("torch._inductor")
    level = inductor_log.level
    inductor_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(graph_module, tuple(examples), strict=False)
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    finally:
        inductor_log.setLevel(level)


def aoti_load(path, device: torch.device | None = None):
    """The package at `path` ready to run on `device`: ``loader.run(list_of_tensors) ->
    list``, on the current CUDA stream for a GPU (None: the CPU). The C++ loader, without
    `torch._inductor.aoti_load_package`'s import of Inductor; single-threaded, which is what
    lets a CUDA graph capture its kernels."""
    index = -1
    if device is not None and device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
    return torch._C._aoti.AOTIModelPackageLoader(str(path), "model", True, 1, index)
