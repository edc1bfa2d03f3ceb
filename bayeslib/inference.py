"""Point estimates: the posterior mode (MAP)."""

import math
from dataclasses import dataclass

import torch

from .model import Model, ModelError

METHODS = ("lbfgs", "adam")
# Fresh random starts tried when an optimisation from a random start ends where the log
# density is not finite (a line search that stepped to where a scale underflows to zero).
ATTEMPTS = 10


@dataclass
class MapResult:
    """The posterior mode found by `find_map`.

    params: {name: constrained value `[*shape]`}; z: the same point, unconstrained `[dim]`;
    log_density: log p(theta, y) there, up to a constant, without the Jacobian (the density of
    the constrained parameters); converged: whether the gradient vanished (max |grad| <= gtol)
    within max_iter; grad_max: that final max |grad| in unconstrained coordinates.
    """

    params: dict
    z: torch.Tensor
    log_density: float
    converged: bool
    iterations: int
    grad_max: float
    method: str


def find_map(model, init="uniform", method="lbfgs", max_iter=2000, gtol=1e-6, lr=0.05, seed=0):
    """Maximise the posterior density of the constrained parameters, as Stan's optimiser does
    (no Jacobian term), working in unconstrained coordinates.

    method: 'lbfgs' (strong Wolfe line search; the default) or 'adam' (learning rate `lr`).
    init: a start as for `Model.init_z` ('uniform', 'zeros', 'prior' or {name: value}).
    gtol: convergence when max |d log p / dz| <= gtol * max(1, |log p|).
    """
    if not isinstance(model, Model):
        raise TypeError(f"find_map needs a bl.Model, not {type(model).__name__}.")
    if method not in METHODS:
        raise ValueError(f"find_map: method={method!r} is unknown; use one of {METHODS}.")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"find_map: max_iter must be a positive int, not {max_iter!r}.")
    generator = torch.Generator(device=model.device).manual_seed(seed)
    random_start = isinstance(init, str) and init in ("uniform", "prior")
    for _ in range(ATTEMPTS if random_start else 1):
        z = model.init_z(1, init, generator)
        model.check_logdensity(z, jacobian=False)
        z, log_density, grad, iterations = _optimise(model, z[0], method, max_iter, lr, gtol)
        finite = math.isfinite(log_density) and bool(torch.isfinite(grad).all())
        if finite:
            break
    params = {name: value[0] for name, value in model.constrain(z[None]).items()}
    if not finite:
        raise ModelError(
            f"Model '{model.name}': the optimiser reached a point where the log density is "
            f"{log_density} ({params}); the posterior may be improper or unbounded there."
        )
    grad_max = float(grad.abs().max()) if grad.numel() else 0.0
    converged = grad_max <= gtol * max(1.0, abs(log_density))
    return MapResult(params, z, log_density, converged, iterations, grad_max, method)


def _optimise(model, z, method, max_iter, lr, gtol):
    """From unconstrained `z`: (z, log density, its gradient, iterations) where it stopped."""
    z = z.clone().requires_grad_(True)

    def objective():
        return -model.logdensity(z[None], jacobian=False)[0]

    if method == "lbfgs":
        iterations = _lbfgs(objective, z, max_iter)
    else:
        iterations = _adam(objective, z, max_iter, lr, gtol)
    log_density, grad = _value_and_grad(objective, z)
    return z.detach(), log_density, grad, iterations


def _value_and_grad(objective, z):
    with torch.enable_grad():
        loss = objective()
        (grad,) = torch.autograd.grad(loss, z)
    return -float(loss.detach()), grad


def _lbfgs(objective, z, max_iter):
    optimizer = torch.optim.LBFGS(
        [z],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    return optimizer.state[optimizer._params[0]]["n_iter"]


def _adam(objective, z, max_iter, lr, gtol):
    optimizer = torch.optim.Adam([z], lr=lr)
    # A decaying step lets Adam settle instead of circling the mode at the scale of lr.
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=50)
    for iteration in range(1, max_iter + 1):
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        loss = loss.item()
        if z.grad.abs().max() <= gtol * max(1.0, abs(loss)):
            return iteration
        optimizer.step()
        schedule.step(loss)
    return max_iter
