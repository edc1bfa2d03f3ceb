"""Where chains start: `init_z` draws starting points of one kind ('uniform', 'zeros',
'prior', {name: values}); `initial_positions` gives `bl.sample` starts with a finite log density
(and gradient), shared within superchains, redrawn when they fail, or drawn around modes from
their Laplace approximation; `with_curvature` gives Metropolis its starting proposal."""

from typing import NamedTuple

import torch

from ..inference import MapResult, check_mode, find_map
from ..rejections import ModelErrors, finite_starts, start_error
from ..stacked import Stacked
from .declarations import ModelError

# Fresh starts tried for chains whose random start has a non-finite log density (as Stan).
INIT_ATTEMPTS = 100
# Starts from a mode are drawn from its Laplace approximation with the standard deviations
# widened this much: over-dispersed, as convergence checks across chains want them.
MODE_DISPERSION = 2.0
# Where a mode has no usable curvature: how far each start lies from it (uniform, unconstrained).
MAP_JITTER = 0.1
# superchains=None: this many superchains when a data set has at least MANY_CHAINS chains
# (and they divide evenly), else every chain starts on its own.
DEFAULT_SUPERCHAINS = 4
MANY_CHAINS = 16


def init_z(model, chains, init="uniform", generator=None):
    """Starting points `[chains, dim]`: 'uniform' (Stan's uniform(-2, 2) in unconstrained
    space), 'zeros', 'prior' (draws from the prior), or a dict {name: values} in the
    constrained space (one value for all chains, or one per chain; parameters left out
    start uniform)."""
    uniform = (
        4
        * torch.rand(chains, model.dim, generator=generator, dtype=model.dtype, device=model.device)
        - 2
    )
    if isinstance(init, str) and init == "uniform":
        return uniform
    if isinstance(init, str) and init == "zeros":
        return torch.zeros_like(uniform)
    if isinstance(init, str) and init == "prior":
        seed = int(torch.randint(2**62, (1,), generator=generator, device=model.device))
        return model.unconstrain(model.sample_prior(chains, seed))
    if isinstance(init, dict):
        return _given(model, chains, init, uniform)
    raise ModelError(
        f"Model '{model.name}': init={init!r} is not a known start; use 'uniform', 'zeros', "
        "'prior', 'map' (when sampling) or a dict {parameter: values}."
    )


def _given(model, chains, init, uniform):
    """The dict `init`'s constrained values, the other parameters at `uniform`."""
    unknown = [name for name in init if name not in model._params]
    if unknown:
        raise ModelError(
            f"Model '{model.name}': init names {unknown}, which are not parameters; "
            f"parameters: {list(model._params)}."
        )
    values = model.constrain(uniform)
    for name, value in init.items():
        value = torch.as_tensor(value, dtype=model.dtype, device=model.device)
        shape = model.param_shapes[name]
        if tuple(value.shape) not in (shape, (chains, *shape)):
            raise ModelError(
                f"Model '{model.name}': init['{name}'] has shape {tuple(value.shape)}; "
                f"give shape {shape} (all chains) or {(chains, *shape)} (per chain)."
            )
        values[name] = value.expand(chains, *shape)
    return model.unconstrain(values)


class Start(NamedTuple):
    """Where chains start: ``z`` ``[chains, dim]``; ``covariance`` ``[chains, dim, dim]`` for
    the samplers' proposal or metric (None: the identity); the modes used, if any; and how
    many data sets' modes had no usable curvature."""

    z: torch.Tensor
    covariance: torch.Tensor | None = None
    modes: list | None = None
    laplace_fallbacks: int = 0


def initial_positions(model, chains, superchains, init, generator, seed, needs_grad) -> Start:
    """Starting points with a finite log density (and gradient): `superchains` points per data
    set, each shared by ``chains // superchains`` chains; random starts that fail are drawn
    again, up to `INIT_ATTEMPTS` times."""
    datasets = model.datasets if isinstance(model, Stacked) else 1
    share = chains // superchains
    modes = _modes(model, init, seed, datasets)
    if modes is not None:
        return _around_modes(model, modes, superchains, share, generator, needs_grad)
    if isinstance(init, dict):
        z = model.init_z(chains, init, generator)
        errors = ModelErrors()
        if not bool(finite_starts(model, z, needs_grad, errors).all()):
            _explain_no_start(model, z, errors)
            raise ValueError(
                "sample: the init values give a start with a non-finite gradient of the log "
                "density for some chains; choose other values (or init='map')"
            )
        return Start(z)
    z = _retry(model, lambda: model.init_z(superchains, init, generator), needs_grad, init)
    return Start(z.repeat_interleave(share, dim=0))


