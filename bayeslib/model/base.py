"""`Model`: the base class of all models, and the public API every model gets."""

import copy

import torch

from . import data as _data
from . import density, simulate
from .declarations import Draw, ModelError, ModelMeta
from .density import _validation


class Model(metaclass=ModelMeta):
    """Base class of all models; see the `bayeslib.model` docstring for what a model declares."""

    batched = False

    def __init__(self, **data):
        self.data, self.unobserved = {}, []
        for field, value in data.items():
            if field in self._params:
                raise ModelError(
                    f"Model '{self.name}': data field '{field}' has the name of a parameter; "
                    "rename one of them."
                )
            if value is None:  # the model can simulate it but does not condition on it
                self.unobserved.append(field)
                continue
            self.data[field] = _data.as_data(self.name, field, value)
            setattr(self, field, self.data[field])

    @property
    def name(self):
        return type(self).__name__

    def observe(self, p):
        """Return {data field: Distribution} for one draw `p`; no data means a prior-only model."""
        return {}

    def factors(self, p):
        """Return {name: log-density term} for one draw `p`: terms that are neither a prior nor
        a likelihood (a soft constraint, a Jacobian), each summed into the log density."""
        return {}

    def check_ndim(self, field, ndim):
        """For model authors: require data `field` to have `ndim` dimensions."""
        value = self.data.get(field)
        if value is not None and value.ndim != ndim:
            raise ModelError(
                f"Model '{self.name}': data '{field}' must have {ndim} dimension(s), but has shape "
                f"{tuple(value.shape)}; reshape it (e.g. np.ravel for a column of values)."
            )

    # ----- building: resolve shapes, priors and supports once, with every check switched on

    def _build(self, dtype, device):
        if not hasattr(self, "data"):
            raise ModelError(
                f"Model '{self.name}': __init__ must call super().__init__(field=value, ...) "
                "with the model's data."
            )
        self.dtype, self.device = dtype, device
        self.data = {k: v.to(device=device, dtype=dtype) for k, v in self.data.items()}
        for field, value in self.data.items():
            setattr(self, field, value)
        self._slots, start = [], 0
        p = Draw(self)
        with _validation(False):
            for name, param in self._params.items():
                slot = density.build_slot(self, name, param, p, start)
                start = slot.stop
                self._slots.append(slot)
            self.observed = _data.check_observe(self, p)
            density.check_factors(self, p)
        self.dim = start
        self.param_shapes = {s.name: s.shape for s in self._slots}
        self._vmapped = {}
        density.check_batch(self)

    # ----- the log density and the maps between z and named constrained values

    def _batched(self, key, fn):
        """fn itself for a batched model, else fn vmapped over the leading chain dimension."""
        if self.batched:
            return fn
        if key not in self._vmapped:
            self._vmapped[key] = torch.func.vmap(fn)
        return self._vmapped[key]

    def logdensity(self, z, jacobian=True):
        """Log density at unconstrained `z: [chains, dim]` -> `[chains]` (up to a constant).

        With `jacobian=False`, the density of the constrained parameters (what MAP maximises).
        NaN and -inf are returned as they are: samplers treat them as rejections.
        """
        fn = self._batched(("logdensity", jacobian), lambda z: density.log_joint(self, z, jacobian))
        with _validation(False):
            return fn(z)

    def logdensity_and_grad(self, z, jacobian=True):
        """(`[chains]` log density, `[chains, dim]` gradient) at unconstrained `z`."""
        return density.value_and_grad(lambda x: self.logdensity(x, jacobian), z)

    def log_likelihood(self, z):
        """Pointwise log-likelihood at `z: [chains, dim]`: {field: `[chains, *data_shape]`}
        (without the distribution's event dimensions), for LOO and WAIC."""
        fn = self._batched("log_likelihood", lambda z: density.log_likelihood_one(self, z))
        with _validation(False):
            return fn(z)

    def logdensity_terms(self, z, jacobian=True):
        """Each term of the log density at `z: [chains, dim]`: {'prior of mu': [chains], ...}
        ('log|J| of mu', 'likelihood of y', 'factor <name>').

        For finding which prior, Jacobian, likelihood or factor makes a log density NaN or
        infinite.
        """
        terms = {}
        with _validation(False):
            for i in range(z.shape[0]):  # a diagnostic, not a hot path
                one = {}
                density.log_joint(self, z[i], jacobian, one)
                for key, value in one.items():
                    terms.setdefault(key, []).append(value)
        return {key: torch.stack(values) for key, values in terms.items()}

    def check_logdensity(self, z, jacobian=True):
        """Raise a ModelError naming the term if the log density at any chain is NaN or +inf."""
        lp = self.logdensity(z, jacobian)
        bad = torch.isnan(lp) | (lp == float("inf"))
        if bad.any():
            chain = int(bad.nonzero()[0])
            terms = self.logdensity_terms(z[chain : chain + 1], jacobian)
            culprits = [k for k, v in terms.items() if torch.isnan(v[0]) or v[0] == float("inf")]
            values = {k: v[0].tolist() for k, v in self.constrain(z[chain : chain + 1]).items()}
            kind = "NaN" if torch.isnan(lp[chain]) else "+inf"
            raise ModelError(
                f"Model '{self.name}': the log density is {kind} at chain {chain}; the terms "
                f"{culprits} are NaN or +inf there (at {values}). Check those priors or "
                "likelihoods, or start elsewhere."
            )
        return lp

    def constrain(self, z):
        """Unconstrained `z: [chains, dim]` -> {name: constrained values `[chains, *shape]`}."""
        fn = self._batched("constrain", lambda z: density.constrain_one(self, z))
        with _validation(False):
            return fn(z)

    def unconstrain(self, values):
        """{name: `[chains, *shape]`} -> unconstrained `z: [chains, dim]`."""
        missing = [name for name in self._params if name not in values]
        if missing:
            raise ModelError(f"Model '{self.name}': values for {missing} are missing.")
        values = {
            name: torch.as_tensor(values[name], dtype=self.dtype, device=self.device)
            for name in self._params
        }
        fn = self._batched("unconstrain", lambda v: density.unconstrain_one(self, v))
        with _validation(False):
            z, inside = fn(values)
        for i, s in enumerate(self._slots):
            if not (inside[..., i].all() and torch.isfinite(z[..., s.start : s.stop]).all()):
                raise ModelError(
                    f"Model '{self.name}': values given for '{s.name}' lie outside its support; "
                    "give values inside it."
                )
        return z

    # ----- starting points, prior draws, simulated data

    def init_z(self, chains, init="uniform", generator=None):
        """Starting points `[chains, dim]`, as `bayeslib.model.starts.init_z`."""
        from .starts import init_z  # starts builds on find_map, which builds on Model

        return init_z(self, chains, init, generator)

    def sample_prior(self, draws, seed=0):
        """`draws` ancestral draws from the prior: {name: `[draws, *shape]`}. A prior
        restricted to a support is drawn by rejection (`bayeslib.model.simulate`)."""
        return simulate.sample_prior(self, draws, seed)

    def sample_data(self, params, seed=0):
        """Simulate every field `observe` returns, once per draw of `params`
        ({name: `[draws, *shape]`}); returns {field: `[draws, *data_shape]`}."""
        return simulate.sample_data(self, params, seed)

    def replace(self, **data):
        """The same model built on other data: `model.replace(y1=new_y1)`; a field set to None
        is unobserved (simulated by `sample_data`, not conditioned on). The parameters must
        keep their shapes (the number of rows of the data may change)."""
        unknown = [k for k in data if k not in self._init_args]
        if unknown:
            raise ModelError(
                f"Model '{self.name}': replace() got {unknown}, which are not arguments of "
                f"{self.name}(); its arguments: {list(self._init_args)}."
            )
        model = type(self)(**{**self._init_args, **data})
        _data.check_replacement(self, model, list(data))
        return model.to(self.device, self.dtype)

    def to(self, device=None, dtype=None):
        """A copy of the model with its data and priors on `device` and `dtype`."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype if dtype is not None else self.dtype
        if device == self.device and dtype == self.dtype:
            return self
        model = copy.copy(self)
        model.data = dict(self.data)
        model._build(dtype, device)
        return model

    def __repr__(self):
        params = ", ".join(f"{name}{list(shape)}" for name, shape in self.param_shapes.items())
        data = ", ".join(f"{k}{list(v.shape)}" for k, v in self.data.items())
        return f"{self.name}(params: {params}; data: {data})"
