"""MCMC kernels over a batch of chains, and their warmup adaptation."""

import inspect

from .adaptation import DualAveraging, Welford, WindowAdaptation, build_schedule, pooled
from .base import HamiltonianSampler, Info, Sampler, State, Target, find_reasonable_step_size
from .hmc import HMC, hmc_step
from .integrators import leapfrog
from .metrics import DenseMetric, DiagonalMetric, make_metric
from .metropolis import RandomWalkMetropolis, rwm_step
from .nuts import NUTS, nuts_step

SAMPLERS = {"metropolis": RandomWalkMetropolis, "hmc": HMC, "nuts": NUTS}


def make_sampler(sampler, **options) -> Sampler:
    """A sampler from its name (``"metropolis"``, ``"hmc"``, ``"nuts"``) and options, or a
    sampler object as given (then with no options)."""
    if isinstance(sampler, Sampler):
        if options:
            raise ValueError(
                f"options {sorted(options)} cannot go with a sampler object; "
                f"give them to its constructor instead"
            )
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(
            f"unknown sampler {sampler!r}; use one of {sorted(SAMPLERS)} or a Sampler object"
        )
    cls = SAMPLERS[sampler]
    known = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for sampler {sampler!r}; its options are {known}"
        )
    return cls(**options)


__all__ = [
    "DenseMetric",
    "DiagonalMetric",
    "DualAveraging",
    "HMC",
    "HamiltonianSampler",
    "Info",
    "NUTS",
    "RandomWalkMetropolis",
    "SAMPLERS",
    "Sampler",
    "State",
    "Target",
    "Welford",
    "pooled",
    "WindowAdaptation",
    "build_schedule",
    "find_reasonable_step_size",
    "hmc_step",
    "leapfrog",
    "make_metric",
    "make_sampler",
    "nuts_step",
    "rwm_step",
]
