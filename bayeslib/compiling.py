"""A sampler's inner step, with the traced log density it calls, compiled to native code.

A NUTS leaf (a leapfrog step, the log density's gradient, the leaf's weight, the proposal
update, the U-turn check) is some two hundred tensor operations; on a few chains each costs
1-2 us of dispatch from Python, several times its arithmetic. Recorded as one graph and
simplified (`tracing.recorded`), then compiled ahead of time by Inductor (AOTInductor) into a
shared library, the leaf runs as a handful of fused loops, called from C++.

Compiling takes 10-30 s (a C++ compiler builds the library; a run's first libraries build side
by side, in child processes: `Compiled.ahead`). The library is kept on disk in
`cache_dir()`, named by a hash of everything it was compiled from (the graph, the layouts of
its inputs, torch's version, the CPU's instruction set). The data are inputs too, not
constants compiled in: a later run of the same model with data of the same shapes (another
replicate of a study, another seed) loads it in milliseconds.

On CUDA, Inductor writes the fused loops as Triton kernels; the compiled functions are called
inside the captured CUDA graphs (`bayeslib.samplers.graphs`), so a NUTS doubling replays a few
fused kernels per leaf instead of a hundred small ones.

Compiled code rounds differently from the operations run one by one (fused loops, other
orders of summation): the values agree to rounding, so a compiled run's draws match the
uncompiled run's until some accept/reject decision falls the other way. The same compiled
run gives the same draws, bit for bit.
"""

import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

from .torch_compat import aoti_compile, aoti_load
from .tracing import TracingError, recorded

CACHE_ENV = "BAYESLIB_CACHE"
LOG = logging.getLogger("bayeslib")


class CompileError(RuntimeError):
    """A sampler's step could not be compiled (no C++ compiler, or Inductor failed)."""


class Compiled:
    """One run's compiled functions, by key (the same key must always mean the same
    function); each is compiled, or loaded from the cache, on first use. `seconds`: the time
    spent compiling and loading them; `notify(what)` is called before each compilation (not
    a load from the cache)."""

    def __init__(self, notify=None):
        self.functions: dict = {}
        self.ahead_of_use: dict = {}  # key -> (its Recording, the child compiling it or None)
        self.seconds = 0.0
        self.notify = notify

    def __repr__(self) -> str:
        return f"Compiled({len(self.functions)} functions, {self.seconds:.1f} s)"

    def function(self, key, what: str, build):
        """The function compiled for `key`; on first use, ``fn, examples = build()`` is
        compiled (`compile_function`), or the compilation `ahead` started is waited for."""
        if key not in self.functions:
            started = time.perf_counter()
            if key in self.ahead_of_use:
                recording, child = self.ahead_of_use.pop(key)
                if child is not None:
                    child.wait()  # a failed child leaves no library: compiled here, below
            else:
                recording = record(*build(), what)
            self.functions[key] = _compiled(recording, what, self.notify)
            self.seconds += time.perf_counter() - started
        return self.functions[key]

    def ahead(self, key, what: str, build):
        """Start compiling the function `function(key, ...)` will give, in a child process
        (where its library is not cached), so that it compiles while this process compiles
        another: a first run's libraries build side by side."""
        if key in self.functions or key in self.ahead_of_use:
            return
        started = time.perf_counter()
        recording, child = record(*build(), what), None
        if not recording.path.exists():
            _announce(what, recording.path, self.notify)
            child = _compile_in_child(recording, what)
        self.ahead_of_use[key] = (recording, child)
        self.seconds += time.perf_counter() - started


