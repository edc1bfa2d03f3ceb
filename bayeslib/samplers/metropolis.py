"""Random-walk Metropolis in unconstrained space, with the proposal learned during warmup."""

import math

import torch
from torch import Tensor

from .adaptation import WindowAdaptation
from .base import Info, Sampler, State, Target, clean_logdensity


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

    The proposal covariance starts from what ``setup`` is given (``bl.sample`` gives the
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
        self.optimal_scale = 2.38 / math.sqrt(dim)
        initial = self.optimal_scale if self.initial_scale is None else float(self.initial_scale)
        self.step_size = torch.full((chains,), initial, dtype=z.dtype, device=z.device)
        if covariance is None:
            covariance = torch.eye(dim, dtype=z.dtype, device=z.device).expand(chains, dim, dim)
        covariance = covariance.to(z)
        if self.dense_covariance:
            self.proposal_factor = torch.linalg.cholesky(covariance)
        else:
            self.proposal_factor = covariance.diagonal(dim1=-2, dim2=-1).sqrt()
        target_accept = self.target_accept
        if target_accept is None:
            target_accept = 0.44 if dim == 1 else 0.234
        self.adaptation = None
        if warmup > 0:
            self.adaptation = WindowAdaptation(
                warmup,
                chains,
                dim,
                target_accept,
                self.dense_covariance,
                z.dtype,
                z.device,
                mu_factor=1.0,
                groups=groups,
            )
            self.adaptation.restart(self.step_size)

    def step(self, generator: torch.Generator, state: State) -> tuple[State, Info]:
        return rwm_step(generator, state, self.target, self.step_size, self.proposal_factor)

    def adapt(self, generator: torch.Generator, i: int, state: State, info: Info) -> None:
        scale, covariance = self.adaptation.update(i, state.position, info.acceptance_rate)
        self.step_size = scale
        if covariance is not None:
            if self.dense_covariance:
                self.proposal_factor = torch.linalg.cholesky(covariance)
            else:
                self.proposal_factor = covariance.sqrt()
            self.step_size = torch.full_like(scale, self.optimal_scale)
            self.adaptation.restart(self.step_size)
