"""Point estimates: the posterior mode (MAP)."""

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch.distributions import constraints

from .model import Model, ModelError
from .rejections import FATAL
from .stacked import Stacked
from .threads import chooses_threads, work

METHODS = ("lbfgs", "adam")
# Fresh random starts tried when an optimisation from a random start ends where the log
# density is not finite, or stops early short of a mode (a line search that stepped to where
# a scale underflows to zero, or where the model's code raises, and gave up).
ATTEMPTS = 10
# An optimiser that stops without converging where an unconstrained coordinate lies this far
# out (a scale of e^-20 = 2e-9 or e^20 = 5e8) and the log density still grows outward has run
# away to an edge of the parameter space: the posterior has no mode there.
RUNAWAY = 20.0
# How far beyond the end point (in unconstrained units) the log density is probed for growth.
RUNAWAY_PROBES = (1.0, 10.0)


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
    (no mode to approximate around); unbounded: the parameters (``"sigma"``, ``"tau[2]"``)
    along which the optimiser ran away to an edge of the parameter space, the log density
    still growing there (empty when it did not): then there is no mode, and
    `check_mode` raises. `bl.sample(init=result)` starts chains and scales its proposals
    from it.
    """

    params: dict
    z: torch.Tensor
    log_density: float
    converged: bool
    iterations: int
    grad_max: float
    method: str
    covariance: torch.Tensor | None = None
    unbounded: list[str] = field(default_factory=list)


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

    A posterior with no mode (a scale running to 0 with one observation or constant data
    under a flat prior) gives a warning naming the parameters that ran away and a result
    with ``converged=False`` and ``unbounded`` naming them; `check_mode` turns it into an
    error (as `bl.sample(init="map")` does).
    """
    if isinstance(model, Stacked):
        results = _find_map_stacked(model, init, method, max_iter, gtol, lr, seed)
        unbounded = [r for r, result in enumerate(results) if result.unbounded]
        if unbounded:
            runaway = results[unbounded[0]].unbounded
            warnings.warn(
                f"{_no_mode(model, runaway)} (data sets {unbounded}; the first shown)",
                stacklevel=3,
            )
        return results
    if not isinstance(model, Model):
        raise TypeError(f"find_map needs a bl.Model, not {type(model).__name__}.")
    if method not in METHODS:
        raise ValueError(f"find_map: method={method!r} is unknown; use one of {METHODS}.")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"find_map: max_iter must be a positive int, not {max_iter!r}.")
    result = _find_map(model, init, method, max_iter, gtol, lr, seed)
    if result.unbounded:
        warnings.warn(_no_mode(model, result.unbounded), stacklevel=3)
    return result


def check_mode(result: MapResult, model) -> None:
    """Raise a ModelError where `result` (from `find_map`; a list for a stack) is no mode: the
    optimiser ran away to an edge of the parameter space. For starting chains from it."""
    results = result if isinstance(result, list) else [result]
    for r, one in enumerate(results):
        if one.unbounded:
            where = f" (data set {r})" if isinstance(model, Stacked) else ""
            raise ModelError(
                f"{_no_mode(model, one.unbounded)}{where}; there is no mode to start from: use "
                "init='uniform', or fix the model as said."
            )


def _no_mode(model, unbounded: list[str]) -> str:
    return (
        f"Model '{model.name}': the posterior has no mode: the log density grows without bound "
        f"as {unbounded} run(s) to the edge of the parameter space (find_map stopped at a "
        "point where it still grows). Give them a proper prior, or more (non-constant) data."
    )


