"""Models: parameters declared with their priors, data, and everything that follows from them.

A model is a joint density p(theta, y) = p(theta) p(y | theta), written once:

```python
class Best(bl.Model):
    mu = bl.Param(Normal(0.0, 1.0), shape=(2,))
    sigma = bl.Param(Uniform(0.0, 100.0), shape=(2,))

    def __init__(self, y1, y2):
        super().__init__(y1=y1, y2=y2)

    def observe(self, p):
        return {"y1": Normal(p.mu[0], p.sigma[0]), "y2": Normal(p.mu[1], p.sigma[1])}
```

Model code sees one draw of the parameters (`p.mu` has shape `(2,)`); the library evaluates it
for a batch of chains with `torch.func.vmap`. A model that sets `batched = True` is written for a
leading chain dimension instead (`p.mu[..., 0:1]`) and skips `vmap`.

Everything here is checked once, when the model is built: the first evaluation runs with
torch's argument validation on and with shape checks, so mistakes surface as a `ModelError`
that names the model and the field, not deep inside a sampler.
"""

import contextlib
import copy
import inspect
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import Distribution, Transform, biject_to, constraints

from . import constraints as _register_ordered  # noqa: F401  (registers ordered_vector)


class ModelError(ValueError):
    """A model definition or its data is invalid; the message names the field and the fix."""


class Param:
    """A model parameter: `Param(prior=None, shape=None, support=None)`.

    prior: a `torch.distributions.Distribution`; or a callable `p -> Distribution` of parameters
        declared above this one (and of the model's data); or None for an improper flat prior
        over `support`.
    shape: a tuple, or a callable `p -> tuple` of the model's data (`lambda p: (p.X.shape[1],)`);
        by default the prior's batch and event shape, or `()`.
    support: only with `prior=None`: a constraint, or a callable `p -> constraint` of parameters
        declared above (`lambda p: constraints.interval(0.0, 1.0 - p.alpha)`); by default the
        real line. With a prior, the support is the prior's own.
    """

    def __init__(self, prior=None, shape=None, support=None):
        self.prior = prior
        self.shape = shape
        self.support = support
        self.name = None

    def __set_name__(self, owner, name):
        self.name = name

    def __repr__(self):
        return f"Param(prior={self.prior!r}, shape={self.shape!r}, support={self.support!r})"


def _check_declaration(model_name, name, param):
    where = f"Model '{model_name}', parameter '{name}'"
    if name.startswith("_"):
        raise ModelError(f"{where}: parameter names may not start with '_'; rename it.")
    if not (param.prior is None or isinstance(param.prior, Distribution) or callable(param.prior)):
        raise ModelError(
            f"{where}: prior must be a torch Distribution, a callable p -> Distribution, or "
            f"None (flat), not {type(param.prior).__name__}."
        )
    if param.prior is not None and param.support is not None:
        raise ModelError(
            f"{where}: give a prior or a support, not both; the support of a prior is its own "
            "(use support= only with a flat prior, prior=None)."
        )
    support = param.support
    if not (support is None or isinstance(support, constraints.Constraint) or callable(support)):
        raise ModelError(
            f"{where}: support must be a constraint from bl.constraints or a callable "
            f"p -> constraint, not {type(support).__name__}."
        )
    shape = param.shape
    if shape is not None and not callable(shape):
        if isinstance(shape, int):
            shape = (shape,)
        if not (
            isinstance(shape, tuple | list | torch.Size)
            and all(isinstance(n, int) and n >= 1 for n in shape)
        ):
            raise ModelError(
                f"{where}: shape must be a tuple of positive ints, such as (2,), not {shape!r}."
            )
        param.shape = tuple(shape)


class _Declarations(dict):
    """Class-body namespace that refuses a parameter declared twice."""

    def __init__(self, model_name):
        super().__init__()
        self.model_name = model_name

    def __setitem__(self, key, value):
        if isinstance(self.get(key), Param):
            raise ModelError(
                f"Model '{self.model_name}': parameter '{key}' is declared twice; "
                "give each parameter one declaration (rename one of them)."
            )
        super().__setitem__(key, value)


