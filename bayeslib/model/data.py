"""A model's data: converted and checked when given, checked against `observe` when built, and
checked again when `replace` swaps it for other data."""

import numpy as np
import torch
from torch.distributions import Distribution, constraints

from .declarations import ModelError, call_user

_NUMERIC = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

# Supports that are the same for all parameter values, so the data can be checked against them
# once, when the model is built.
_FIXED_SUPPORTS = (
    constraints.real,
    constraints.positive,
    constraints.nonnegative,
    constraints.unit_interval,
    constraints.simplex,
    constraints.real_vector,
    constraints.positive_definite,
)


def as_data(model_name, field, value):
    """`value` as a finite, non-empty float64 tensor, or a ModelError naming `field`."""
    where = f"Model '{model_name}': data '{field}'"
    try:
        tensor = value if torch.is_tensor(value) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as error:
        raise ModelError(
            f"{where} is not numeric ({error}); pass numbers as a list, NumPy array or tensor."
        ) from None
    if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in _NUMERIC):
        raise ModelError(f"{where} has dtype {tensor.dtype}; pass real numbers or integers.")
    tensor = tensor.detach().to(torch.float64).clone()
    if tensor.numel() == 0:
        raise ModelError(f"{where} is empty; give at least one observation.")
    bad = ~torch.isfinite(tensor)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ModelError(
            f"{where} has {int(bad.sum())} NaN or infinite value(s), the first at index "
            f"{first}; remove or impute them before building the model."
        )
    return tensor


def broadcasts_to(shape, target):
    try:
        return torch.broadcast_shapes(shape, target) == tuple(target)
    except RuntimeError:
        return False


def _fixed_support(dist):
    """Whether a distribution's support is the same for all parameter values: real, positive,
    integers, 0/1, simplex, and the like."""
    support = dist.support
    integers = support.is_discrete and not hasattr(support, "upper_bound")
    return integers or any(support is fixed for fixed in _FIXED_SUPPORTS)


def check_observe(model, p):
    """Check what `observe` returns at `p` against the data; -> the observed fields."""
    observed = call_user(model, model.observe, p, "the data", "observe method")
    if not isinstance(observed, dict):
        raise ModelError(
            f"Model '{model.name}': observe must return a dict {{data field: Distribution}}, "
            f"not {type(observed).__name__}."
        )
    for field, dist in observed.items():
        where = f"Model '{model.name}', observe['{field}']"
        if not isinstance(dist, Distribution):
            raise ModelError(f"{where} is {type(dist).__name__}, not a torch Distribution.")
        if field not in model.data:
            if field in model.unobserved:
                continue
            raise ModelError(
                f"{where}: '{field}' is not a data field of the model; data fields: "
                f"{list(model.data)}. Pass it to super().__init__ or rename the key."
            )
        value, dist_shape = model.data[field], dist.batch_shape + dist.event_shape
        if not broadcasts_to(dist_shape, value.shape):
            raise ModelError(
                f"{where}: the distribution has shape {tuple(dist_shape)} but the data has "
                f"shape {tuple(value.shape)}; broadcasting would change the data's shape. "
                "Index the parameters so the shapes agree."
            )
        if _fixed_support(dist) and not dist.support.check(value).all():
            raise ModelError(
                f"{where}: the data is outside the support of {type(dist).__name__} "
                f"({dist.support}); check the data or the distribution."
            )
    return [f for f in observed if f in model.data]


def check_replacement(model, replaced, given):
    """Refuse `replaced` (`model` rebuilt on the fields `given`) where the new data changes a
    parameter's shape: draws of the old model would not fit it."""
    changed = [
        name
        for name, shape in model.param_shapes.items()
        if replaced.param_shapes.get(name) != shape
    ]
    if not changed:
        return
    shapes = ", ".join(
        f"'{name}' from {model.param_shapes[name]} to {replaced.param_shapes[name]}"
        for name in changed
    )
    fields = [f for f in given if f in model.data and f in replaced.data]
    reshaped = [f for f in fields if model.data[f].shape[1:] != replaced.data[f].shape[1:]]
    fixes = "; ".join(
        f"'{f}' has shape {tuple(replaced.data[f].shape)}, give shape "
        f"(rows, {', '.join(str(n) for n in model.data[f].shape[1:])})"
        for f in reshaped
    )
    raise ModelError(
        f"Model '{model.name}': replace({', '.join(f + '=...' for f in given)}) changes the "
        f"shape of {shapes}; "
        "replace may change the number of rows of the data, not the parameters' shapes. "
        + (fixes + "." if fixes else "Give data of the shapes the model was built on.")
    )
