"""Euclidean metrics: the kinetic energy of HMC and NUTS, batched over chains.

A metric holds one inverse mass matrix per chain: ``[chains, dim]`` (diagonal) or
``[chains, dim, dim]`` (dense), and the factor that draws momenta from it. Momentum
``r ~ N(0, M)``, velocity ``M^-1 r``, kinetic energy ``r . M^-1 r / 2``. Metrics are tuples of
tensors (made by `make_metric`), so that a kernel can pass one along like any other state.
"""

from typing import NamedTuple

import torch
from torch import Tensor


class DiagonalMetric(NamedTuple):
    inverse_mass_matrix: Tensor
    momentum_scale: Tensor  # M^1/2 (diagonal)

    def sample_momentum(self, generator: torch.Generator, like: Tensor) -> Tensor:
        noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        return noise * self.momentum_scale

    def velocity(self, r: Tensor) -> Tensor:
        return self.inverse_mass_matrix * r

    def kinetic_energy(self, r: Tensor) -> Tensor:
        return 0.5 * torch.linalg.vecdot(r, self.velocity(r))


class DenseMetric(NamedTuple):
    inverse_mass_matrix: Tensor
    momentum_transform: Tensor  # L^-T, with M^-1 = L L^T: r = L^-T xi has covariance M

    def sample_momentum(self, generator: torch.Generator, like: Tensor) -> Tensor:
        noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        return (self.momentum_transform @ noise.unsqueeze(-1)).squeeze(-1)

    def velocity(self, r: Tensor) -> Tensor:
        return (self.inverse_mass_matrix @ r.unsqueeze(-1)).squeeze(-1)

    def kinetic_energy(self, r: Tensor) -> Tensor:
        return 0.5 * torch.linalg.vecdot(r, self.velocity(r))


def is_turning(
    v_left: Tensor, v_right: Tensor, r_left: Tensor, r_right: Tensor, r_sum: Tensor
) -> Tensor:
    """Generalised no-U-turn criterion (Betancourt 2017, A.4.2), over the last axis.

    ``r_sum`` is the sum of momenta over the sub-trajectory, both ends included; half of
    each end is removed, as in NumPyro and BlackJAX.
    """
    rho = r_sum - 0.5 * (r_left + r_right)
    return torch.minimum(torch.linalg.vecdot(v_left, rho), torch.linalg.vecdot(v_right, rho)) <= 0


def make_metric(inverse_mass_matrix: Tensor) -> DiagonalMetric | DenseMetric:
    """A diagonal metric for ``[..., dim]``, a dense one for ``[..., dim, dim]``."""
    if inverse_mass_matrix.dim() >= 3:
        chol = torch.linalg.cholesky(inverse_mass_matrix)
        eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device)
        transform = torch.linalg.solve_triangular(chol.mT, eye.expand_as(chol), upper=True)
        return DenseMetric(inverse_mass_matrix, transform)
    return DiagonalMetric(inverse_mass_matrix, inverse_mass_matrix.rsqrt())
