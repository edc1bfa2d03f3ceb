"""The log density: each parameter's slot in the flat unconstrained vector, its transform and
Jacobian, the priors, the likelihood and the model's own factors."""

import contextlib
import inspect
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import Distribution, Transform, biject_to, constraints

from . import supports
from .data import broadcasts_to
from .declarations import Draw, ModelError, call_user


@dataclass
class Slot:
    """Where one parameter lives in the flat unconstrained vector, and how to map it."""

    name: str
    shape: tuple
    unconstrained_shape: tuple
    start: int
    stop: int
    prior: Distribution | None  # static prior, already on the model's dtype and device
    prior_fn: object  # callable prior, evaluated per call
    support_fn: object  # callable support, evaluated per call
    transform: Transform | None  # static bijection; None when it depends on other parameters
    support: constraints.Constraint | None  # static support; None when it depends on others
    truncated: bool  # a prior restricted to a declared support

    def prior_at(self, p):
        """The prior given the parameters declared above, in `p` (None: flat)."""
        return self.prior if self.prior_fn is None else self.prior_fn(p)

    def support_at(self, p, prior):
        """The support given the parameters declared above, in `p`, and the prior there."""
        if self.support is not None:
            return self.support
        return self.support_fn(p) if self.support_fn else prior.support


@contextlib.contextmanager
def _validation(enabled):
    previous = Distribution._validate_args
    Distribution.set_default_validate_args(enabled)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(previous)


def sum_to(values, batch_shape):
    """Sum a log-prob tensor over everything but the leading batch dimensions."""
    return values.reshape(batch_shape + (-1,)).sum(-1)


def _cast_distribution(dist, dtype, device):
    """Rebuild a distribution from its tensor arguments on dtype/device, when it allows it."""
    args = {
        k: getattr(dist, k)
        for k in dist.arg_constraints
        if k in vars(dist) or isinstance(inspect.getattr_static(type(dist), k, None), property)
    }
    if not args:
        return dist
    cast = {
        k: v.to(device=device, dtype=dtype) if torch.is_tensor(v) else v for k, v in args.items()
    }
    try:
        rebuilt = type(dist)(**cast)
    except Exception:
        return dist
    same_shape = rebuilt.batch_shape == dist.batch_shape and rebuilt.event_shape == dist.event_shape
    return rebuilt if same_shape else dist


def build_slot(model, name, param, p, start):
    """Resolve parameter `name`'s shape, prior and support at the draw `p` (the parameters
    above it, at zero in unconstrained space); set its own value in `p`."""
    where = f"Model '{model.name}', parameter '{name}'"
    shape = param.shape
    if callable(shape):
        shape = call_user(model, shape, p, name, "shape")
    prior, prior_fn = _prior(model, name, param, p)
    if prior is not None:
        prior_shape = prior.batch_shape + prior.event_shape
        shape = tuple(prior_shape) if shape is None else tuple(shape)
        if not broadcasts_to(prior_shape, shape):
            raise ModelError(
                f"{where}: the prior has shape {tuple(prior_shape)}, which does not fit the "
                f"declared shape {shape}; make them agree."
            )
    shape = tuple(shape) if shape is not None else ()
    support, support_fn = _support(model, name, param, p, prior)
    try:
        transform = biject_to(support)
    except NotImplementedError:
        source = "support=" if param.support is not None else f"its prior {type(prior).__name__}"
        raise ModelError(
            f"{where}: the support {support} (from {source}) has no bijection to the real "
            "numbers, so it cannot be sampled; bayeslib samples continuous parameters: "
            "marginalize a discrete parameter out of the model, or give a continuous prior."
        ) from None
    truncated = prior is not None and param.support is not None
    if truncated and not supports.support_inside(
        support, prior.support, shape, model.dtype, model.device
    ):
        raise ModelError(
            f"{where}: the support {support} is not inside the support of its prior "
            f"{type(prior).__name__} ({prior.support}); support= restricts the prior, so give "
            "a support inside the prior's, or a prior whose support holds it."
        )
    unconstrained_shape = tuple(transform.inverse_shape(shape))
    stop = start + int(np.prod(unconstrained_shape, dtype=np.int64))
    u = torch.zeros(unconstrained_shape, dtype=model.dtype, device=model.device)
    p.__dict__[name] = transform(u)
    static = support_fn is None and (param.support is not None or prior_fn is None)
    return Slot(
        name,
        shape,
        unconstrained_shape,
        start,
        stop,
        prior if prior_fn is None else None,
        prior_fn,
        support_fn,
        transform if static else None,
        support if static else None,
        truncated,
    )


def _prior(model, name, param, p):
    """(the prior at `p`, its callable or None)."""
    prior = param.prior
    if prior is None:
        return None, None
    if isinstance(prior, Distribution):
        return _cast_distribution(prior, model.dtype, model.device), None
    at_p = call_user(model, prior, p, name, "prior")
    if not isinstance(at_p, Distribution):
        raise ModelError(
            f"Model '{model.name}', parameter '{name}': the prior callable returned "
            f"{type(at_p).__name__}, not a torch Distribution."
        )
    return at_p, prior


