"""`sample`: the driver that runs a sampler's warmup and draws over a batch of chains."""

import math
import sys
import time
import warnings
from typing import NamedTuple

import torch

from .compiling import Compiled, check_compiler
from .model import Model
from .model.starts import initial_positions, superchains_for, with_curvature
from .posterior import Posterior
from .rejections import ModelErrors, rejecting, rejection_warning
from .samplers import Adaptation, Sampler, Target, make_sampler
from .samplers.adaptation import restart_stragglers
from .samplers.graphs import Graphs
from .stacked import Stacked
from .threads import chooses_threads, work
from .tracing import make_target

# In the first half of warmup, every this many iterations, chains far below their data set's
# others restart from one of those (see `restart_stragglers`).
RESTART_INTERVAL = 25
# Seconds between progress-bar refreshes (statistics are read from the device only then).
PROGRESS_INTERVAL = 0.5


@chooses_threads(lambda a: work(a["model"], a["chains"], a["device"]))
def sample(
    model: Model,
    sampler="nuts",
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    thin: int = 1,
    seed: int = 0,
    device="cpu",
    dtype=None,
    init=None,
    superchains=None,
    progress: bool = True,
    traced: bool = True,
    cuda_graphs: bool = True,
    compile: bool = False,
    threads: int | None = None,
    **sampler_options,
) -> Posterior:
    """Draw from the posterior of `model` with `chains` chains advancing together.

    model: a `bl.Model`, or `bl.stack(models)`: many data sets of one model fitted as one
        batch, `chains` chains each, adapting per data set; the Posterior then holds every
        data set's chains (`post.datasets`, `post.dataset(r)`, `post.by_dataset(name)`).

    sampler: "nuts", "hmc", "metropolis", or a `bayeslib.samplers.Sampler` object;
        `sampler_options` go to its constructor (e.g. `target_accept=0.9`, `dense_mass=True`,
        `max_tree_depth=8`).
    warmup: adaptation iterations per chain, discarded from the draws (kept, thinned, as
        `post.warmup`). draws: draws kept per chain; each is `thin` iterations after the last.
    seed: seeds one `torch.Generator` on the sampling device, the source of all randomness:
        the same call on the same device and dtype gives the same draws, bit for bit.
    device: "cpu", "cuda", "cuda:1", or "auto" (CUDA when present).
    dtype: torch.float64 by default; torch.float32 for throughput on a GPU.
    init: "uniform" (Stan's uniform(-2, 2) in unconstrained space), "prior", "zeros", "map"
        (find the mode with `find_map`), a `MapResult` (a list of them, one per data set, for a
        stack), or {name: constrained values}. None (default): "map" for Metropolis, whose
        proposal starts from the mode's curvature, "uniform" for HMC and NUTS. From a mode,
        starts are drawn from its Laplace approximation, widened by `MODE_DISPERSION`, and the
        samplers' proposal covariance or metric starts from its covariance (where the mode has
        no usable curvature: starts within `MAP_JITTER` of it and a unit metric;
        `post.attrs["laplace_fallbacks"]` counts those data sets).
    superchains: the number of distinct starting points per data set; the chains that share
        one form a superchain, which nested R-hat (`diagnostics.rhat_nested`, for many short
        chains) compares. None: 4 when there are 16 or more chains (divisible by 4), else one
        start per chain; with a dict `init` (the user's own starts), one per chain.
    progress: a progress bar on stderr (when it is a terminal) with the acceptance rate and,
        for HMC and NUTS, divergences and the mean step size.
    traced: run the log density as a traced graph of tensor operations (`bayeslib.tracing`),
        several times faster than the model's Python code on a few chains; False runs the
        model's code on every call. A model that cannot be traced runs its code, with a warning.
    cuda_graphs: on CUDA, with a traced log density, capture each NUTS doubling and HMC
        leapfrog step as a CUDA graph on its first repeat and replay it (one launch instead of
        hundreds); the same draws as without, bit for bit. False launches every operation.
    compile: with a traced log density, compile each NUTS leaf, the join between NUTS
        sub-trees and each HMC leapfrog step together with the log density into native code
        (`bayeslib.compiling`; on the CPU 2 to 4 times faster on a few chains, no faster on
        thousands; on CUDA Triton kernels, replayed in the captured graphs). The first run
        of a model and its shapes (chains, data, dtype) compiles for 10-40 s (a C++ compiler
        is needed); later runs, other data of the same shapes included, load the libraries
        from the cache on disk (`BAYESLIB_CACHE`). The draws agree with an uncompiled run's
        to rounding (the same seed gives the same draws, compiled or not, until a rounding
        difference flips a decision), and reproduce bit for bit between compiled runs.
    threads: intra-op CPU threads for the run; None (default): chosen from the work per tensor
        operation (`bayeslib.threads`: one thread for small models), at most
        `torch.get_num_threads()`, which is restored afterwards.

    `post.attrs` records the run: its arguments, timings (`warmup_time`, `sampling_time`, and
    `compile_time`: the part of those spent compiling or loading compiled libraries), the
    sampler's options (`target_accept`, `max_tree_depth`, ... as `Sampler.options` gives
    them), and per data set the adapted `step_size` and `adapted_variances` (the diagonal of
    the metric or proposal covariance in whose units the step size is).

    An error raised by the model's code at a proposal (a Cholesky factorisation of a matrix
    that is not positive-definite, a domain error) rejects that chain's proposal, as in Stan,
    and counts as a divergence for HMC and NUTS; the other chains go on
    (`bayeslib.rejections`). `post.attrs["model_errors"]` counts the chain evaluations that
    raised, `post.attrs["model_error"]` is the first error, and one warning says so at the end.
    """
    if not isinstance(model, Model | Stacked):
        raise TypeError(f"sample needs a bl.Model or bl.stack(models), not {type(model).__name__}")
    _check_int("chains", chains, 1)
    _check_int("warmup", warmup, 0)
    _check_int("draws", draws, 1)
    _check_int("thin", thin, 1)
    _check_int("seed", seed, 0)
    superchains = superchains_for(chains, superchains, init)
    kernel = make_sampler(sampler, **sampler_options)
    if init is None:
        # A random walk started 1e4 posterior sds out (uniform(-2, 2) for a slope of 0.02 with
        # sd 0.006) does not come in within warmup: start it where its proposal is learnt.
        init = "map" if kernel.starts_from_curvature else "uniform"
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    if compile:
        if not traced:
            raise ValueError(
                "compile=True compiles the traced log density into the sampler's step: it "
                "needs traced=True (the default)"
            )
        check_compiler(device)

    model = model.to(device=device, dtype=dtype)
    datasets = model.datasets if isinstance(model, Stacked) else 1
    check_host_memory(model, kernel, chains * datasets, warmup, draws, thin)
    generator = torch.Generator(device=device).manual_seed(seed)
    start = initial_positions(model, chains, superchains, init, generator, seed, kernel.needs_grad)
    if start.covariance is None and kernel.starts_from_curvature:
        start = with_curvature(model, start, chains, seed)
    errors = ModelErrors()
    target = rejecting(make_target(model, start.z, kernel.needs_grad, traced), model, errors)
    if cuda_graphs and device.type == "cuda" and target.traced:
        target = target._replace(graphs=Graphs())
    if compile and kernel.needs_grad and target.traced:
        target = target._replace(compiled=Compiled(_compile_notice if progress else None))

    run = run_chains(
        kernel,
        target,
        start.z,
        generator,
        warmup,
        draws,
        thin,
        progress,
        groups=datasets,
        covariance=start.covariance,
    )
    attrs = {
        "model": model.name,
        "sampler": kernel.name,
        "seed": seed,
        "datasets": datasets,
        "chains": chains,
        "superchains": superchains,
        "warmup": warmup,
        "draws": draws,
        "thin": thin,
        "init": init if isinstance(init, str) else "map" if start.modes else "given",
        "initial_covariance": (
            "identity"
            if start.covariance is None or start.laplace_fallbacks == datasets
            else "laplace"
        ),
        "laplace_fallbacks": start.laplace_fallbacks,
        "restarted_chains": run.restarted_chains,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "cuda_graphs": target.graphs is not None,
        "compiled": target.compiled is not None,
        "compile_time": 0.0 if target.compiled is None else target.compiled.seconds,
        "warmup_time": run.warmup_time,
        "sampling_time": run.sampling_time,
        "step_size": run.params.step_size.reshape(datasets, -1)[:, 0].tolist(),
        "adapted_variances": _per_dataset(kernel.variances(run.params), datasets),
        **kernel.options(),
        "model_errors": errors.count,
        "model_error": errors.first,
    }
    if errors.count:
        warnings.warn(rejection_warning(model, errors), stacklevel=3)
    has_warmup = run.warmup_positions.shape[1] > 0
    return Posterior(
        draws=_constrained(model, run.positions),
        stats=run.stats,
        warmup=_constrained(model, run.warmup_positions) if has_warmup else None,
        warmup_stats=run.warmup_stats if has_warmup else None,
        attrs=attrs,
    )


