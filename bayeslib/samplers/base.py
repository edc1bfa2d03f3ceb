"""What every sampler shares: its state, the per-iteration information it reports, and the
interface the ``sample`` driver talks to."""

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .adaptation import WindowAdaptation
from .graphs import Graphs
from .integrators import leapfrog
from .metrics import DenseMetric, DiagonalMetric, make_metric


class State(NamedTuple):
    """A batch of chains: ``position`` ``[chains, dim]`` (unconstrained), ``logdensity``
    ``[chains]``, ``logdensity_grad`` ``[chains, dim]`` (None for gradient-free samplers)."""

    position: Tensor
    logdensity: Tensor
    logdensity_grad: Tensor | None


class Info(NamedTuple):
    """What one iteration did, per chain; fields a sampler does not produce are None.

    ``acceptance_rate``: Metropolis acceptance probability (for NUTS, its mean over the
    trajectory), the statistic step-size adaptation steers; ``diverging``: the energy error
    exceeded the threshold; ``energy``: the Hamiltonian at the returned state;
    ``n_steps``: leapfrog steps taken; ``tree_depth``: NUTS tree doublings.
    """

    acceptance_rate: Tensor
    diverging: Tensor | None = None
    energy: Tensor | None = None
    n_steps: Tensor | None = None
    tree_depth: Tensor | None = None


class Target(NamedTuple):
    """The batched log density a kernel sees: ``logdensity_and_grad(z) -> (lp, grad)`` and
    ``logdensity(z) -> lp``, with ``z`` of shape ``[chains, dim]``. ``traced``: the one the
    kernel calls (the gradient for HMC and NUTS) is straight-line tensor code
    (`bayeslib.tracing`), which a CUDA graph can capture;
    ``graphs``: where kernels keep their captured CUDA graphs (`samplers.graphs`), or None
    to run eagerly; ``compiled``: where kernels keep their inner steps compiled with the
    log density (`bayeslib.compiling.Compiled`), or None to run them operation by
    operation."""

    logdensity_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]]
    logdensity: Callable[[Tensor], Tensor]
    traced: bool = False
    graphs: Graphs | None = None
    compiled: object | None = None


def clean_logdensity(lp: Tensor) -> Tensor:
    """NaN (and +inf) log densities count as -inf: a rejection, never an accepted NaN."""
    return torch.nan_to_num(lp, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)


class Adaptation(NamedTuple):
    """A sampler's warmup adaptation as three pure functions over its own state (what
    `Sampler.adaptation` returns):

    ``init(generator, target, state, params) -> (params, adaptation_state)`` before the first
    warmup iteration; ``update(generator, target, state, info, params, adaptation_state) ->
    (params, adaptation_state)`` after each; ``final(params, adaptation_state) -> params``
    after the last, whose tuning the draws then use unchanged."""

    init: Callable
    update: Callable
    final: Callable