class ModelMeta(type):
    """Collects `Param` declarations in order, and builds each model right after `__init__`."""

    @classmethod
    def __prepare__(mcs, name, bases, **kwargs):
        return _Declarations(name)

    def __new__(mcs, name, bases, namespace, **kwargs):
        cls = super().__new__(mcs, name, bases, dict(namespace), **kwargs)
        params = {}
        for base in reversed(cls.__mro__[1:]):
            params.update(getattr(base, "_params", {}))
        seen = {}
        for key, value in namespace.items():
            if isinstance(value, Param):
                if id(value) in seen:
                    raise ModelError(
                        f"Model '{name}': parameters '{seen[id(value)]}' and '{key}' are the same "
                        "Param object; declare each with its own bl.Param(...)."
                    )
                seen[id(value)] = key
                _check_declaration(name, key, value)
                params[key] = value
        cls._params = params
        return cls

    def __call__(cls, *args, **kwargs):
        model = super().__call__(*args, **kwargs)
        bound = inspect.signature(cls.__init__).bind(model, *args, **kwargs)
        bound.apply_defaults()
        model._init_args = dict(list(bound.arguments.items())[1:])
        model._build(torch.float64, torch.device("cpu"))
        return model


class _UsedBeforeDeclared(Exception):
    def __init__(self, name):
        super().__init__(name)
        self.name = name


class Draw:
    """What model code sees as `p`: parameter values, then the model's attributes (its data)."""

    def __init__(self, model):
        self.__dict__["_model"] = model

    def __getattr__(self, name):
        model = self.__dict__["_model"]
        if name in model._params:
            raise _UsedBeforeDeclared(name)
        try:
            return getattr(model, name)
        except AttributeError:
            raise AttributeError(
                f"Model '{model.name}' has no parameter or data field '{name}'; parameters: "
                f"{list(model._params)}, data: {list(model.data)}."
            ) from None

    def __setattr__(self, name, value):
        raise AttributeError("model code may not assign to p; compute local variables instead")


@dataclass
class _Slot:
    """Where one parameter lives in the flat unconstrained vector, and how to map it."""

    name: str
    shape: tuple
    unconstrained_shape: tuple
    start: int
    stop: int
    prior: Distribution | None  # static prior, already on the model's dtype and device
    prior_fn: object  # callable prior, evaluated per call
    support_fn: object  # callable support of a flat prior
    transform: Transform | None  # static bijection; None when it depends on other parameters
    support: constraints.Constraint | None  # static support; None when it depends on others

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


def _broadcasts_to(shape, target):
    try:
        return torch.broadcast_shapes(shape, target) == tuple(target)
    except RuntimeError:
        return False


def _fixed_support(dist):
    """Whether a distribution's support is the same for all parameter values (so the data can
    be checked against it once): real, positive, integers, 0/1, simplex, and the like."""
    support = dist.support
    integers = support.is_discrete and not hasattr(support, "upper_bound")
    return integers or any(support is fixed for fixed in _FIXED_SUPPORTS)


_FIXED_SUPPORTS = (
    constraints.real,
    constraints.positive,
    constraints.nonnegative,
    constraints.unit_interval,
    constraints.simplex,
    constraints.real_vector,
    constraints.positive_definite,
)


def _sum_to(values, batch_shape):
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


