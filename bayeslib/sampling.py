"""`sample`: the driver that runs a sampler's warmup and draws over a batch of chains."""

import sys
import time
from typing import NamedTuple

import torch

from .inference import find_map
from .model import Model
from .posterior import Posterior
from .samplers import Sampler, Target, make_sampler
from .tracing import make_target

# Fresh starts tried for chains whose random start has a non-finite log density (as Stan).
INIT_ATTEMPTS = 100
# How far each chain starts from the mode with init="map" (uniform, unconstrained space).
MAP_JITTER = 0.1
# Seconds between progress-bar refreshes (statistics are read from the device only then).
PROGRESS_INTERVAL = 0.5


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
    init="uniform",
    progress: bool = True,
    traced: bool = True,
    **sampler_options,
) -> Posterior:
    """Draw from the posterior of `model` with `chains` chains advancing together.

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
        (the posterior mode, jittered per chain), or {name: constrained values}.
    progress: a progress bar on stderr (when it is a terminal) with the acceptance rate and,
        for HMC and NUTS, divergences and the mean step size.
    traced: run the log density as a traced graph of tensor operations (`bayeslib.tracing`),
        several times faster than the model's Python code on a few chains; False runs the
        model's code on every call. A model that cannot be traced runs its code, with a warning.
    """
    if not isinstance(model, Model):
        raise TypeError(f"sample needs a bl.Model, not {type(model).__name__}")
    _check_int("chains", chains, 1)
    _check_int("warmup", warmup, 0)
    _check_int("draws", draws, 1)
    _check_int("thin", thin, 1)
    _check_int("seed", seed, 0)
    kernel = make_sampler(sampler, **sampler_options)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)

    model = model.to(device=device, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    z = initial_positions(model, chains, init, generator, seed, kernel.needs_grad)
    target = make_target(model, z, kernel.needs_grad, traced)

    run = run_chains(kernel, target, z, generator, warmup, draws, thin, progress)
    attrs = {
        "model": model.name,
        "sampler": kernel.name,
        "seed": seed,
        "chains": chains,
        "warmup": warmup,
        "draws": draws,
        "thin": thin,
        "init": init if isinstance(init, str) else "given",
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "warmup_time": run.warmup_time,
        "sampling_time": run.sampling_time,
        "step_size": kernel.step_size.tolist(),
    }
    has_warmup = run.warmup_positions.shape[1] > 0
    return Posterior(
        draws=_constrained(model, run.positions),
        stats=run.stats,
        warmup=_constrained(model, run.warmup_positions) if has_warmup else None,
        warmup_stats=run.warmup_stats if has_warmup else None,
        attrs=attrs,
    )


class Chains(NamedTuple):
    """What `run_chains` returns: unconstrained ``positions`` ``[chains, draws, dim]`` and
    ``stats`` ``{name: [chains, draws]}`` (CPU; floats as float64), the same for the kept
    warmup iterations, and the wall times in seconds."""

    positions: torch.Tensor
    stats: dict
    warmup_positions: torch.Tensor
    warmup_stats: dict
    warmup_time: float
    sampling_time: float


def run_chains(
    kernel: Sampler,
    target: Target,
    z: torch.Tensor,
    generator: torch.Generator,
    warmup: int,
    draws: int,
    thin: int = 1,
    progress: bool = False,
) -> Chains:
    """Run `kernel` on any batched log density from starting points `z` ``[chains, dim]``:
    `warmup` adapting iterations, then `draws * thin` iterations keeping every `thin`-th.
    Warmup states are kept (every `thin`-th) apart from the draws."""
    chains, dim = z.shape
    state = kernel.init_state(target, z)
    started = time.perf_counter()
    kernel.setup(target, state, generator, warmup)
    stat_names = ("lp", "step_size", *kernel.stat_names)
    bar = _progress_bar(progress, warmup + draws * thin)

    warmup_buffers = _Buffers(warmup // thin, chains, dim, stat_names, z)
    state = _run(kernel, generator, state, warmup, thin, warmup_buffers, bar, adapt=True)
    _synchronize(z.device)
    warmup_time = time.perf_counter() - started

    started = time.perf_counter()
    buffers = _Buffers(draws, chains, dim, stat_names, z)
    state = _run(kernel, generator, state, draws * thin, thin, buffers, bar, adapt=False)
    _synchronize(z.device)
    sampling_time = time.perf_counter() - started
    if bar is not None:
        bar.close()
    return Chains(
        _to_cpu(buffers.z.transpose(0, 1)),
        buffers.stats_by_chain(),
        _to_cpu(warmup_buffers.z.transpose(0, 1)),
        warmup_buffers.stats_by_chain(),
        warmup_time,
        sampling_time,
    )


def _constrained(model, positions):
    """Unconstrained ``[chains, draws, dim]`` (CPU) -> {name: ``[chains, draws, *shape]``}."""
    chains, draws, dim = positions.shape
    flat = positions.reshape(chains * draws, dim).to(device=model.device, dtype=model.dtype)
    values = model.constrain(flat)
    return {
        name: _to_cpu(value.reshape(chains, draws, *value.shape[1:]))
        for name, value in values.items()
    }


def _run(kernel: Sampler, generator, state, iterations, thin, buffers, bar, adapt):
    """Advance all chains `iterations` times, keeping every `thin`-th state in `buffers`."""
    if bar is not None:
        bar.set_description("warmup" if adapt else "sampling")
        progress = _Progress(bar, kernel, state.logdensity)
    for i in range(iterations):
        state, info = kernel.step(generator, state)
        if adapt:
            kernel.adapt(generator, i, state, info)
        if (i + 1) % thin == 0:
            buffers.write((i + 1) // thin - 1, state, info, kernel.step_size)
        if bar is not None:
            progress.update(info)
    if bar is not None:
        progress.flush()
    return state


class _Buffers:
    """Preallocated on the sampling device: positions ``[draws, chains, dim]`` and one
    ``[draws, chains]`` tensor per statistic."""

    def __init__(self, size, chains, dim, stat_names, like):
        self.size = size
        self.z = like.new_empty(size, chains, dim)
        self.stats = {}
        for name in stat_names:
            dtype = {"diverging": torch.bool, "tree_depth": torch.int64, "n_steps": torch.int64}
            self.stats[name] = torch.empty(
                size, chains, dtype=dtype.get(name, like.dtype), device=like.device
            )

    def write(self, index, state, info, step_size):
        self.z[index] = state.position
        for name, buffer in self.stats.items():
            if name == "lp":
                buffer[index] = state.logdensity
            elif name == "step_size":
                buffer[index] = step_size
            else:
                buffer[index] = getattr(info, name)

    def stats_by_chain(self):
        return {name: _to_cpu(value.transpose(0, 1)) for name, value in self.stats.items()}


def _to_cpu(tensor):
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    return tensor.contiguous()


def initial_positions(model, chains, init, generator, seed, needs_grad):
    """Starting points ``[chains, dim]`` with a finite log density (and gradient); random
    starts that fail are drawn again, up to `INIT_ATTEMPTS` times."""
    if isinstance(init, str) and init == "map":
        mode = find_map(model, seed=seed).z.to(device=model.device, dtype=model.dtype)
        jitter = torch.rand(
            chains, model.dim, generator=generator, dtype=model.dtype, device=model.device
        )
        return mode + MAP_JITTER * (2 * jitter - 1)
    z = model.init_z(chains, init, generator)
    random_start = isinstance(init, str) and init in ("uniform", "prior")
    for _ in range(INIT_ATTEMPTS if random_start else 1):
        bad = ~_finite(model, z, needs_grad)
        if not bool(bad.any()):
            return z
        if random_start:
            z = torch.where(bad.unsqueeze(-1), model.init_z(chains, init, generator), z)
    model.check_logdensity(z)  # names the term that is not finite
    raise ValueError(
        f"sample: init={init!r} gives a start with a non-finite gradient of the log density "
        "for some chains; choose another init (e.g. 'map' or a dict of values)"
    )


def _finite(model, z, needs_grad):
    if needs_grad:
        lp, grad = model.logdensity_and_grad(z)
        return torch.isfinite(lp) & torch.isfinite(grad).all(-1)
    return torch.isfinite(model.logdensity(z))


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


class _Progress:
    """Running sums on the device, read and shown every `PROGRESS_INTERVAL` seconds."""

    def __init__(self, bar, kernel, like):
        self.bar, self.kernel = bar, kernel
        self.accept = torch.zeros_like(like)
        self.divergences = torch.zeros_like(like)
        self.count = self.pending = 0
        self.last = time.perf_counter()

    def update(self, info):
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
            postfix["step_size"] = f"{float(self.kernel.step_size.mean()):.3g}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(self.pending)
        self.pending = 0
        self.last = time.perf_counter()


__all__ = ["Chains", "initial_positions", "resolve_device", "resolve_dtype", "run_chains", "sample"]
