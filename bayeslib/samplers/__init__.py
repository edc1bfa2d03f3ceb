"""MCMC kernels over a batch of chains, and their warmup adaptation."""

import inspect

from .adaptation import (
    DualAveraging,
    DualAveragingState,
    WelfordState,
    WindowAdaptation,
    WindowState,
    build_schedule,
    pooled,
    welford_covariance,
    welford_init,
    welford_update,
)
from .base import (
    Adaptation,
    HamiltonianParams,
    HamiltonianSampler,
    Info,
    Sampler,
    State,
    Target,
    find_reasonable_step_size,
)
from .hmc import HMC, HMCParams, hmc_step
from .integrators import leapfrog
from .metrics import DenseMetric, DiagonalMetric, make_metric
from .metropolis import MetropolisParams, RandomWalkMetropolis, rwm_step
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
    "Adaptation",
    "DenseMetric",
    "DiagonalMetric",
    "DualAveraging",
    "DualAveragingState",
    "HMC",
    "HMCParams",
    "HamiltonianParams",
    "HamiltonianSampler",
    "Info",
    "MetropolisParams",
    "NUTS",
    "RandomWalkMetropolis",
    "SAMPLERS",
    "Sampler",
    "State",
    "Target",
    "WelfordState",
    "WindowAdaptation",
    "WindowState",
    "build_schedule",
    "find_reasonable_step_size",
    "hmc_step",
    "leapfrog",
    "make_metric",
    "make_sampler",
    "nuts_step",
    "pooled",
    "rwm_step",
    "welford_covariance",
    "welford_init",
    "welford_update",
]
