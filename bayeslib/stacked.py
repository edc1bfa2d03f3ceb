"""Many data sets of one model, fitted as one batch: `bl.stack([model_1, ..., model_R])`.

A recovery study or simulation-based calibration fits the same model to hundreds of simulated
data sets. Fitting them one by one repeats the sampler's Python work per data set; stacked,
they run as one batch of tensor operations: the chains of all data sets form one
``[datasets * chains, dim]`` batch (data set ``r`` owns chains ``r * C .. (r + 1) * C - 1``),
and each chain's log density reads its own data set. The model's code is unchanged: it is
still written for one draw and one data set, and evaluated with one more `torch.func.vmap`
over the data sets. Samplers adapt per data set (`bl.sample` passes ``groups=datasets``).

```python
models = [LinearRegression.simulate(seed=s)[0] for s in range(500)]
post = bl.sample(bl.stack(models), sampler="nuts", chains=4)
post.dataset(7).summary()         # data set 7 alone
post.by_dataset("beta")           # [500, 4, draws, 3]
```
"""

import copy

import numpy as np
import torch
from torch.utils._pytree import tree_map

from .model import Model, ModelError
from .model.density import _validation, value_and_grad

# What a built model holds besides the attributes its own __init__ set (its data among them).
_BUILT = {
    "data",
    "unobserved",
    "observed",
    "_init_args",
    "dtype",
    "device",
    "_slots",
    "dim",
    "param_shapes",
    "_vmapped",
}