def _retry(model, draw, needs_grad, init):
    """Draw starts until every one has a finite log density (and gradient)."""
    z, errors = draw(), ModelErrors()
    random_start = isinstance(init, str) and init in ("uniform", "prior")
    for _ in range(INIT_ATTEMPTS if random_start else 1):
        bad = ~finite_starts(model, z, needs_grad, errors)
        if not bool(bad.any()):
            return z
        if random_start:
            z = torch.where(bad.unsqueeze(-1), draw(), z)
    _explain_no_start(model, z, errors)
    raise ValueError(
        f"sample: init={init!r} gives a start with a non-finite gradient of the log density "
        "for some chains; choose another init (e.g. 'map' or a dict of values)"
    )


def _explain_no_start(model, z, errors):
    """Raise the ModelError that says why starts `z` failed: the error the model's code raised
    there, else the term of the log density that is not finite."""
    error = start_error(model, errors)
    if error is not None:
        raise error
    model.check_logdensity(z)


def _modes(model, init, seed, datasets):
    """The modes to start from, one `MapResult` per data set, or None for other inits."""
    if isinstance(init, str) and init == "map":
        modes = find_map(model, seed=seed, threads=torch.get_num_threads())
    elif isinstance(init, MapResult):
        modes = init
    elif isinstance(init, list | tuple) and all(isinstance(m, MapResult) for m in init):
        modes = list(init)
    else:
        return None
    modes = modes if isinstance(modes, list) else [modes]
    if len(modes) != datasets:
        raise ValueError(
            f"sample: init gives {len(modes)} modes for {datasets} data set(s); give one "
            "MapResult per data set (find_map of the stack gives that list)"
        )
    check_mode(modes, model)  # refuses a mode that is none: the optimiser ran away
    return modes


def _around_modes(model, modes, superchains, share, generator, needs_grad) -> Start:
    """Starts drawn from each mode's Laplace approximation (widened by `MODE_DISPERSION`),
    `superchains` per data set; the covariances for the samplers."""
    like = torch.zeros((), dtype=model.dtype, device=model.device)
    dim = model.dim
    eye = torch.eye(dim, dtype=like.dtype, device=like.device)
    centre = torch.stack([m.z.to(like) for m in modes])
    covariance = torch.stack(
        [eye if m.covariance is None else m.covariance.to(like) for m in modes]
    )
    fallback = torch.tensor([m.covariance is None for m in modes], device=like.device)
    factor = torch.linalg.cholesky(covariance)
    centre = centre.repeat_interleave(superchains, dim=0)
    factor = factor.repeat_interleave(superchains, dim=0)
    jitter_only = fallback.repeat_interleave(superchains)

    def draw():
        normal = torch.randn(
            centre.shape, generator=generator, dtype=like.dtype, device=like.device
        )
        spread = MODE_DISPERSION * (factor @ normal.unsqueeze(-1)).squeeze(-1)
        uniform = torch.rand(
            centre.shape, generator=generator, dtype=like.dtype, device=like.device
        )
        jitter = MAP_JITTER * (2 * uniform - 1)
        return centre + torch.where(jitter_only.unsqueeze(-1), jitter, spread)

    z = _retry(model, draw, needs_grad, "uniform")
    chains = superchains * share
    return Start(
        z.repeat_interleave(share, dim=0),
        covariance.repeat_interleave(chains, dim=0),
        modes,
        int(fallback.sum()),
    )


def with_curvature(model, start, chains, seed) -> Start:
    """`start` with the covariance of each data set's Laplace approximation (the identity
    where there is no mode with usable curvature), for a sampler whose warmup starts from it."""
    try:
        modes = find_map(model, seed=seed, threads=torch.get_num_threads())
    except ModelError:  # no finite mode: keep the identity
        datasets = model.datasets if isinstance(model, Stacked) else 1
        return start._replace(laplace_fallbacks=datasets)
    modes = modes if isinstance(modes, list) else [modes]
    eye = torch.eye(model.dim, dtype=model.dtype, device=model.device)
    covariance = torch.stack(
        [eye if m.covariance is None else m.covariance.to(eye) for m in modes]
    ).repeat_interleave(chains, dim=0)
    fallbacks = sum(m.covariance is None for m in modes)
    return start._replace(covariance=covariance, laplace_fallbacks=fallbacks)


def superchains_for(chains, superchains, init):
    """The number of distinct starts per data set (see `bl.sample`'s `superchains`)."""
    if superchains is None and isinstance(init, dict):
        return chains  # the user's own starts: no shared ones to compare
    if superchains is None:
        many = chains >= MANY_CHAINS and chains % DEFAULT_SUPERCHAINS == 0
        return DEFAULT_SUPERCHAINS if many else chains
    if isinstance(superchains, bool) or not isinstance(superchains, int) or superchains < 1:
        raise ValueError(f"superchains must be an integer >= 1, got {superchains!r}")
    if chains % superchains:
        raise ValueError(
            f"superchains={superchains} must divide chains={chains}: each superchain is the "
            "same number of chains started from one point"
        )
    return superchains


__all__ = ["Start", "init_z", "initial_positions", "superchains_for", "with_curvature"]