def _per_dataset(value, datasets):
    """What the first chain of each data set holds (its chains share it), as lists."""
    return value.reshape(datasets, -1, *value.shape[1:])[:, 0].tolist()


class Chains(NamedTuple):
    """What `run_chains` returns: unconstrained ``positions`` ``[chains, draws, dim]`` and
    ``stats`` ``{name: [chains, draws]}`` (CPU; floats as float64), the same for the kept
    warmup iterations, the wall times in seconds, how many chains warmup restarted, and the
    sampler's tuning after warmup (``params``)."""

    positions: torch.Tensor
    stats: dict
    warmup_positions: torch.Tensor
    warmup_stats: dict
    warmup_time: float
    sampling_time: float
    restarted_chains: int = 0
    params: tuple | None = None


def run_chains(
    kernel: Sampler,
    target: Target,
    z: torch.Tensor,
    generator: torch.Generator,
    warmup: int,
    draws: int,
    thin: int = 1,
    progress: bool = False,
    groups: int = 1,
    covariance: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> Chains:
    """Run `kernel` on any batched log density from starting points `z` ``[chains, dim]``:
    `warmup` adapting iterations, then `draws * thin` iterations keeping every `thin`-th.
    Warmup states are kept (every `thin`-th) apart from the draws. `groups` data sets own
    equal, consecutive blocks of chains and adapt apart; `covariance` ``[chains, dim, dim]``
    is where the proposal covariance or metric starts (else the identity).

    Kept states go to host memory as they come (`_Recorder`): off the CPU, through a device
    buffer of `chunk_size` kept iterations (None: about `CHUNK_BYTES`); on the CPU straight
    into the result unless `chunk_size` is given."""
    chains, dim = z.shape
    state = kernel.init_state(target, z)
    started = time.perf_counter()
    params = kernel.init_params(state, covariance)
    adaptation = kernel.adaptation(warmup, dim, groups)
    adaptation_state = None
    if warmup > 0:
        params, adaptation_state = adaptation.init(generator, target, state, params)
    stat_names = ("lp", "step_size", *kernel.stat_names)
    bar = _progress_bar(progress, warmup + draws * thin)

    warmup_record = _Recorder(warmup // thin, chains, dim, stat_names, z, chunk_size)
    restarts = _Restarts(groups, warmup)
    warmup_run = _Warmup(adaptation, adaptation_state, restarts)
    state, params = _run(
        kernel, target, generator, state, params, warmup, thin, warmup_record, bar, warmup_run
    )
    _synchronize(z.device)
    warmup_time = time.perf_counter() - started

    started = time.perf_counter()
    record = _Recorder(draws, chains, dim, stat_names, z, chunk_size)
    state, params = _run(kernel, target, generator, state, params, draws * thin, thin, record, bar)
    _synchronize(z.device)
    sampling_time = time.perf_counter() - started
    if bar is not None:
        bar.close()
    positions, stats = record.result()
    warmup_positions, warmup_stats = warmup_record.result()
    return Chains(
        positions,
        stats,
        warmup_positions,
        warmup_stats,
        warmup_time,
        sampling_time,
        restarts.count,
        params,
    )


class _Restarts:
    """When and how warmup restarts stragglers (`restart_stragglers`), and how many it did."""

    def __init__(self, groups, warmup):
        self.groups, self.until, self.count = groups, warmup // 2, 0

    def __call__(self, generator, i, state):
        if i >= self.until or (i + 1) % RESTART_INTERVAL:
            return state
        state, restarted = restart_stragglers(generator, state, self.groups)
        self.count += restarted
        return state


class _Warmup(NamedTuple):
    """What warmup adds to an iteration: the sampler's adaptation, its state at the start,
    and the restarts of stragglers."""

    adaptation: Adaptation
    adaptation_state: tuple | None
    restarts: _Restarts


def _constrained(model, positions):
    """Unconstrained ``[chains, draws, dim]`` (CPU) -> {name: ``[chains, draws, *shape]``},
    constrained on the model's device about `CHUNK_BYTES` of draws at a time."""
    chains, draws, dim = positions.shape
    per_draw = chains * dim * positions.element_size()
    step = max(1, CHUNK_BYTES // max(per_draw, 1))
    out = {}
    for start in range(0, draws, step):
        part = positions[:, start : start + step]
        n = part.shape[1]
        flat = part.reshape(chains * n, dim).to(device=model.device, dtype=model.dtype)
        for name, value in model.constrain(flat).items():
            value = value.reshape(chains, n, *value.shape[1:])
            if name not in out:
                out[name] = torch.empty(
                    chains, draws, *value.shape[2:], dtype=_host_dtype(value.dtype)
                )
            out[name][:, start : start + n] = value.detach()
    return out


def _run(kernel, target, generator, state, params, iterations, thin, record, bar, warmup=None):
    """Advance all chains `iterations` times, keeping every `thin`-th state in `record`;
    during `warmup` (a `_Warmup`), adapting `params` after each. Returns the last state and
    params."""
    if bar is not None:
        bar.set_description("warmup" if warmup else "sampling")
        progress = _Progress(bar, kernel, state.logdensity)
    if warmup:
        adaptation, adaptation_state, restarts = warmup
    for i in range(iterations):
        state, info = kernel.step(generator, target, state, params)
        if warmup:
            params, adaptation_state = adaptation.update(
                generator, target, state, info, params, adaptation_state
            )
            if i == iterations - 1:
                params = adaptation.final(params, adaptation_state)
            state = restarts(generator, i, state)
        if (i + 1) % thin == 0:
            record.write((i + 1) // thin - 1, state, info, params.step_size)
        if bar is not None:
            progress.update(info, params.step_size)
    record.flush()
    if bar is not None:
        progress.flush()
    return state, params


# Bytes of kept iterations a device holds before they are copied to host memory.
CHUNK_BYTES = 64 * 2**20
_STAT_DTYPES = {"diverging": torch.bool, "tree_depth": torch.int64, "n_steps": torch.int64}


class _Recorder:
    """Kept iterations, written to preallocated host tensors in the layout of the result:
    positions ``[chains, size, dim]`` and one ``[chains, size]`` tensor per statistic (floats
    as float64). Off the CPU (or with a `chunk_size` on it), writes go to a device buffer of
    `chunk_size` iterations that is copied out whenever it fills, through pinned memory with an
    asynchronous copy on CUDA; device memory is then bounded by the chunk, not by `size`."""

    def __init__(self, size, chains, dim, stat_names, like, chunk_size=None):
        device = like.device
        shapes = {"position": (chains, dim)}
        dtypes = {"position": like.dtype}
        for name in stat_names:
            shapes[name] = (chains,)
            dtypes[name] = _STAT_DTYPES.get(name, like.dtype)
        self.host = {
            name: torch.empty(shape[0], size, *shape[1:], dtype=_host_dtype(dtypes[name]))
            for name, shape in shapes.items()
        }
        if chunk_size is None and device.type != "cpu":
            per_iteration = sum(math.prod(s) * 8 for s in shapes.values())
            chunk_size = max(1, CHUNK_BYTES // per_iteration)
        self.chunk_size = min(chunk_size, size) if chunk_size is not None else None
        self.device = device
        self.chunk = self.staging = None
        if self.chunk_size:
            self.chunk = {
                name: torch.empty(self.chunk_size, *shape, dtype=dtypes[name], device=device)
                for name, shape in shapes.items()
            }
            # On the CPU (a chunk_size given) too, so that this path runs wherever tested.
            pin = device.type == "cuda"
            self.staging = {
                name: torch.empty(self.chunk_size, *shape, dtype=dtypes[name], pin_memory=pin)
                for name, shape in shapes.items()
            }
        self.copied = None  # (first index, count, CUDA event) of a copy not yet unpacked
        self.filled = 0  # kept iterations in the chunk (they come in order)
        self.start = 0  # index in the result of the chunk's first kept iteration

    def write(self, index, state, info, step_size):
        values = {"position": state.position, "lp": state.logdensity, "step_size": step_size}
        if self.chunk is None:
            for name, buffer in self.host.items():
                buffer[:, index] = values[name] if name in values else getattr(info, name)
            return
        for name, buffer in self.chunk.items():
            buffer[self.filled] = values[name] if name in values else getattr(info, name)
        self.filled += 1
        if self.filled == self.chunk_size:
            self.flush()

    def flush(self):
        """Copy what the chunk holds out to host memory (asynchronously on CUDA: it is
        unpacked into the result at the next flush, or at `result`)."""
        if self.chunk is None or not self.filled:
            return
        self._unpack()
        n = self.filled
        for name, buffer in self.chunk.items():
            self.staging[name][:n].copy_(buffer[:n], non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
        self.copied = (self.start, n, event)
        self.start += n
        self.filled = 0

    def _unpack(self):
        if self.copied is None:
            return
        start, n, event = self.copied
        if event is not None:
            event.synchronize()
        for name, buffer in self.staging.items():
            self.host[name][:, start : start + n] = buffer[:n].transpose(0, 1)
        self.copied = None

    def result(self):
        """Positions ``[chains, size, dim]`` and statistics ``{name: [chains, size]}``."""
        self.flush()
        self._unpack()
        stats = {name: value for name, value in self.host.items() if name != "position"}
        return self.host["position"], stats


def _host_dtype(dtype):
    return torch.float64 if dtype.is_floating_point else dtype


def host_bytes(model, kernel, chains, warmup, draws, thin) -> int:
    """Host memory the kept iterations of a run take: unconstrained positions, their
    constrained values and the statistics, for the draws and the kept warmup."""
    dim = model.dim
    constrained = sum(math.prod(shape) for shape in model.param_shapes.values())
    stats = 2 + len(kernel.stat_names)  # lp, step_size: at most 8 bytes each
    per_iteration = chains * 8 * (dim + constrained + stats)
    return (warmup // thin + draws) * per_iteration


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (MemAvailable), None where unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_host_memory(model, kernel, chains, warmup, draws, thin):
    """Refuse, before any sampling, a run whose kept draws cannot fit in host memory."""
    needed = host_bytes(model, kernel, chains, warmup, draws, thin)
    available = available_memory()
    if available is not None and needed > available:
        raise ValueError(
            f"the kept draws of this run need about {needed / 2**30:.1f} GiB of host memory "
            f"({chains} chains x ({warmup} warmup // thin {thin} + {draws} draws) x "
            f"{model.dim} unconstrained dimensions, their constrained values and statistics); "
            f"{available / 2**30:.1f} GiB are available. Ask for fewer draws, thin them "
            "(thin=k keeps every k-th), or run fewer chains."
        )


def resolve_device(device) -> torch.device:
    """ "cpu", "cuda", "cuda:N" or "auto" (CUDA when present) as a torch.device; asking for a
    CUDA device that is not there is an error, never a silent fall back to the CPU."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'auto'"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was asked for, but CUDA is not available on this machine; "
                "use device='cpu', or device='auto' to take CUDA only when present"
            )
        index = resolved.index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r}: there are only {torch.cuda.device_count()} CUDA devices"
            )
        return torch.device("cuda", index)
    if resolved.type != "cpu":
        raise ValueError(f"device={device!r} is not supported; use 'cpu', 'cuda' or 'auto'")
    return resolved


def resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float64
    names = {"float64": torch.float64, "float32": torch.float32}
    resolved = names.get(dtype, dtype)
    if resolved not in (torch.float64, torch.float32):
        raise ValueError(f"dtype={dtype!r} is not supported; use torch.float64 or torch.float32")
    return resolved


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress_bar(progress, total):
    if not progress or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, file=sys.stderr, dynamic_ncols=True, leave=True)


def _compile_notice(what: str) -> None:
    """A line above the progress bar (where there is one) while `what` compiles."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        tqdm.write(
            f"compiling {what} (once per model and shapes, usually under a minute; later "
            "runs load it from the cache)",
            file=sys.stderr,
        )


class _Progress:
    """Running sums on the device, read and shown every `PROGRESS_INTERVAL` seconds."""

    def __init__(self, bar, kernel, like):
        self.bar, self.kernel = bar, kernel
        self.accept = torch.zeros_like(like)
        self.divergences = torch.zeros_like(like)
        self.count = self.pending = 0
        self.last = time.perf_counter()

    def update(self, info, step_size):
        self.step_size = step_size
        self.accept += info.acceptance_rate
        if info.diverging is not None:
            self.divergences += info.diverging
        self.count += 1
        self.pending += 1
        if time.perf_counter() - self.last >= PROGRESS_INTERVAL:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        postfix = {"accept": f"{float(self.accept.mean()) / self.count:.3f}"}
        if "diverging" in self.kernel.stat_names:
            postfix["divergences"] = int(self.divergences.sum())
            postfix["step_size"] = f"{float(self.step_size.mean()):.3g}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(self.pending)
        self.pending = 0
        self.last = time.perf_counter()


__all__ = [
    "Chains",
    "initial_positions",
    "resolve_device",
    "resolve_dtype",
    "check_host_memory",
    "run_chains",
    "sample",
]
