"""bayeslib: Bayesian statistics on PyTorch, with many MCMC chains in parallel."""

from . import constraints
from .inference import MapResult, find_map
from .model import Draw, Model, ModelError, Param
from .posterior import Posterior
from .sampling import sample

__all__ = [
    "Draw",
    "MapResult",
    "Model",
    "ModelError",
    "Param",
    "Posterior",
    "constraints",
    "find_map",
    "sample",
]
__version__ = "0.1.0"