def _find_map(model, init, method, max_iter, gtol, lr, seed) -> MapResult:
    """`find_map` for one model, without the argument checks and the warning. From a random
    start, a run that ends where the density is not finite, or that stopped early short of a
    mode (a line search that gave up after stepping where the model's code raises or gives
    NaN), is tried again from a fresh start."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    random_start = isinstance(init, str) and init in ("uniform", "prior")
    result, error = None, None
    for _ in range(ATTEMPTS if random_start else 1):
        start = model.init_z(1, init, generator)
        error = _raised(model.check_logdensity, start, jacobian=False)
        if error is not None:  # the model's code raises at this start: draw another
            continue
        result = _attempt(model, start[0], method, max_iter, gtol, lr)
        done = result.converged or result.unbounded or result.iterations >= max_iter
        if _finite(result) and done:
            break
    if result is None:
        raise ModelError(
            f"Model '{model.name}': find_map: its code raised at every start tried "
            f"({type(error).__name__}: {error}); give init={{parameter: values}} where the "
            "model is defined, or priors or supports on which its code is defined."
        )
    if not _finite(result):
        raise ModelError(
            f"Model '{model.name}': the optimiser reached a point where the log density is "
            f"{result.log_density} ({result.params}); the posterior may be improper or "
            "unbounded there."
        )
    return result


def _finite(result: MapResult) -> bool:
    return math.isfinite(result.log_density) and math.isfinite(result.grad_max)


def _attempt(model, start, method, max_iter, gtol, lr) -> MapResult:
    """One run of the optimiser from `start` ``[dim]``, judged: converged, running away to an
    edge, or neither; its log density is not finite where it ended so (and had not been
    running away before)."""
    z, log_density, grad, iterations, best = _optimise(model, start, method, max_iter, lr, gtol)
    finite = math.isfinite(log_density) and bool(torch.isfinite(grad).all())
    if not finite and best is not None:
        # The optimiser went on to where the density is NaN or infinite: where it was last
        # finite tells whether it was running away to an edge.
        best_lp, best_grad = _log_density_and_grad(model, best)
        if running_away(model, best, best_grad):
            z, log_density, grad, finite = best, best_lp, best_grad, True
    params = {name: value[0] for name, value in model.constrain(z[None]).items()}
    grad_max = float(grad.abs().max()) if grad.numel() else 0.0
    if not finite:
        return MapResult(params, z, log_density, False, iterations, grad_max, method)
    covariance, usable = laplace_covariance(model, z[None])
    # Also converged where a Newton step would raise the log density by under gtol (half the
    # Newton decrement g' H^-1 g): max |grad| alone is far too strict along a direction the
    # posterior is very narrow in (a slope over calendar years: curvature near 1e8, where
    # |grad| = 5e-4 lies 1e-8 posterior sds from the mode).
    decrement = float(grad @ covariance[0] @ grad) if bool(usable[0]) else math.inf
    converged = grad_max <= gtol * max(1.0, abs(log_density)) or decrement / 2 <= gtol
    covariance = covariance[0] if converged and bool(usable[0]) else None
    unbounded = [] if converged else running_away(model, z, grad)
    return MapResult(
        params, z, log_density, converged, iterations, grad_max, method, covariance, unbounded
    )


def running_away(model, z, grad) -> list[str]:
    """The parameters along which the log density (without the Jacobian) of `model` keeps
    growing beyond `z` ``[dim]``, where the optimiser stopped: constrained coordinates (a
    scale, a probability: a real-valued parameter's distant mode would look the same)
    further out than `RUNAWAY`, with the gradient `grad` of the log density pointing further
    out and the log density higher at each of `RUNAWAY_PROBES` beyond."""
    names, constrained = _coordinates(model)
    outward = torch.sign(z)
    far = (z.abs() > RUNAWAY) & (outward * grad > 0) & constrained.to(z.device)
    far = far.nonzero().flatten().tolist()
    if not far:
        return []
    steps = torch.tensor(RUNAWAY_PROBES, dtype=z.dtype, device=z.device)
    probes = z.repeat(len(far), len(steps), 1)
    for i, j in enumerate(far):
        probes[i, :, j] += outward[j] * steps
    try:
        lp = model.logdensity(torch.cat([z[None], probes.flatten(0, 1)]), jacobian=False)
    except Exception:  # the model cannot be evaluated out there: no evidence of growth
        return []
    ladder = torch.cat([lp[:1].expand(len(far), 1), lp[1:].reshape(len(far), -1)], dim=1)
    grows = (ladder.diff(dim=1) > 0).all(dim=1).tolist()
    return [names[j] for j, up in zip(far, grows, strict=True) if up]


def _coordinates(model) -> tuple[list[str], torch.Tensor]:
    """A name for each unconstrained coordinate (``"sigma"``, or ``"tau[2]"`` in a vector),
    and whether it maps to a constrained parameter (not the whole real line)."""
    names, constrained = [], []
    for s in model._slots:
        width = s.stop - s.start
        scalar = width == 1 and tuple(s.shape) == ()
        names += [s.name] if scalar else [f"{s.name}[{i}]" for i in range(width)]
        constrained += [not _is_real_line(s.support)] * width
    return names, torch.tensor(constrained, dtype=torch.bool)


def _is_real_line(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return isinstance(support, type(constraints.real))


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
    z, lp, grad, converged = _newton(stacked, z, max_iter, gtol)
    params = stacked.constrain(z)
    try:
        covariance, usable = laplace_covariance(stacked, z)
    except FATAL:
        raise
    except Exception:  # the model's code raises at some data set's point: each one alone
        covariance, usable = None, [False] * stacked.datasets
    results = []
    for r, model in enumerate(stacked.models):
        # Without usable curvature the Newton steps may have run to a boundary, where the
        # gradient in unconstrained coordinates vanishes too: optimise that one alone.
        if not (converged[r] and bool(usable[r])):
            results.append(_find_map(model, init, method, max_iter, gtol, lr, seed + r))
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
    returns the end points, the log density and its gradient there (NaN where the model's
    code raised) and, per data set, the iteration at which it converged (0: not)."""
    damping = torch.full((z.shape[0],), 1e-3, dtype=z.dtype, device=z.device)
    converged = torch.zeros(z.shape[0], dtype=torch.int64, device=z.device)
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    lp, grad, hessian = _hessian_or_nan(model, z)
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
        lp_trial, grad_trial, hessian_trial = _hessian_or_nan(model, trial)
        better = ok & (lp_trial.nan_to_num(-math.inf) >= lp) & torch.isfinite(grad_trial).all(-1)
        z = torch.where(better.unsqueeze(-1), trial, z)
        lp = torch.where(better, lp_trial, lp)
        grad = torch.where(better.unsqueeze(-1), grad_trial, grad)
        hessian = torch.where(better[:, None, None], hessian_trial, hessian)
        damping = torch.where(better, damping / 10, damping * 10).clamp(1e-12, 1e12)
    return z, lp, grad, converged.tolist()


def _hessian_or_nan(stacked, z):
    """`log_density_hessian` (without the Jacobian) of each data set at its row of `z`; where
    the model's code raises, each data set alone, NaN for those where it raises."""
    try:
        return log_density_hessian(stacked, z, jacobian=False)
    except FATAL:
        raise
    except Exception:
        pass
    parts = []
    for model, row in zip(stacked.models, z.split(1), strict=True):
        try:
            parts.append(log_density_hessian(model, row, jacobian=False))
        except FATAL:
            raise
        except Exception:
            dim = row.shape[1]
            parts.append(
                (
                    row.new_full((1,), math.nan),
                    torch.full_like(row, math.nan),
                    row.new_full((1, dim, dim), math.nan),
                )
            )
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))


