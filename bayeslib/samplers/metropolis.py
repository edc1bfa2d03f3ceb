"""Random-walk Metropolis in unconstrained space, with the proposal learned during warmup."""

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .adaptation import WindowAdaptation
from .base import Adaptation, Info, Sampler, State, Target, clean_logdensity


class MetropolisParams(NamedTuple):
    """Random-walk Metropolis's tuning: ``step_size`` ``[chains]``, the proposal scale, and
    ``proposal_factor``: ``[chains, dim]`` standard deviations, or ``[chains, dim, dim]`` a
    Cholesky factor of the proposal covariance."""

    step_size: Tensor
    proposal_factor: Tensor


def rwm_step(
    generator: torch.Generator,
    state: State,
    target: Target,
    scale: Tensor,
    proposal_factor: Tensor,
) -> tuple[State, Info]:
    """One Metropolis transition for every chain: propose ``z + scale * A xi`` with
    ``xi ~ N(0, I)``; ``proposal_factor`` ``A`` is ``[chains, dim]`` (diagonal) or
    ``[chains, dim, dim]`` (a Cholesky factor of the proposal covariance)."""
    z, lp, _ = state
    chains, dim = z.shape
    noise = torch.randn(chains, dim, generator=generator, dtype=z.dtype, device=z.device)
    if proposal_factor.dim() == 3:
        noise = (proposal_factor @ noise.unsqueeze(-1)).squeeze(-1)
    else:
        noise = proposal_factor * noise
    proposal = z + scale.unsqueeze(-1) * noise
    lp_proposal = clean_logdensity(target.logdensity(proposal))
    log_ratio = (lp_proposal - lp).nan_to_num(-math.inf)
    u = torch.rand(chains, generator=generator, dtype=z.dtype, device=z.device)
    accept = u.log() < log_ratio
    new_state = State(
        torch.where(accept.unsqueeze(-1), proposal, z), torch.where(accept, lp_proposal, lp), None
    )
    return new_state, Info(acceptance_rate=log_ratio.clamp(max=0.0).exp())


class RandomWalkMetropolis(Sampler):
    """Random-walk Metropolis. During warmup only, the proposal scale (shared by the chains)
    is steered by dual averaging toward ``target_accept`` (0.234; 0.44 in one dimension) and
    the proposal covariance is estimated from the chains' warmup draws over Stan's windows;
    both are then fixed, so the draws come from a valid Metropolis chain.

    The proposal covariance starts from what ``init_params`` is given (``bl.sample`` gives the
    Laplace approximation at the mode with ``init="map"``), else the identity.

    Options: ``target_accept``, ``dense_covariance`` (True: learn the full covariance, else
    the variances only), ``scale`` (initial; ``2.38 / sqrt(dim)``).
    """

    name = "metropolis"
    stat_names = ("acceptance_rate",)
    needs_grad = False
    # A random walk cannot learn a posterior far narrower or more correlated than its first
    # proposal within warmup; the curvature at the mode predicts both.
    starts_from_curvature = True

    def __init__(
        self, target_accept: float | None = None, dense_covariance: bool = True, scale=None
    ):
        if target_accept is not None and not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
        if scale is not None and not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.target_accept = target_accept
        self.dense_covariance = bool(dense_covariance)
        self.initial_scale = scale

    def options(self) -> dict:
        return {
            "target_accept": self.target_accept,
            "dense_covariance": self.dense_covariance,
            "initial_scale": self.initial_scale,
        }

    def init_params(self, state: State, covariance: Tensor | None = None) -> MetropolisParams:
        z = state.position
        chains, dim = z.shape
        initial = optimal_scale(dim) if self.initial_scale is None else float(self.initial_scale)
        step_size = torch.full((chains,), initial, dtype=z.dtype, device=z.device)
        if covariance is None:
            covariance = torch.eye(dim, dtype=z.dtype, device=z.device).expand(chains, dim, dim)
        covariance = covariance.to(z)
        if self.dense_covariance:
            return MetropolisParams(step_size, torch.linalg.cholesky(covariance))
        return MetropolisParams(step_size, covariance.diagonal(dim1=-2, dim2=-1).sqrt())

    def step(
        self, generator: torch.Generator, target: Target, state: State, params: MetropolisParams
    ) -> tuple[State, Info]:
        return rwm_step(generator, state, target, params.step_size, params.proposal_factor)

    def variances(self, params: MetropolisParams) -> Tensor:
        factor = params.proposal_factor
        return (factor**2).sum(-1) if factor.dim() == 3 else factor**2

    def adaptation(self, warmup: int, dim: int, groups: int = 1) -> Adaptation:
        """The proposal scale by dual averaging toward `target_accept`; the proposal
        covariance renewed from each window's draws, with the scale back at its optimum for
        a Gaussian (`optimal_scale`)."""
        target_accept = self.target_accept
        if target_accept is None:
            target_accept = 0.44 if dim == 1 else 0.234
        window = WindowAdaptation(warmup, target_accept, mu_factor=1.0, groups=groups)

        def init(generator, target, state, params):
            return params, window.init(params.step_size, state.position, self.dense_covariance)

        def update(generator, target, state, info, params, adaptation_state):
            adaptation_state, scale, covariance = window.update(
                adaptation_state, state.position, info.acceptance_rate
            )
            if covariance is None:
                return params._replace(step_size=scale), adaptation_state
            if self.dense_covariance:
                proposal_factor = torch.linalg.cholesky(covariance)
            else:
                proposal_factor = covariance.sqrt()
            step_size = torch.full_like(scale, optimal_scale(dim))
            adaptation_state = window.restart(adaptation_state, step_size)
            return MetropolisParams(step_size, proposal_factor), adaptation_state

        def final(params, adaptation_state):
            return params._replace(step_size=window.final(adaptation_state))

        return Adaptation(init, update, final)


def optimal_scale(dim: int) -> float:
    """The proposal scale of a random walk on a standard Gaussian in `dim` dimensions."""
    return 2.38 / math.sqrt(dim)