class Model(metaclass=ModelMeta):
    """Base class of all models; see the module docstring for what a model declares."""

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
            self.data[field] = self._as_data(field, value)
            setattr(self, field, self.data[field])

    @property
    def name(self):
        return type(self).__name__

    def observe(self, p):
        """Return {data field: Distribution} for one draw `p`; no data means a prior-only model."""
        return {}

    def check_ndim(self, field, ndim):
        """For model authors: require data `field` to have `ndim` dimensions."""
        value = self.data.get(field)
        if value is not None and value.ndim != ndim:
            raise ModelError(
                f"Model '{self.name}': data '{field}' must have {ndim} dimension(s), but has shape "
                f"{tuple(value.shape)}; reshape it (e.g. np.ravel for a column of values)."
            )

    def _as_data(self, field, value):
        where = f"Model '{self.name}': data '{field}'"
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
                slot = self._build_slot(name, param, p, start)
                start = slot.stop
                self._slots.append(slot)
            self._check_observe(p)
        self.dim = start
        self.param_shapes = {s.name: s.shape for s in self._slots}
        self._vmapped = {}
        self._check_batch()

    def _build_slot(self, name, param, p, start):
        where = f"Model '{self.name}', parameter '{name}'"
        shape = self._call_user(param.shape, p, name, "shape") if callable(param.shape) else None
        shape = shape if shape is not None else param.shape
        prior, prior_fn, support_fn = param.prior, None, None
        if callable(prior) and not isinstance(prior, Distribution):
            prior_fn, prior = prior, self._call_user(prior, p, name, "prior")
            if not isinstance(prior, Distribution):
                raise ModelError(
                    f"{where}: the prior callable returned {type(prior).__name__}, not a "
                    "torch Distribution."
                )
        elif prior is not None:
            prior = _cast_distribution(prior, self.dtype, self.device)
        if prior is not None:
            prior_shape = prior.batch_shape + prior.event_shape
            shape = tuple(prior_shape) if shape is None else tuple(shape)
            if not _broadcasts_to(prior_shape, shape):
                raise ModelError(
                    f"{where}: the prior has shape {tuple(prior_shape)}, which does not fit the "
                    f"declared shape {shape}; make them agree."
                )
            support = prior.support
        elif callable(param.support) and not isinstance(param.support, constraints.Constraint):
            support_fn = param.support
            support = self._call_user(support_fn, p, name, "support")
        else:
            support = param.support if param.support is not None else constraints.real
        shape = tuple(shape) if shape is not None else ()
        try:
            transform = biject_to(support)
        except NotImplementedError:
            source = f"its prior {type(prior).__name__}" if prior is not None else "support="
            raise ModelError(
                f"{where}: the support {support} (from {source}) has no bijection to the real "
                "numbers, so it cannot be sampled; bayeslib samples continuous parameters: "
                "marginalize a discrete parameter out of the model, or give a continuous prior."
            ) from None
        unconstrained_shape = tuple(transform.inverse_shape(shape))
        stop = start + int(np.prod(unconstrained_shape, dtype=np.int64))
        u = torch.zeros(unconstrained_shape, dtype=self.dtype, device=self.device)
        p.__dict__[name] = transform(u)
        static = prior_fn is None and support_fn is None
        return _Slot(
            name,
            shape,
            unconstrained_shape,
            start,
            stop,
            prior if static else None,
            prior_fn,
            support_fn,
            transform if static else None,
            support if static else None,
        )

    def _call_user(self, fn, p, name, what):
        try:
            return fn(p)
        except _UsedBeforeDeclared as error:
            raise ModelError(
                f"Model '{self.name}': the {what} of '{name}' refers to '{error.name}', which is "
                f"declared below it; declare '{error.name}' above '{name}' in the class body."
            ) from None
        except ModelError:
            raise
        except Exception as error:
            raise ModelError(
                f"Model '{self.name}': the {what} of '{name}' failed: "
                f"{type(error).__name__}: {error}"
            ) from error

    def _check_observe(self, p):
        observed = self._call_user(self.observe, p, "the data", "observe method")
        if not isinstance(observed, dict):
            raise ModelError(
                f"Model '{self.name}': observe must return a dict {{data field: Distribution}}, "
                f"not {type(observed).__name__}."
            )
        for field, dist in observed.items():
            where = f"Model '{self.name}', observe['{field}']"
            if not isinstance(dist, Distribution):
                raise ModelError(f"{where} is {type(dist).__name__}, not a torch Distribution.")
            if field not in self.data:
                if field in self.unobserved:
                    continue
                raise ModelError(
                    f"{where}: '{field}' is not a data field of the model; data fields: "
                    f"{list(self.data)}. Pass it to super().__init__ or rename the key."
                )
            value, dist_shape = self.data[field], dist.batch_shape + dist.event_shape
            if not _broadcasts_to(dist_shape, value.shape):
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
        self.observed = [f for f in observed if f in self.data]

    def _check_batch(self):
        z = torch.zeros(3, self.dim, dtype=self.dtype, device=self.device)
        try:
            lp = self.logdensity(z)
        except Exception as error:
            fix = (
                "write observe and priors for a leading chain dimension (p.mu[..., 0:1])"
                if self.batched
                else "avoid Python control flow on values (if, .item()) in observe and priors"
            )
            raise ModelError(
                f"Model '{self.name}': its log density cannot be evaluated for a batch of chains "
                f"({type(error).__name__}: {error}); {fix}."
            ) from error
        if lp.shape != (3,):
            raise ModelError(
                f"Model '{self.name}': a batch of 3 chains gave a log density of shape "
                f"{tuple(lp.shape)}, not (3,); with batched = True, index parameters with "
                "'...' so that each term keeps the chain dimension first."
            )

    # ----- the log density and the maps between z and named constrained values

    def _walk(self, z, p, jacobian, terms=None):
        """Constrain z slot by slot into p; return the prior (+ log|J|) part of the density."""
        batch_shape = z.shape[:-1]
        lp = z.new_zeros(batch_shape)
        for s in self._slots:
            u = z[..., s.start : s.stop].reshape(batch_shape + s.unconstrained_shape)
            prior = s.prior_at(p)
            transform = s.transform
            if transform is None:
                transform = biject_to(s.support_at(p, prior))
            x = transform(u)
            p.__dict__[s.name] = x
            if prior is not None:
                term = _sum_to(prior.log_prob(x), batch_shape)
                lp = lp + term
                if terms is not None:
                    terms[f"prior of {s.name}"] = term
            if jacobian:
                term = _sum_to(transform.log_abs_det_jacobian(u, x), batch_shape)
                lp = lp + term
                if terms is not None:
                    terms[f"log|J| of {s.name}"] = term
        return lp

    def _log_joint(self, z, jacobian=True, terms=None):
        p = Draw(self)
        lp = self._walk(z, p, jacobian, terms)
        batch_shape = z.shape[:-1]
        for field, dist in self.observe(p).items():
            if field in self.data:
                term = _sum_to(dist.log_prob(self.data[field]), batch_shape)
                lp = lp + term
                if terms is not None:
                    terms[f"likelihood of {field}"] = term
        return lp

    def _constrain_one(self, z):
        p = Draw(self)
        self._walk(z, p, jacobian=False)
        return {s.name: p.__dict__[s.name] for s in self._slots}

    def _unconstrain_one(self, values):
        """-> (z, whether each parameter's values lie in its support)."""
        p, parts, inside = Draw(self), [], []
        for s in self._slots:
            x = values[s.name]
            support = s.support_at(p, s.prior_at(p))
            p.__dict__[s.name] = x
            batch_shape = x.shape[: x.ndim - len(s.shape)]
            parts.append(biject_to(support).inv(x).reshape(batch_shape + (-1,)))
            inside.append(support.check(x).reshape(batch_shape + (-1,)).all(-1))
        return torch.cat(parts, dim=-1), torch.stack(inside, dim=-1)

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
        fn = self._batched(("logdensity", jacobian), lambda z: self._log_joint(z, jacobian))
        with _validation(False):
            return fn(z)

    def logdensity_and_grad(self, z, jacobian=True):
        """(`[chains]` log density, `[chains, dim]` gradient) at unconstrained `z`."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            lp = self.logdensity(z, jacobian)
            (grad,) = torch.autograd.grad(lp.sum(), z)
        return lp.detach(), grad

    def _log_likelihood_one(self, z):
        p = Draw(self)
        self._walk(z, p, jacobian=False)
        observed = self.observe(p)
        return {field: observed[field].log_prob(self.data[field]) for field in self.observed}

    def log_likelihood(self, z):
        """Pointwise log-likelihood at `z: [chains, dim]`: {field: `[chains, *data_shape]`}
        (without the distribution's event dimensions), for LOO and WAIC."""
        with _validation(False):
            return self._batched("log_likelihood", self._log_likelihood_one)(z)

    def logdensity_terms(self, z, jacobian=True):
        """Each term of the log density at `z: [chains, dim]`: {'prior of mu': [chains], ...}.

        For finding which prior, Jacobian or likelihood makes a log density NaN or infinite.
        """
        terms = {}
        with _validation(False):
            for i in range(z.shape[0]):  # a diagnostic, not a hot path
                one = {}
                self._log_joint(z[i], jacobian, one)
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
        with _validation(False):
            return self._batched("constrain", self._constrain_one)(z)

    def unconstrain(self, values):
        """{name: `[chains, *shape]`} -> unconstrained `z: [chains, dim]`."""
        missing = [name for name in self._params if name not in values]
        if missing:
            raise ModelError(f"Model '{self.name}': values for {missing} are missing.")
        values = {
            name: torch.as_tensor(values[name], dtype=self.dtype, device=self.device)
            for name in self._params
        }
        with _validation(False):
            z, inside = self._batched("unconstrain", self._unconstrain_one)(values)
        for i, s in enumerate(self._slots):
            if not (inside[..., i].all() and torch.isfinite(z[..., s.start : s.stop]).all()):
                raise ModelError(
                    f"Model '{self.name}': values given for '{s.name}' lie outside its support; "
                    "give values inside it."
                )
        return z

    # ----- starting points, prior draws, simulated data

    def init_z(self, chains, init="uniform", generator=None):
        """Starting points `[chains, dim]`: 'uniform' (Stan's uniform(-2, 2) in unconstrained
        space), 'zeros', 'prior' (draws from the prior), or a dict {name: values} in the
        constrained space (one value for all chains, or one per chain; parameters left out
        start uniform)."""
        uniform = (
            4
            * torch.rand(
                chains, self.dim, generator=generator, dtype=self.dtype, device=self.device
            )
            - 2
        )
        if isinstance(init, str) and init == "uniform":
            return uniform
        if isinstance(init, str) and init == "zeros":
            return torch.zeros_like(uniform)
        if isinstance(init, str) and init == "prior":
            seed = int(torch.randint(2**62, (1,), generator=generator, device=self.device))
            return self.unconstrain(self.sample_prior(chains, seed))
        if isinstance(init, dict):
            unknown = [name for name in init if name not in self._params]
            if unknown:
                raise ModelError(
                    f"Model '{self.name}': init names {unknown}, which are not parameters; "
                    f"parameters: {list(self._params)}."
                )
            values = self.constrain(uniform)
            for name, value in init.items():
                value = torch.as_tensor(value, dtype=self.dtype, device=self.device)
                shape = self.param_shapes[name]
                if tuple(value.shape) not in (shape, (chains, *shape)):
                    raise ModelError(
                        f"Model '{self.name}': init['{name}'] has shape {tuple(value.shape)}; "
                        f"give shape {shape} (all chains) or {(chains, *shape)} (per chain)."
                    )
                values[name] = value.expand(chains, *shape)
            return self.unconstrain(values)
        raise ModelError(
            f"Model '{self.name}': init={init!r} is not a known start; use 'uniform', 'zeros', "
            "'prior', 'map' (when sampling) or a dict {parameter: values}."
        )

    def sample_prior(self, draws, seed=0):
        """`draws` ancestral draws from the prior: {name: `[draws, *shape]`}."""
        out = {s.name: [] for s in self._slots}
        with _seeded(seed, self.device), _validation(False):
            for _ in range(draws):  # not a hot path: callable priors are written for one draw
                p = Draw(self)
                for s in self._slots:
                    prior = s.prior_at(p)
                    if prior is None:
                        raise ModelError(
                            f"Model '{self.name}': '{s.name}' has a flat (improper) prior, which "
                            "cannot be drawn from; give it a proper prior, or start from "
                            "init='uniform'."
                        )
                    x = _draw(prior, s.shape)
                    p.__dict__[s.name] = x
                    out[s.name].append(x)
        return {name: torch.stack(values) for name, values in out.items()}

    def sample_data(self, params, seed=0):
        """Simulate every field `observe` returns, once per draw of `params`
        ({name: `[draws, *shape]`}); returns {field: `[draws, *data_shape]`}."""
        draws = next(iter(params.values())).shape[0]
        out = {}
        with _seeded(seed, self.device), _validation(False):
            for i in range(draws):  # not a hot path; `observe` is written for one draw
                p = Draw(self)
                for s in self._slots:
                    p.__dict__[s.name] = torch.as_tensor(
                        params[s.name][i], dtype=self.dtype, device=self.device
                    )
                for field, dist in self.observe(p).items():
                    shape = self.data[field].shape if field in self.data else dist.batch_shape
                    out.setdefault(field, []).append(_draw(dist, tuple(shape)))
        return {field: torch.stack(values) for field, values in out.items()}

    def replace(self, **data):
        """The same model built on other data: `model.replace(y1=new_y1)`; a field set to None
        is unobserved (simulated by `sample_data`, not conditioned on)."""
        unknown = [k for k in data if k not in self._init_args]
        if unknown:
            raise ModelError(
                f"Model '{self.name}': replace() got {unknown}, which are not arguments of "
                f"{self.name}(); its arguments: {list(self._init_args)}."
            )
        model = type(self)(**{**self._init_args, **data})
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


_NUMERIC = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


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
