"""Draws from a model: parameters from the prior, data from `observe`."""

import contextlib

import torch

from .declarations import Draw, ModelError
from .density import _validation

# A prior restricted to a support (`Param(prior, support=...)`) is drawn by rejection: whole
# ancestral draws from the unrestricted priors until every restricted parameter lies inside its
# support, at most this many per draw.
PRIOR_ATTEMPTS = 1000


def sample_prior(model, draws, seed=0):
    """`draws` ancestral draws from the prior: {name: `[draws, *shape]`}."""
    out = {s.name: [] for s in model._slots}
    with _seeded(seed, model.device), _validation(False):
        for _ in range(draws):  # not a hot path: callable priors are written for one draw
            for name, x in _prior_draw(model).items():
                out[name].append(x)
    return {name: torch.stack(values) for name, values in out.items()}


def _prior_draw(model):
    """One draw of every parameter; by rejection where a prior is restricted to a support, so
    that the draws follow the model's (unnormalised) prior density exactly."""
    truncated = [s for s in model._slots if s.truncated]
    for _ in range(PRIOR_ATTEMPTS if truncated else 1):
        p = _ancestral(model)
        inside = [s.support_at(p, s.prior_at(p)).check(p.__dict__[s.name]).all() for s in truncated]
        if all(bool(i) for i in inside):
            return {s.name: p.__dict__[s.name] for s in model._slots}
    raise ModelError(
        f"Model '{model.name}': none of {PRIOR_ATTEMPTS} draws from the priors of "
        f"{[s.name for s in truncated]} fell inside their supports; a prior restricted to a "
        "support is drawn by rejection, so give a prior with more mass inside the support (or "
        "start from init='uniform')."
    )


def _ancestral(model):
    p = Draw(model)
    for s in model._slots:
        prior = s.prior_at(p)
        if prior is None:
            raise ModelError(
                f"Model '{model.name}': '{s.name}' has a flat (improper) prior, which cannot "
                "be drawn from; give it a proper prior, or start from init='uniform'."
            )
        p.__dict__[s.name] = _draw(prior, s.shape)
    return p


def sample_data(model, params, seed=0):
    """Simulate every field `observe` returns, once per draw of `params`
    ({name: `[draws, *shape]`}); returns {field: `[draws, *data_shape]`}."""
    draws = next(iter(params.values())).shape[0]
    out = {}
    with _seeded(seed, model.device), _validation(False):
        for i in range(draws):  # not a hot path; `observe` is written for one draw
            p = Draw(model)
            for s in model._slots:
                p.__dict__[s.name] = torch.as_tensor(
                    params[s.name][i], dtype=model.dtype, device=model.device
                )
            for field, dist in model.observe(p).items():
                shape = model.data[field].shape if field in model.data else dist.batch_shape
                out.setdefault(field, []).append(_draw(dist, tuple(shape)))
    return {field: torch.stack(values) for field, values in out.items()}


def _draw(prior, shape):
    """One draw of shape `shape` from a prior whose own shape broadcasts to it."""
    own = tuple(prior.batch_shape + prior.event_shape)
    extra = shape[: len(shape) - len(own)]
    if shape[len(extra) :] == own:
        return prior.sample(extra)
    return prior.expand(shape[: len(shape) - len(prior.event_shape)]).sample()


@contextlib.contextmanager
def _seeded(seed, device):
    """torch.distributions' sample() takes no generator: fork the global RNG and seed it."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