class Sampler:
    """The interface ``sample`` drives. A sampler object holds only its options; the tuning a
    run learns (per-chain ``step_size``, metric or proposal) is a NamedTuple of parameters
    that the driver passes along:

    ``params = init_params(state, covariance)``, then ``step(generator, target, state,
    params)`` for each iteration, and during warmup the `Adaptation` triple from
    ``adaptation(warmup, dim, groups)`` to change ``params``. Every ``params`` has a
    ``step_size`` ``[chains]`` (the proposal scale for Metropolis), recorded as a statistic."""

    name = ""
    #: The sample statistics this sampler records, besides ``lp`` and ``step_size``.
    stat_names: tuple[str, ...] = ("acceptance_rate",)
    needs_grad = True
    #: Whether ``sample`` should find the mode's curvature for ``init_params``'s
    #: ``covariance`` even when the chains do not start from the mode.
    starts_from_curvature = False

    def options(self) -> dict:
        """The options the sampler was made with, JSON-serialisable (`Posterior.attrs`)."""
        raise NotImplementedError

    def init_params(self, state: State, covariance: Tensor | None = None) -> NamedTuple:
        """The tuning before any adaptation, for the chains of `state`: `covariance`
        ``[chains, dim, dim]`` is where the proposal covariance or metric starts (else the
        identity, or what the sampler was given)."""
        raise NotImplementedError

    def step(
        self, generator: torch.Generator, target: Target, state: State, params: NamedTuple
    ) -> tuple[State, Info]:
        """One transition of every chain: a pure function of its arguments (and the
        generator's state)."""
        raise NotImplementedError

    def variances(self, params: NamedTuple) -> Tensor:
        """``[chains, dim]``: the variances of the metric or proposal covariance in whose
        units ``params.step_size`` is."""
        raise NotImplementedError

    def adaptation(self, warmup: int, dim: int, groups: int = 1) -> Adaptation:
        """How `warmup` iterations adapt the tuning of chains in `dim` unconstrained
        dimensions; `groups` data sets own equal, consecutive blocks of chains and adapt
        apart."""
        raise NotImplementedError

    def init_state(self, target: Target, z: Tensor) -> State:
        if self.needs_grad:
            lp, grad = target.logdensity_and_grad(z)
            return State(z, clean_logdensity(lp), grad)
        return State(z, clean_logdensity(target.logdensity(z)), None)


# dense_mass=None: a dense metric up to this many unconstrained dimensions, where the full
# covariance is cheap and well estimated from warmup, and it removes the correlations that
# make a diagonal metric take long trajectories; a diagonal one above.
DENSE_MASS_MAX_DIM = 10


class HamiltonianParams(NamedTuple):
    """The tuning of HMC and NUTS: ``step_size`` ``[chains]`` and a metric (diagonal or
    dense, one inverse mass matrix per chain)."""

    step_size: Tensor
    metric: DiagonalMetric | DenseMetric