def cache_dir() -> Path:
    """Where compiled libraries are kept: ``$BAYESLIB_CACHE/compiled``, by default
    ``~/.cache/bayeslib/compiled``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bayeslib"
    return Path(root) / "compiled"


def check_compiler(device: torch.device) -> None:
    """Raise, naming the fix, where compiling cannot work: before any long work starts."""
    if device.type not in ("cpu", "cuda"):
        raise CompileError(
            f"compile=True runs on the CPU and on CUDA (this run is on {device}): sample with "
            "compile=False"
        )
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise CompileError(
            "compile=True on CUDA needs Triton (pip install triton, the version your torch "
            "names), or sample with compile=False (captured graphs, cuda_graphs=True, still "
            "remove the launch overhead)"
        )
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        raise CompileError(
            "compile=True needs a C++ compiler (g++, or the one $CXX names) and none was found: "
            "install one (apt-get install g++) or sample with compile=False"
        )
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        writable = os.access(directory, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        raise CompileError(
            f"compile=True keeps its libraries in {directory}, which cannot be written: set "
            f"${CACHE_ENV} to a writable directory, or sample with compile=False"
        )


def compile_function(fn, examples, what: str = "the sampler's step", notify=None):
    """`fn` (tensors, and tuples of them such as NamedTuples -> the same) compiled for
    arguments laid out as `examples` (a tuple; tensors keep their shape, dtype and device).
    Loaded from `cache_dir()` when compiled before; checked against `fn` at `examples`.
    Before compiling, `what` is logged (logger "bayeslib") and passed to `notify`."""
    return _compiled(record(fn, examples, what), what, notify)


class Recording(NamedTuple):
    """A function recorded for compiling: its graph, whose constants (the data) are its first
    inputs; those inputs' values; where its library is kept; the function on flat lists of
    tensors and the structures of its arguments and results."""

    graph_module: torch.fx.GraphModule
    inputs: list  # the constants, then the flattened examples
    constants: list
    path: Path
    flat_fn: object
    in_spec: object
    out_spec: object


def record(fn, examples, what: str) -> Recording:
    """`fn` at `examples` recorded (`tracing.recorded`), its constants made inputs, and the
    path its library has in the cache."""
    flat_examples, in_spec = _flatten(tuple(examples))
    # Distinct tensors: export takes one tensor passed twice for one input of the graph.
    flat_examples = [x.detach().clone(memory_format=torch.contiguous_format) for x in flat_examples]
    arguments, out_spec = _unflattener(in_spec), None

    def flat_fn(*flat):
        nonlocal out_spec
        outputs, out_spec = _flatten(fn(*arguments(flat)))
        return tuple(outputs)

    try:
        graph_module = recorded(flat_fn, *flat_examples)
    except TracingError as error:
        raise CompileError(f"{what} could not be recorded: {error}") from error
    constants = _constants_as_inputs(graph_module)
    inputs = constants + flat_examples
    path = cache_dir() / f"{_key(graph_module, inputs)}.pt2"
    return Recording(graph_module, inputs, constants, path, flat_fn, in_spec, out_spec)


def _compiled(recording: Recording, what: str, notify=None):
    """The recorded function's library, compiled where it is not in the cache, loaded, and
    checked against the function at the recorded examples. A cached library that does not
    load or gives other values (a file cut short, a disk's error) is compiled again."""
    path = recording.path
    if path.exists():
        try:
            return _loaded(recording, what)
        except (RuntimeError, CompileError) as error:
            message = "the cached library %s of %s is unusable (%s): compiling it again"
            LOG.warning(message, path, what, error)
            path.unlink(missing_ok=True)
    _announce(what, path, notify)
    _build(recording.graph_module, recording.inputs, path, what)
    return _loaded(recording, what)


def _loaded(recording: Recording, what: str):
    """The library at the recording's path, loaded, and checked against the function at the
    recorded examples."""
    graph_module, inputs, constants, path, flat_fn, in_spec, out_spec = recording
    flat_examples = inputs[len(constants) :]
    run = aoti_load(path, flat_examples[0].device).run
    flatten, unflatten = _flattener(in_spec), _unflattener(out_spec)

    def compiled(*args):
        return unflatten(run(constants + flatten(args)))

    examples = _unflattener(in_spec)(flat_examples)
    _check(flat_fn(*flat_examples), _flatten(compiled(*examples))[0], what)
    compiled.path = path
    return compiled


def _announce(what: str, path: Path, notify) -> None:
    LOG.info("compiling %s into %s (the first run of this model and shapes)", what, path)
    if notify is not None:
        notify(what)


def _compile_in_child(recording: Recording, what: str) -> subprocess.Popen | None:
    """A child process compiling `recording`'s library into the cache (`_build`); None where
    none could be started (no interpreter to start, no room for its job file). Its output is
    dropped: should it fail, compiling in this process raises the error."""
    path = recording.path
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, job = tempfile.mkstemp(dir=path.parent, prefix=".job-", suffix=".pt")
    os.close(handle)
    package_root = str(Path(__file__).resolve().parent.parent)
    python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    code = "import sys; from bayeslib.compiling import _child; _child(*sys.argv[1:])"
    try:
        torch.save({"graph_module": recording.graph_module, "inputs": recording.inputs}, job)
        return subprocess.Popen(
            [sys.executable, "-c", code, job, str(path), what],
            env={**os.environ, "PYTHONPATH": python_path},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except (OSError, RuntimeError):
        Path(job).unlink(missing_ok=True)
        return None


def _child(job: str, path: str, what: str) -> None:
    """A child process's work (`_compile_in_child`): the saved graph compiled into `path`."""
    try:
        saved = torch.load(job, weights_only=False)
    finally:
        Path(job).unlink(missing_ok=True)
    _build(saved["graph_module"], saved["inputs"], Path(path), what)


def _flatten(value) -> tuple[list, object]:
    """The tensors of nested tuples (NamedTuples too) and dicts, and the structure to rebuild
    them."""
    if isinstance(value, torch.Tensor):
        return [value], None
    if isinstance(value, dict):
        flat, spec = _flatten(tuple(value.values()))
        return flat, (dict, (tuple(value), spec))
    flat, specs = [], []
    for item in value:
        items, spec = _flatten(item)
        flat += items
        specs.append(spec)
    return flat, (type(value), specs)


def _flattener(spec):
    """`_flatten` for values of structure `spec`, as one generated expression (`_flatten`'s
    recursion costs more per call than the compiled leaf's arithmetic). Tensors come out
    contiguous, as the library reads them."""
    paths = []

    def walk(spec, path):
        if spec is None:
            paths.append(f"{path}.contiguous()")
        elif spec[0] is dict:
            keys, (_, specs) = spec[1]
            for key, item in zip(keys, specs, strict=True):
                walk(item, f"{path}[{key!r}]")
        else:
            for i, item in enumerate(spec[1]):
                walk(item, f"{path}[{i}]")

    walk(spec, "args")
    return eval(f"lambda args: [{', '.join(paths)}]")


def _unflattener(spec):
    """`_flatten` undone: a list of tensors into structure `spec`, by one generated
    expression."""
    scope, count = {}, iter(range(1 << 30))

    def build(spec) -> str:
        if spec is None:
            return f"out[{next(count)}]"
        kind, specs = spec
        if kind is dict:
            keys, (_, specs) = specs
            pairs = zip(keys, specs, strict=True)
            return "{" + ", ".join(f"{key!r}: {build(item)}" for key, item in pairs) + "}"
        items = ", ".join(build(item) for item in specs)
        if hasattr(kind, "_fields"):  # a NamedTuple
            return f"{scope.setdefault(kind, f'kind{len(scope)}')}({items})"
        return f"[{items}]" if kind is list else f"({items},)"

    expression = build(spec)
    return eval(f"lambda out: {expression}", {name: kind for kind, name in scope.items()})


def _constants_as_inputs(graph_module) -> list:
    """The graph's constants (the data, and what was computed from it alone) made its first
    inputs, in place; returns their values (contiguous). A library compiled for one data set
    then serves any other of the same shapes: a study's replicates share one."""
    graph = graph_module.graph
    first = next(iter(graph.nodes))
    values = []
    for node in list(graph.nodes):
        if node.op != "get_attr":
            continue
        with graph.inserting_before(first):
            placeholder = graph.placeholder(f"constant_{len(values)}")
        node.replace_all_uses_with(placeholder)
        values.append(getattr(graph_module, node.target).detach().contiguous())
        graph.erase_node(node)
        delattr(graph_module, node.target)
    graph.lint()
    graph_module.recompile()
    return values


def _key(graph_module, inputs) -> str:
    """A hash of everything the library is compiled from: the graph and the layout of its
    inputs (not their values), torch's version, the machine and GPU."""
    digest = hashlib.sha256()
    for part in (
        torch.__version__,
        platform.machine(),
        torch.backends.cpu.get_cpu_capability(),
        *sorted({_device_identity(x.device) for x in inputs}),
        graph_module.code,
        *(f"{x.shape}{x.stride()}{x.dtype}{x.device}" for x in inputs),
    ):
        digest.update(str(part).encode())
    return digest.hexdigest()[:32]


def _device_identity(device: torch.device) -> str:
    """What a library's kernels depend on about the device: a GPU's model and CUDA version
    (Triton compiles for one architecture)."""
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device)
    return f"{name} sm{torch.cuda.get_device_capability(device)} cuda {torch.version.cuda}"


def _build(graph_module, examples, path: Path, what: str) -> None:
    """Compile `graph_module` into the library at `path`: written under a temporary name and
    renamed, so that runs compiling the same library side by side never read half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=".pt2")
    os.close(handle)
    try:
        aoti_compile(graph_module, examples, partial)
        os.chmod(partial, 0o644)  # mkstemp's 0600 would keep it from others sharing the cache
        os.replace(partial, path)
    except Exception as error:
        raise CompileError(
            f"compiling {what} failed ({type(error).__name__}: {error}); sample with "
            "compile=False to run it uncompiled"
        ) from error
    finally:
        Path(partial).unlink(missing_ok=True)


def _check(expected, got, what: str) -> None:
    """The library gives `fn`'s values at the examples, to rounding: within the square root
    of the dtype's epsilon, relative to each output's largest value (a sum over thousands of
    rows, in another order, cancels to rounding errors that large; a wrong library is off by
    far more)."""
    for e, g in zip(expected, got, strict=True):
        if e.shape != g.shape:
            same = False
        elif e.dtype.is_floating_point:
            tol = torch.finfo(e.dtype).eps ** 0.5
            scale = float(e.nan_to_num(0.0, 0.0, 0.0).abs().max()) if e.numel() else 0.0
            same = torch.allclose(e, g, rtol=tol, atol=tol * max(scale, 1.0), equal_nan=True)
        else:
            same = torch.equal(e, g)
        if not same:
            raise CompileError(f"compiled {what} differs from its uncompiled code")
