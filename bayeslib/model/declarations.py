"""What a model class declares: its `Param`s, checked when the class is defined."""

import inspect

import torch
from torch.distributions import Distribution, constraints


class ModelError(ValueError):
    """A model definition or its data is invalid; the message names the field and the fix."""


class Param:
    """A model parameter: `Param(prior=None, shape=None, support=None)`.

    prior: a `torch.distributions.Distribution`; or a callable `p -> Distribution` of parameters
        declared above this one (and of the model's data); or None for an improper flat prior
        over `support`.
    shape: a tuple, or a callable `p -> tuple` of the model's data (`lambda p: (p.X.shape[1],)`);
        by default the prior's batch and event shape, or `()`.
    support: a constraint, or a callable `p -> constraint` of parameters declared above
        (`lambda p: constraints.interval(0.0, 1.0 - p.alpha)`). Without a prior: a flat prior
        over it (by default the real line). With a prior: the prior restricted to it, up to a
        constant, as Stan's `real<lower=0> s; s ~ normal(0, 1);`; it must lie inside the
        prior's support. By default, the prior's own support.
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


class UsedBeforeDeclared(Exception):
    """Model code read a parameter that is declared below the one being built."""

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
            raise UsedBeforeDeclared(name)
        try:
            return getattr(model, name)
        except AttributeError:
            raise AttributeError(
                f"Model '{model.name}' has no parameter or data field '{name}'; parameters: "
                f"{list(model._params)}, data: {list(model.data)}."
            ) from None

    def __setattr__(self, name, value):
        raise AttributeError("model code may not assign to p; compute local variables instead")


def call_user(model, fn, p, name, what):
    """`fn(p)`, model code building parameter `name`'s `what`; its errors as a ModelError."""
    try:
        return fn(p)
    except UsedBeforeDeclared as error:
        raise ModelError(
            f"Model '{model.name}': the {what} of '{name}' refers to '{error.name}', which is "
            f"declared below it; declare '{error.name}' above '{name}' in the class body."
        ) from None
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(
            f"Model '{model.name}': the {what} of '{name}' failed: {type(error).__name__}: {error}"
        ) from error
