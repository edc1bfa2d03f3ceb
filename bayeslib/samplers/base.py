"""What every sampler shares: its state, the per-iteration information it reports, and the
interface the ``sample`` driver talks to."""

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .adaptation import WindowAdaptation
from .integrators import leapfrog
from .metrics import make_metric


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
    ``logdensity(z) -> lp``, with ``z`` of shape ``[chains, dim]``."""

    logdensity_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]]
    logdensity: Callable[[Tensor], Tensor]


def clean_logdensity(lp: Tensor) -> Tensor:
    """NaN (and +inf) log densities count as -inf: a rejection, never an accepted NaN."""
    return torch.nan_to_num(lp, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)


class Sampler:
    """The interface ``sample`` drives. A sampler holds its options and, once ``setup`` has
    bound it to a target, its tuning (per-chain ``step_size``, metric or proposal) and the
    warmup adaptation. ``step`` is a pure kernel of the current tuning; ``adapt`` changes
    the tuning and is called during warmup only."""

    name = ""
    #: The sample statistics this sampler records, besides ``lp`` and ``step_size``.
    stat_names: tuple[str, ...] = ("acceptance_rate",)
    needs_grad = True
    #: Whether ``sample`` should find the mode's curvature for ``setup``'s ``covariance``
    #: even when the chains do not start from the mode.
    starts_from_curvature = False

    def setup(
        self,
        target: Target,
        state: State,
        generator: torch.Generator,
        warmup: int,
        groups: int = 1,
        covariance: Tensor | None = None,
    ):
        """Prepare to run from `state`: `warmup` adapting iterations follow. `groups` data
        sets own equal, consecutive blocks of chains and adapt apart; `covariance`
        ``[chains, dim, dim]`` is where the proposal covariance or metric starts (else the
        identity, or what the sampler was given)."""
        raise NotImplementedError

    def step(self, generator: torch.Generator, state: State) -> tuple[State, Info]:
        raise NotImplementedError

    def adapt(self, generator: torch.Generator, i: int, state: State, info: Info) -> None:
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

    def setup(
        self,
        target: Target,
        state: State,
        generator: torch.Generator,
        warmup: int,
        groups: int = 1,
        covariance: Tensor | None = None,
    ):
        self.target = target
        z = state.position
        chains, dim = z.shape
        self.dense_mass = self.dense_mass_option
        if self.dense_mass is None:
            given = self.initial_inverse_mass_matrix
            given_dense = given is not None and torch.as_tensor(given).dim() == 2
            self.dense_mass = given_dense or dim <= DENSE_MASS_MAX_DIM
        self.step_size = torch.full(
            (chains,), self.initial_step_size, dtype=z.dtype, device=z.device
        )
        if covariance is not None and self.initial_inverse_mass_matrix is None:
            inverse_mass_matrix = covariance.to(z)
            if not self.dense_mass:
                inverse_mass_matrix = inverse_mass_matrix.diagonal(dim1=-2, dim2=-1).clone()
        else:
            inverse_mass_matrix = self._initial_inverse_mass_matrix(chains, dim, z)
        self.metric = make_metric(inverse_mass_matrix)
        self.adaptation = None
        if warmup > 0:
            self.adaptation = WindowAdaptation(
                warmup,
                chains,
                dim,
                self.target_accept,
                self.dense_mass,
                z.dtype,
                z.device,
                groups=groups,
            )
            self.step_size = find_reasonable_step_size(
                generator, state, target, self.step_size, self.metric
            )
            self.adaptation.restart(self.step_size)

    def _initial_inverse_mass_matrix(self, chains: int, dim: int, like: Tensor) -> Tensor:
        given = self.initial_inverse_mass_matrix
        if given is None:
            eye = torch.ones(dim, dtype=like.dtype, device=like.device)
            given = torch.diag(eye) if self.dense_mass else eye
        given = torch.as_tensor(given, dtype=like.dtype, device=like.device)
        if self.dense_mass and given.dim() == 1:
            given = torch.diag(given)
        if not self.dense_mass and given.dim() == 2 and given.shape[0] == given.shape[1] == dim:
            raise ValueError("a dense inverse_mass_matrix needs dense_mass=True")
        expected = (dim, dim) if self.dense_mass else (dim,)
        if tuple(given.shape[-len(expected) :]) != expected:
            raise ValueError(
                f"inverse_mass_matrix must have shape {expected}, got {tuple(given.shape)}"
            )
        return given.expand(chains, *expected).clone()

    def adapt(self, generator: torch.Generator, i: int, state: State, info: Info) -> None:
        step_size, covariance = self.adaptation.update(i, state.position, info.acceptance_rate)
        self.step_size = step_size
        if covariance is not None:
            self.metric = make_metric(covariance)
            self.step_size = find_reasonable_step_size(
                generator, state, self.target, self.step_size, self.metric
            )
            self.adaptation.restart(self.step_size)


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
