"""Whether a parameter's declared support lies inside its prior's support.

`Param(prior, support=S)` is the prior restricted to S (up to a constant). That is a prior only
when S lies inside the prior's support; the rule, with boundary points ignored (a continuous
prior gives them no mass):

1. The prior's support is the real line (or real vectors): every support lies inside it.
2. Both are boxes, or S lies in a known box (`real`, `positive`, `nonnegative`, `greater_than`,
   `less_than`, `interval`, `half_open_interval`, `unit_interval`; an `ordered_vector` lies in
   the real box, a `simplex` in [0, 1]) and the prior's support is a box: S's bounds must lie
   within the prior's, element by element.
3. The same constraint object (`simplex` in `simplex`, `ordered_vector` in `ordered_vector`).
4. Any other pair: points of S, the image under S's bijection of `CHECK_POINTS` normal draws in
   unconstrained space, must all lie in the prior's support.

A support or prior that depends on other parameters is checked once, where the model is built
(each parameter above at the image of zero under its bijection, e.g. 0.5 for a uniform on
(0, 1)); where it leaves the prior's support at other values, the prior is restricted to the
intersection.
"""

import math

import torch
from torch.distributions import biject_to, constraints

from ..constraints import ordered_vector

CHECK_POINTS = 1000
# Unconstrained points for rule 4 are drawn with this standard deviation: well inside the range
# where every bijection still returns distinct values in float64.
CHECK_SCALE = 2.0


def support_inside(inner, outer, shape, dtype, device):
    """Whether constraint `inner` lies inside `outer` for a parameter of `shape`."""
    if inner is outer or isinstance(_base(outer), constraints._Real):
        return True
    outer_box, inner_box = _box(outer), _enclosing_box(inner)
    if outer_box is not None and inner_box is not None:
        return _within(inner_box, outer_box, dtype, device)
    return _points_inside(inner, outer, shape, dtype, device)


def _base(constraint):
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return constraint


def _box(constraint):
    """(lower, upper) bounds of a box-shaped constraint, or None."""
    c = _base(constraint)
    if isinstance(c, constraints._Real):
        return -math.inf, math.inf
    if isinstance(c, constraints.greater_than | constraints.greater_than_eq):
        return c.lower_bound, math.inf
    if isinstance(c, constraints.less_than):
        return -math.inf, c.upper_bound
    if isinstance(c, constraints.interval | constraints.half_open_interval):
        return c.lower_bound, c.upper_bound
    return None


def _enclosing_box(constraint):
    """A box holding every point of `constraint`, or None."""
    c = _base(constraint)
    if c is ordered_vector:
        return -math.inf, math.inf
    if isinstance(c, constraints._Simplex):
        return 0.0, 1.0
    return _box(c)


def _within(inner, outer, dtype, device):
    def tensor(bound):
        return torch.as_tensor(bound, dtype=dtype, device=device)

    above = tensor(inner[0]) >= tensor(outer[0])
    below = tensor(inner[1]) <= tensor(outer[1])
    return bool((above & below).all())


def _points_inside(inner, outer, shape, dtype, device):
    transform = biject_to(inner)
    generator = torch.Generator(device=device).manual_seed(0)
    unconstrained = tuple(transform.inverse_shape(shape))
    z = CHECK_SCALE * torch.randn(
        (CHECK_POINTS, *unconstrained), generator=generator, dtype=dtype, device=device
    )
    return bool(outer.check(transform(z)).all())
