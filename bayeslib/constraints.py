"""Supports of parameters: torch's constraints, plus the ones torch lacks.

Everything in ``torch.distributions.constraints`` is re-exported, so ``bl.constraints.positive``
works. Added here: ``ordered_vector`` (strictly increasing vectors, e.g. mixture locations
``mu[0] < mu[1]``) with its bijection from the real vectors, registered with ``biject_to``.
"""

import torch
from torch.distributions import biject_to, transform_to
from torch.distributions.constraints import *  # noqa: F403
from torch.distributions.constraints import Constraint, real_vector
from torch.distributions.transforms import Transform

__all__ = [name for name in dir(torch.distributions.constraints) if not name.startswith("_")]
__all__ += ["ordered_vector", "OrderedTransform"]


class _OrderedVector(Constraint):
    """Vectors whose entries strictly increase along the last dimension."""

    event_dim = 1

    def check(self, value):
        return (value[..., 1:] > value[..., :-1]).all(-1)

    def __repr__(self):
        return "OrderedVector()"


ordered_vector = _OrderedVector()


class OrderedTransform(Transform):
    """Real vector -> ordered vector: y[0] = x[0], y[i] = y[i-1] + exp(x[i])."""

    domain = real_vector
    codomain = ordered_vector
    bijective = True

    def __eq__(self, other):
        return isinstance(other, OrderedTransform)

    def _call(self, x):
        steps = torch.cat([x[..., :1], x[..., 1:].exp()], dim=-1)
        return steps.cumsum(-1)

    def _inverse(self, y):
        return torch.cat([y[..., :1], (y[..., 1:] - y[..., :-1]).log()], dim=-1)

    def log_abs_det_jacobian(self, x, y):
        return x[..., 1:].sum(-1)


@biject_to.register(_OrderedVector)
@transform_to.register(_OrderedVector)
def _transform_to_ordered(constraint):
    return OrderedTransform()
