"""The leapfrog (velocity Verlet) integrator, batched over chains."""

from collections.abc import Callable

import torch
from torch import Tensor

LogDensityAndGrad = Callable[[Tensor], tuple[Tensor, Tensor]]


def leapfrog(
    z: Tensor,
    r: Tensor,
    grad: Tensor,
    step_size: Tensor,
    metric,
    logdensity_and_grad: LogDensityAndGrad,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step for every chain; ``step_size`` is ``[chains, 1]`` (negative to go back in
    time), ``grad`` the gradient of the log density. Returns ``(z, r, lp, grad)``."""
    half = 0.5 * step_size
    r = torch.addcmul(r, half, grad)
    z = torch.addcmul(z, step_size, metric.velocity(r))
    lp, grad = logdensity_and_grad(z)
    r = torch.addcmul(r, half, grad)
    return z, r, lp, grad