def _optimise(model, z, method, max_iter, lr, gtol):
    """From unconstrained `z`: (z, log density, its gradient, iterations) where it stopped,
    and the point of highest finite log density it evaluated (None if none was finite)."""
    z = z.clone().requires_grad_(True)
    best = {"lp": -math.inf, "z": None}

    def objective():
        lp = model.logdensity(z[None], jacobian=False)[0]
        value = float(lp.detach())
        if math.isfinite(value) and value > best["lp"]:
            best.update(lp=value, z=z.detach().clone())
        return -lp

    if method == "lbfgs":
        iterations = _lbfgs(objective, z, max_iter)
    else:
        iterations = _adam(objective, z, max_iter, lr, gtol)
    z = z.detach()
    log_density, grad = _log_density_and_grad(model, z)
    return z, log_density, grad, iterations, best["z"]


def _log_density_and_grad(model, z):
    """The log density (without the Jacobian) at `z` ``[dim]`` and its gradient; -inf and
    NaN where the model's code raises."""
    try:
        lp, grad = model.logdensity_and_grad(z[None], jacobian=False)
    except FATAL:
        raise
    except Exception:
        return -math.inf, torch.full_like(z, math.nan)
    return float(lp[0]), grad[0]


def _raised(fn, *args, **kwargs) -> Exception | None:
    """The Exception `fn(*args, **kwargs)` raised (a `ModelError` and fatal errors pass
    through), or None."""
    try:
        fn(*args, **kwargs)
    except (ModelError, *FATAL):
        raise
    except Exception as error:
        return error
    return None


def _loss_and_backward(objective):
    """The loss, its gradient accumulated; None where the model's code raised or the loss is
    NaN."""
    try:
        loss = objective()
        loss.backward()
    except FATAL:
        raise
    except Exception:
        return None
    return None if bool(loss.isnan()) else loss


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
        loss = _loss_and_backward(objective)
        if loss is None:
            # An infinite loss with a NaN gradient makes the strong Wolfe line search bisect
            # back toward the last point that worked (a NaN loss breaks it).
            z.grad = torch.full_like(z, math.nan)
            return torch.tensor(math.inf, dtype=z.dtype, device=z.device)
        return loss

    optimizer.step(closure)
    return optimizer.state[optimizer._params[0]]["n_iter"]


def _adam(objective, z, max_iter, lr, gtol):
    optimizer = torch.optim.Adam([z], lr=lr)
    # A decaying step lets Adam settle instead of circling the mode at the scale of lr.
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=50)
    last = z.detach().clone()
    for iteration in range(1, max_iter + 1):
        optimizer.zero_grad()
        loss = _loss_and_backward(objective)
        if loss is None:  # back to the last point that worked, with shorter steps
            with torch.no_grad():
                z.copy_(last)
            for group in optimizer.param_groups:
                group["lr"] /= 2
            continue
        last = z.detach().clone()
        loss = loss.item()
        if z.grad.abs().max() <= gtol * max(1.0, abs(loss)):
            return iteration
        optimizer.step()
        schedule.step(loss)
    return max_iter
