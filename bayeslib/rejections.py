"""Errors raised by a model's code while a sampler evaluates proposals are rejections, as in
Stan: a Cholesky factorisation that fails ("not positive-definite"), a domain error, any
Exception from the model's code rejects the proposals of the chains concerned (and counts as
a divergence for HMC and NUTS); the other chains go on.

The batched call runs first, so a model that never raises keeps all of its speed. Only when it
raises is the batch evaluated again with the model's own code, in halves, down to the chains
whose own evaluation raises (k failing chains of n cost about k log2(n) calls): their log
density and gradient are NaN, which the samplers reject. Mistakes in the model's code (a
TypeError, a misspelt attribute) surface when the model is built, where it is evaluated once,
so treating every Exception as a rejection here hides no bug; KeyboardInterrupt and running out
of memory still stop the run.
"""

import math
from dataclasses import dataclass

import torch

from .model import ModelError
from .samplers.base import Target
from .stacked import Stacked
from .tracing import TracingError

# Errors that say nothing about the proposal (out of memory; a traced function given inputs it
# was not traced for): they stop the run.
FATAL = (MemoryError, torch.cuda.OutOfMemoryError, TracingError)


@dataclass
class ModelErrors:
    """The chain evaluations at which the model's code raised: how many (``count``) of all
    (``evaluations``), and the first error as ``"Type: message"``."""

    count: int = 0
    evaluations: int = 0
    first: str | None = None

    def record(self, error: Exception) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{type(error).__name__}: {error}"


def rejecting(target: Target, model, errors: ModelErrors) -> Target:
    """`target` (the batched log density of `model`, traced or the model's own) with errors
    raised while evaluating it turned into NaN log densities and gradients for the chains
    concerned, counted in `errors`."""
    guarded = _guarded(target.logdensity_and_grad, model, "logdensity_and_grad", errors)
    return target._replace(
        logdensity_and_grad=guarded,
        logdensity=_guarded(target.logdensity, model, "logdensity", errors),
    )


def finite_starts(model, z, needs_grad: bool, errors: ModelErrors | None = None) -> torch.Tensor:
    """``[chains]`` bool: whether the log density (and, with `needs_grad`, its gradient) of
    `model` is finite at each start `z` ``[chains, dim]``. A start where the model's code
    raises is not finite; the error is recorded in `errors` (see `start_error`)."""
    errors = errors if errors is not None else ModelErrors()
    errors.evaluations += z.shape[0]
    if needs_grad:
        lp, grad = _own_or_nan(model, "logdensity_and_grad", z, errors)
        return torch.isfinite(lp) & torch.isfinite(grad).all(-1)
    return torch.isfinite(_own_or_nan(model, "logdensity", z, errors))


def start_error(model, errors: ModelErrors) -> ModelError | None:
    """The error to raise when no start was found (None if the model's code never raised
    there, when `model.check_logdensity` names the term that is not finite)."""
    if errors.count == 0:
        return None
    return ModelError(
        f"Model '{model.name}': no start was found where its code runs: it raised at "
        f"{errors.count} of the {errors.evaluations} starts tried (the first: {errors.first}). "
        "Start where the model is defined (init={parameter: values}), or give its parameters "
        "priors or supports on which its code is defined (e.g. a correlation in (-1, 1) that "
        "keeps a covariance positive-definite)."
    )


def rejection_warning(model, errors: ModelErrors) -> str:
    """The warning `sample` gives once, at its end, when the model's code raised."""
    return (
        f"Model '{model.name}': its code raised at {errors.count} of {errors.evaluations} chain "
        f"evaluations while sampling (the first: {errors.first}). Those proposals were "
        "rejected (counted as divergences by HMC and NUTS), as Stan does. If they are many, "
        "or the posterior has mass where the model raises, give its parameters priors or "
        "supports on which its code is defined."
    )


def _guarded(batched, model, method: str, errors: ModelErrors):
    def call(z):
        errors.evaluations += z.shape[0]
        try:
            return batched(z)
        except FATAL:
            raise
        except Exception:
            pass
        return _own_or_nan(model, method, z, errors)

    return call


def _own_or_nan(model, method: str, z, errors: ModelErrors):
    """`model.<method>(z)` with the model's own code; chains where it raises get NaN. A stack
    is evaluated data set by data set (each chain against its own data set)."""
    with_grad = method == "logdensity_and_grad"
    if not isinstance(model, Stacked):
        return _or_nan(getattr(model, method), z, errors, with_grad)
    blocks = z.chunk(model.datasets)
    parts = [
        _or_nan(getattr(one, method), block, errors, with_grad)
        for one, block in zip(model.models, blocks, strict=True)
    ]
    return _cat(parts)


def _or_nan(fn, z, errors: ModelErrors, with_grad: bool):
    """`fn(z)` for independent chains `z` ``[n, dim]``; where it raises, the two halves of `z`
    are evaluated apart, down to single chains: those that raise get NaN."""
    try:
        return fn(z)
    except FATAL:
        raise
    except Exception as error:
        if z.shape[0] == 1:
            errors.record(error)
            return _nan(z, with_grad)
    half = (z.shape[0] + 1) // 2
    return _cat(
        [_or_nan(fn, z[:half], errors, with_grad), _or_nan(fn, z[half:], errors, with_grad)]
    )


def _nan(z, with_grad: bool):
    lp = z.new_full(z.shape[:1], math.nan)
    return (lp, torch.full_like(z, math.nan)) if with_grad else lp


def _cat(parts):
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))
    return torch.cat(parts)
