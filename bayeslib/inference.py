"""Point estimates: the posterior mode (MAP)."""

import math
from dataclasses import dataclass

import torch

from .model import Model, ModelError
from .stacked import Stacked
from .threads import chooses_threads, work

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
    within max_iter; grad_max: that final max |grad| in unconstrained coordinates;
    covariance: the Laplace approximation's covariance in unconstrained space, `[dim, dim]`:
    the inverse of minus the Hessian of the log density that samplers see (with the Jacobian)
    at `z`; None where that Hessian is not negative definite or the optimiser did not converge
    (no mode to approximate around). `bl.sample(init=result)` starts chains and scales its
    proposals from it.
    """

    params: dict
    z: torch.Tensor
    log_density: float
    converged: bool
    iterations: int
    grad_max: float
    method: str
    covariance: torch.Tensor | None = None


@chooses_threads(lambda a: work(a["model"]))
def find_map(
    model, init="uniform", method="lbfgs", max_iter=2000, gtol=1e-6, lr=0.05, seed=0, threads=None
):
    """Maximise the posterior density of the constrained parameters, as Stan's optimiser does
    (no Jacobian term), working in unconstrained coordinates.

    method: 'lbfgs' (strong Wolfe line search; the default) or 'adam' (learning rate `lr`).
    init: a start as for `Model.init_z` ('uniform', 'zeros', 'prior' or {name: value}).
    gtol: convergence when max |d log p / dz| <= gtol * max(1, |log p|).
    A stack of data sets (`bl.stack`) gives a list with one `MapResult` per data set.
    threads: intra-op CPU threads, as for `bl.sample` (None: chosen from the work).
    """
    if isinstance(model, Stacked):
        return _find_map_stacked(model, init, method, max_iter, gtol, lr, seed)
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
    covariance, usable = laplace_covariance(model, z[None])
    # Also converged where a Newton step would raise the log density by under gtol (half the
    # Newton decrement g' H^-1 g): max |grad| alone is far too strict along a direction the
    # posterior is very narrow in (a slope over calendar years: curvature near 1e8, where
    # |grad| = 5e-4 lies 1e-8 posterior sds from the mode).
    decrement = float(grad @ covariance[0] @ grad) if bool(usable[0]) else math.inf
    converged = grad_max <= gtol * max(1.0, abs(log_density)) or decrement / 2 <= gtol
    covariance = covariance[0] if converged and bool(usable[0]) else None
    return MapResult(params, z, log_density, converged, iterations, grad_max, method, covariance)


def laplace_covariance(model, z):
    """The inverse of minus the Hessian of `model`'s log density (with the Jacobian, as
    samplers see it) at each row of `z` ``[n, dim]``: ``[n, dim, dim]``, and ``[n]`` whether
    each row's Hessian is finite and negative definite (where not, its covariance is
    meaningless)."""
    _, _, hessian = log_density_hessian(model, z)
    precision = -0.5 * (hessian + hessian.mT)
    chol, info = torch.linalg.cholesky_ex(precision)
    usable = (info == 0) & torch.isfinite(chol).all(-1).all(-1)
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    chol = torch.where(usable[:, None, None], chol, eye)
    return torch.cholesky_inverse(chol), usable


def log_density_hessian(model, z, jacobian=True):
    """Log density, gradient and Hessian at each row of `z` ``[n, dim]``: ``[n]``,
    ``[n, dim]``, ``[n, dim, dim]`` (rows are independent chains, so one backward pass per
    coordinate gives every row's Hessian)."""
    with torch.enable_grad():
        z = z.detach().clone().requires_grad_(True)
        lp = model.logdensity(z, jacobian)
        (grad,) = torch.autograd.grad(lp.sum(), z, create_graph=True)
        rows = [
            torch.autograd.grad(grad[:, i].sum(), z, retain_graph=True)[0]
            for i in range(z.shape[1])
        ]
    return lp.detach(), grad.detach(), torch.stack(rows, dim=1).detach()


def _find_map_stacked(stacked, init, method, max_iter, gtol, lr, seed):
    """One `MapResult` per data set. All data sets climb together by damped Newton steps
    (Levenberg-Marquardt, each data set with its own damping), cheap for the small dimensions
    of models fitted to many data sets; a data set where that does not converge is
    optimised alone by `find_map`."""
    generator = torch.Generator(device=stacked.device).manual_seed(seed)
    z = stacked.init_z(1, init, generator)
    z, converged = _newton(stacked, z, max_iter, gtol)
    lp, grad = stacked.logdensity_and_grad(z, jacobian=False)
    params = stacked.constrain(z)
    covariance, usable = laplace_covariance(stacked, z)
    results = []
    for r, model in enumerate(stacked.models):
        # Without usable curvature the Newton steps may have run to a boundary, where the
        # gradient in unconstrained coordinates vanishes too: optimise that one alone.
        if not (converged[r] and bool(usable[r])):
            results.append(
                find_map(model, init, method, max_iter, gtol, lr, seed + r, torch.get_num_threads())
            )
            continue
        result = MapResult(
            {name: value[r] for name, value in params.items()},
            z[r],
            float(lp[r]),
            True,
            converged[r],
            float(grad[r].abs().max()) if grad.shape[1] else 0.0,
            "newton",
            covariance[r] if bool(usable[r]) else None,
        )
        results.append(result)
    return results


def _newton(model, z, max_iter, gtol):
    """Damped Newton ascent of the density without the Jacobian from `z` ``[datasets, dim]``;
    returns the end points and, per data set, the iteration at which it converged (0: not)."""
    damping = torch.full((z.shape[0],), 1e-3, dtype=z.dtype, device=z.device)
    converged = torch.zeros(z.shape[0], dtype=torch.int64, device=z.device)
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    lp, grad, hessian = log_density_hessian(model, z, jacobian=False)
    for iteration in range(1, max_iter + 1):
        matrix = (
            -hessian
            + damping[:, None, None] * (1.0 + hessian.diagonal(0, -2, -1).abs().unsqueeze(-1)) * eye
        )
        chol, info = torch.linalg.cholesky_ex(matrix)
        step = torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)
        # Converged where max |grad| meets gtol, or where a Newton step would raise the log
        # density by under gtol (half the Newton decrement g' H^-1 g): |grad| alone is far too
        # strict along a direction in which the posterior is very narrow. A data set stops one
        # step after that: the last, quadratic step takes it to the mode within rounding.
        small = grad.abs().amax(-1) <= gtol * lp.abs().clamp(min=1.0)
        small |= (info == 0) & (0.5 * (grad * step).sum(-1) <= gtol)
        done = converged > 0
        converged = torch.where(small & (converged == 0), iteration, converged)
        if bool(done.all()) or not bool(torch.isfinite(lp).all()):
            break
        ok = (info == 0) & ~done
        trial = torch.where(ok.unsqueeze(-1), z + step, z)
        lp_trial, grad_trial, hessian_trial = log_density_hessian(model, trial, jacobian=False)
        better = ok & (lp_trial.nan_to_num(-math.inf) >= lp) & torch.isfinite(grad_trial).all(-1)
        z = torch.where(better.unsqueeze(-1), trial, z)
        lp = torch.where(better, lp_trial, lp)
        grad = torch.where(better.unsqueeze(-1), grad_trial, grad)
        hessian = torch.where(better[:, None, None], hessian_trial, hessian)
        damping = torch.where(better, damping / 10, damping * 10).clamp(1e-12, 1e12)
    return z, converged.tolist()


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