class Stacked:
    """R data sets of one model class with the same parameter and data shapes.

    ``logdensity(z)``, ``logdensity_and_grad(z)``, ``constrain(z)`` and ``unconstrain(values)``
    take batches whose leading dimension is ``datasets * n``, data set-major, as `Model`'s take
    ``[chains, ...]``. ``models[r]`` is data set ``r``'s own model.
    """

    def __init__(self, models):
        models = list(models)
        if not models:
            raise ModelError("bl.stack: give at least one model.")
        first = models[0]
        for r, model in enumerate(models):
            if not isinstance(model, Model):
                raise ModelError(f"bl.stack: item {r} is {type(model).__name__}, not a bl.Model.")
            if type(model) is not type(first):
                raise ModelError(
                    f"bl.stack: item {r} is a {model.name}, item 0 a {first.name}; stack data "
                    "sets of one model class."
                )
        self.models = [m.to(first.device, first.dtype) for m in models]
        self.datasets = len(models)
        self.name = first.name
        self.dim = first.dim
        self.param_shapes = first.param_shapes
        self.dtype, self.device = first.dtype, first.device
        self._arrays = _stacked_attributes(self.models)
        self._template = copy.copy(first)
        self._template.data = dict(first.data)
        self._template._vmapped = {}
        self._originals = {name: getattr(first, name) for name in self._arrays}
        self._calls = {}

    def __len__(self):
        return self.datasets

    def __repr__(self):
        return f"Stacked({self.datasets} data sets of {self.models[0]!r})"

    @property
    def observed(self):
        return self.models[0].observed

    def to(self, device=None, dtype=None):
        """The same data sets with data and priors on `device` and `dtype`."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype if dtype is not None else self.dtype
        if device == self.device and dtype == self.dtype:
            return self
        return Stacked([m.to(device, dtype) for m in self.models])

    # ----- evaluation: one vmap over data sets around the model's own (batched) code

    def _bind(self, arrays):
        """Point the template model at one data set's arrays (batched tensors under vmap)."""
        for name, value in arrays.items():
            setattr(self._template, name, value)
            if name in self._template.data:
                self._template.data[name] = value

    def _per_dataset(self, key, fn):
        """`fn(model, x)` for `x` shaped ``[datasets * n, ...]`` (or a dict of such), evaluated
        for every data set at once; results come back ``[datasets * n, ...]``."""
        if key not in self._calls:

            def one(x, arrays):
                self._bind(arrays)
                try:
                    return fn(self._template, x)
                finally:
                    self._bind(self._originals)

            self._calls[key] = torch.func.vmap(one)
        datasets = self.datasets

        def split(t):
            if t.shape[0] % datasets:
                raise ValueError(
                    f"{self.name} x {datasets} data sets: a batch of {t.shape[0]} is not a "
                    "multiple of the number of data sets"
                )
            return t.reshape(datasets, t.shape[0] // datasets, *t.shape[1:])

        def call(x):
            out = self._calls[key](tree_map(split, x), self._arrays)
            return tree_map(lambda t: t.reshape(-1, *t.shape[2:]), out)

        return call

    def logdensity(self, z, jacobian=True):
        """Log density at ``z: [datasets * chains, dim]`` -> ``[datasets * chains]``; each
        chain's against its own data set."""
        fn = self._per_dataset(("logdensity", jacobian), lambda m, x: m.logdensity(x, jacobian))
        with _validation(False):
            return fn(z)

    def logdensity_and_grad(self, z, jacobian=True):
        return value_and_grad(lambda x: self.logdensity(x, jacobian), z)

    def constrain(self, z):
        """``[datasets * n, dim]`` -> {name: ``[datasets * n, *shape]``}."""
        return self._per_dataset("constrain", lambda m, x: m.constrain(x))(z)

    def unconstrain(self, values):
        """{name: ``[datasets * n, *shape]``} -> ``[datasets * n, dim]``."""
        values = {
            name: torch.as_tensor(values[name], dtype=self.dtype, device=self.device)
            for name in self.param_shapes
        }
        return torch.cat(
            [m.unconstrain(v) for m, v in zip(self.models, self._split(values), strict=True)]
        )

    def _split(self, values):
        """{name: ``[datasets * n, ...]``} -> one such dict ``[n, ...]`` per data set."""
        for value in values.values():
            if value.shape[0] % self.datasets:
                raise ValueError(
                    f"{self.name} x {self.datasets} data sets: a batch of {value.shape[0]} is "
                    "not a multiple of the number of data sets"
                )
        chunks = {name: value.chunk(self.datasets) for name, value in values.items()}
        return [{name: chunks[name][r] for name in chunks} for r in range(self.datasets)]

    def check_logdensity(self, z, jacobian=True):
        """Raise a ModelError naming the data set and term where the log density at a chain
        is NaN or +inf."""
        lp = self.logdensity(z, jacobian)
        bad = torch.isnan(lp) | (lp == float("inf"))
        if bad.any():
            chains = z.shape[0] // self.datasets
            r = int(bad.nonzero()[0]) // chains
            try:
                self.models[r].check_logdensity(z[r * chains : (r + 1) * chains], jacobian)
            except ModelError as error:
                raise ModelError(f"data set {r}: {error}") from None
        return lp

    def init_z(self, chains, init="uniform", generator=None):
        """Starting points ``[datasets * chains, dim]``, as `Model.init_z` per data set; a dict
        gives constrained values for all data sets (``[*shape]``), per data set
        (``[datasets, *shape]``) or per chain (``[datasets * chains, *shape]``)."""
        if isinstance(init, dict):
            values = {}
            for name, value in init.items():
                value = torch.as_tensor(value, dtype=self.dtype, device=self.device)
                shape = self.param_shapes.get(name)
                if shape is not None and tuple(value.shape) == (self.datasets, *shape):
                    value = value.repeat_interleave(chains, dim=0)
                values[name] = value
            parts = [
                m.init_z(chains, v, generator)
                for m, v in zip(self.models, self._split_given(values, chains), strict=True)
            ]
            return torch.cat(parts)
        return torch.cat([m.init_z(chains, init, generator) for m in self.models])

    def _split_given(self, values, chains):
        """Dict init values, each of one shape for all or ``[datasets * chains, ...]``."""
        out = [{} for _ in range(self.datasets)]
        for name, value in values.items():
            shape = self.param_shapes.get(name, ())
            per_chain = tuple(value.shape) == (self.datasets * chains, *shape)
            for r in range(self.datasets):
                out[r][name] = value[r * chains : (r + 1) * chains] if per_chain else value
        return out


def stack(models) -> Stacked:
    """Data sets of one model class as one batch for `bl.sample` and `bl.find_map`."""
    return Stacked(models)


def _stacked_attributes(models):
    """{attribute: ``[datasets, ...]``} of every tensor attribute set by the models' own
    ``__init__`` (their data, and constants computed from it); other attributes must agree."""
    first = models[0]
    names = [name for name in vars(first) if name not in _BUILT]
    arrays = {}
    for name in names:
        values = [vars(m).get(name) for m in models]
        if torch.is_tensor(values[0]):
            shapes = {tuple(v.shape) if torch.is_tensor(v) else None for v in values}
            if len(shapes) != 1:
                raise ModelError(
                    f"bl.stack: '{name}' has shapes {sorted(map(str, shapes))} across the data "
                    f"sets of {first.name}; stack data sets of the same shapes (pad or group "
                    "them by size)."
                )
            stacked = torch.stack(values).to(first.device)
            arrays[name] = stacked.to(first.dtype) if stacked.is_floating_point() else stacked
        elif not all(_same(v, values[0]) for v in values[1:]):
            raise ModelError(
                f"bl.stack: attribute '{name}' of {first.name} differs across data sets and is "
                "not a tensor; store it as a tensor (torch.as_tensor) so it can be stacked."
            )
    unobserved = {tuple(m.unobserved) for m in models}
    if len(unobserved) != 1:
        raise ModelError(
            f"bl.stack: the data sets of {first.name} leave different fields unobserved; give "
            "every data set the same fields."
        )
    if any(m.param_shapes != first.param_shapes for m in models):
        raise ModelError(
            f"bl.stack: the data sets give {first.name} different parameter shapes; stack data "
            "sets of the same shapes."
        )
    return arrays


def _same(a, b):
    try:
        return bool(np.all(a == b))
    except Exception:
        return a is b


__all__ = ["Stacked", "stack"]