def _support(model, name, param, p, prior):
    """(the support at `p`, its callable or None): the declared one, else the prior's own,
    else the real line."""
    support = param.support
    if support is None:
        return (prior.support if prior is not None else constraints.real), None
    if isinstance(support, constraints.Constraint):
        return support, None
    at_p = call_user(model, support, p, name, "support")
    if not isinstance(at_p, constraints.Constraint):
        raise ModelError(
            f"Model '{model.name}', parameter '{name}': the support callable returned "
            f"{type(at_p).__name__}, not a constraint from bl.constraints."
        )
    return at_p, support


def check_factors(model, p):
    """Check that `factors` returns {name: tensor} at `p`."""
    factors = call_user(model, model.factors, p, "the model", "factors method")
    if not isinstance(factors, dict):
        raise ModelError(
            f"Model '{model.name}': factors must return a dict {{name: tensor}}, not "
            f"{type(factors).__name__}."
        )
    for name, value in factors.items():
        if not (isinstance(name, str) and torch.is_tensor(value)):
            raise ModelError(
                f"Model '{model.name}': factors[{name!r}] is {type(value).__name__}; give each "
                "factor a str name and a tensor value (the log-density term)."
            )


def walk(model, z, p, jacobian, terms=None):
    """Constrain z slot by slot into p; return the prior (+ log|J|) part of the density."""
    batch_shape = z.shape[:-1]
    lp = z.new_zeros(batch_shape)
    for s in model._slots:
        u = z[..., s.start : s.stop].reshape(batch_shape + s.unconstrained_shape)
        prior = s.prior_at(p)
        transform = s.transform
        if transform is None:
            transform = biject_to(s.support_at(p, prior))
        x = transform(u)
        p.__dict__[s.name] = x
        if prior is not None:
            term = sum_to(prior.log_prob(x), batch_shape)
            lp = lp + term
            if terms is not None:
                terms[f"prior of {s.name}"] = term
        if jacobian:
            term = sum_to(transform.log_abs_det_jacobian(u, x), batch_shape)
            lp = lp + term
            if terms is not None:
                terms[f"log|J| of {s.name}"] = term
    return lp


def log_joint(model, z, jacobian=True, terms=None):
    """Priors, Jacobians, likelihoods and factors at `z` (one draw, or a batch for a batched
    model); each term also into `terms` when given."""
    p = Draw(model)
    lp = walk(model, z, p, jacobian, terms)
    batch_shape = z.shape[:-1]
    for field, dist in model.observe(p).items():
        if field in model.data:
            term = sum_to(dist.log_prob(model.data[field]), batch_shape)
            lp = lp + term
            if terms is not None:
                terms[f"likelihood of {field}"] = term
    for name, value in model.factors(p).items():
        term = sum_to(value, batch_shape)
        lp = lp + term
        if terms is not None:
            terms[f"factor {name}"] = term
    return lp


def log_likelihood_one(model, z):
    p = Draw(model)
    walk(model, z, p, jacobian=False)
    observed = model.observe(p)
    return {field: observed[field].log_prob(model.data[field]) for field in model.observed}


def constrain_one(model, z):
    p = Draw(model)
    walk(model, z, p, jacobian=False)
    return {s.name: p.__dict__[s.name] for s in model._slots}


def unconstrain_one(model, values):
    """-> (z, whether each parameter's values lie in its support)."""
    p, parts, inside = Draw(model), [], []
    for s in model._slots:
        x = values[s.name]
        support = s.support_at(p, s.prior_at(p))
        p.__dict__[s.name] = x
        batch_shape = x.shape[: x.ndim - len(s.shape)]
        parts.append(biject_to(support).inv(x).reshape(batch_shape + (-1,)))
        inside.append(support.check(x).reshape(batch_shape + (-1,)).all(-1))
    return torch.cat(parts, dim=-1), torch.stack(inside, dim=-1)


def check_batch(model):
    """The log density of a batch of 3 chains must evaluate and have shape (3,)."""
    z = torch.zeros(3, model.dim, dtype=model.dtype, device=model.device)
    try:
        lp = model.logdensity(z)
    except Exception as error:
        fix = (
            "write observe and priors for a leading chain dimension (p.mu[..., 0:1])"
            if model.batched
            else "avoid Python control flow on values (if, .item()) in observe and priors"
        )
        raise ModelError(
            f"Model '{model.name}': its log density cannot be evaluated for a batch of chains "
            f"({type(error).__name__}: {error}); {fix}."
        ) from error
    if lp.shape != (3,):
        raise ModelError(
            f"Model '{model.name}': a batch of 3 chains gave a log density of shape "
            f"{tuple(lp.shape)}, not (3,); with batched = True, index parameters with "
            "'...' so that each term keeps the chain dimension first."
        )


def value_and_grad(logdensity, z):
    """(`logdensity(z)` `[chains]`, its gradient `[chains, dim]`), both detached: chains are
    independent, so the gradient of the sum is each chain's own."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp = logdensity(z)
        (grad,) = torch.autograd.grad(lp.sum(), z)
    return lp.detach(), grad