class HamiltonianSampler(Sampler):
    """Shared by HMC and NUTS: a metric (diagonal or dense) and a step size, held per chain
    (equal across chains after `WindowAdaptation`) and adapted during warmup as Stan does it."""

    max_delta_energy = 1000.0

    def __init__(
        self,
        step_size: float = 1.0,
        target_accept: float = 0.8,
        dense_mass: bool | None = None,
        inverse_mass_matrix=None,
    ):
        if not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size}")
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
        self.initial_step_size = float(step_size)
        self.target_accept = float(target_accept)
        if dense_mass not in (None, True, False):
            raise ValueError(f"dense_mass must be True, False or None (auto), got {dense_mass!r}")
        self.dense_mass_option = dense_mass
        self.initial_inverse_mass_matrix = inverse_mass_matrix

    def options(self) -> dict:
        return {
            "target_accept": self.target_accept,
            "initial_step_size": self.initial_step_size,
            "dense_mass": self.dense_mass_option,
        }

    def dense_mass(self, dim: int) -> bool:
        """Whether the metric is dense for `dim` unconstrained dimensions."""
        if self.dense_mass_option is not None:
            return self.dense_mass_option
        given = self.initial_inverse_mass_matrix
        given_dense = given is not None and torch.as_tensor(given).dim() == 2
        return given_dense or dim <= DENSE_MASS_MAX_DIM

    def init_params(self, state: State, covariance: Tensor | None = None) -> HamiltonianParams:
        z = state.position
        chains, dim = z.shape
        dense = self.dense_mass(dim)
        step_size = torch.full((chains,), self.initial_step_size, dtype=z.dtype, device=z.device)
        if covariance is not None and self.initial_inverse_mass_matrix is None:
            inverse_mass_matrix = covariance.to(z)
            if not dense:
                inverse_mass_matrix = inverse_mass_matrix.diagonal(dim1=-2, dim2=-1).clone()
        else:
            inverse_mass_matrix = self._initial_inverse_mass_matrix(chains, dim, dense, z)
        return HamiltonianParams(step_size, make_metric(inverse_mass_matrix))

    def _initial_inverse_mass_matrix(
        self, chains: int, dim: int, dense: bool, like: Tensor
    ) -> Tensor:
        given = self.initial_inverse_mass_matrix
        if given is None:
            eye = torch.ones(dim, dtype=like.dtype, device=like.device)
            given = torch.diag(eye) if dense else eye
        given = torch.as_tensor(given, dtype=like.dtype, device=like.device)
        if dense and given.dim() == 1:
            given = torch.diag(given)
        if not dense and given.dim() == 2 and given.shape[0] == given.shape[1] == dim:
            raise ValueError("a dense inverse_mass_matrix needs dense_mass=True")
        expected = (dim, dim) if dense else (dim,)
        if tuple(given.shape[-len(expected) :]) != expected:
            raise ValueError(
                f"inverse_mass_matrix must have shape {expected}, got {tuple(given.shape)}"
            )
        return given.expand(chains, *expected).clone()

    def variances(self, params: HamiltonianParams) -> Tensor:
        inverse_mass_matrix = params.metric.inverse_mass_matrix
        if inverse_mass_matrix.dim() == 3:
            return inverse_mass_matrix.diagonal(dim1=-2, dim2=-1)
        return inverse_mass_matrix

    def adaptation(self, warmup: int, dim: int, groups: int = 1) -> Adaptation:
        """Stan's windowed warmup: the step size by dual averaging toward `target_accept`,
        the metric renewed from each window's draws, and after each renewal a step size
        found afresh (`find_reasonable_step_size`)."""
        window = WindowAdaptation(warmup, self.target_accept, groups=groups)

        def init(generator, target, state, params):
            step_size = find_reasonable_step_size(
                generator, state, target, params.step_size, params.metric
            )
            adaptation_state = window.init(step_size, state.position, self.dense_mass(dim))
            return params._replace(step_size=step_size), adaptation_state

        def update(generator, target, state, info, params, adaptation_state):
            adaptation_state, step_size, covariance = window.update(
                adaptation_state, state.position, info.acceptance_rate
            )
            params = params._replace(step_size=step_size)
            if covariance is not None:
                metric = make_metric(covariance)
                step_size = find_reasonable_step_size(generator, state, target, step_size, metric)
                params = params._replace(step_size=step_size, metric=metric)
                adaptation_state = window.restart(adaptation_state, step_size)
            return params, adaptation_state

        def final(params, adaptation_state):
            return params._replace(step_size=window.final(adaptation_state))

        return Adaptation(init, update, final)


def find_reasonable_step_size(
    generator: torch.Generator,
    state: State,
    target: Target,
    step_size: Tensor,
    metric,
    target_accept: float = 0.8,
    max_iterations: int = 100,
) -> Tensor:
    """Stan's heuristic, per chain: double (or halve) the step size until the acceptance
    probability of one leapfrog step crosses ``target_accept``."""
    z, lp, grad = state
    log_target = math.log(target_accept)
    direction = None
    active = torch.ones_like(lp, dtype=torch.bool)
    step_size = step_size.clone()
    for _ in range(max_iterations):
        r = metric.sample_momentum(generator, z)
        h0 = metric.kinetic_energy(r) - lp
        _, r1, lp1, _ = leapfrog(
            z, r, grad, step_size.unsqueeze(-1), metric, target.logdensity_and_grad
        )
        delta = h0 - (metric.kinetic_energy(r1) - clean_logdensity(lp1))
        above = delta.nan_to_num(-math.inf) > log_target
        if direction is None:
            direction = torch.where(above, 2.0, 0.5).to(step_size.dtype)
        active &= above == (direction > 1.0)
        active &= (step_size > 1e-12) & (step_size < 1e7)
        if not bool(active.any()):
            break
        step_size = torch.where(active, step_size * direction, step_size)
    return step_size
