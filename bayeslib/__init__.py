"""bayeslib: Bayesian statistics on PyTorch, with many MCMC chains in parallel."""

from . import calibration, constraints
from .inference import MapResult, find_map
from .model import Draw, Model, ModelError, Param
from .posterior import DrawsView, Posterior, Probability
from .predictive import posterior_predictive, ppc, prior_predictive, replicate_statistics
from .sampling import sample
from .stacked import Stacked, stack

__all__ = [
    "calibration",
    "Draw",
    "DrawsView",
    "MapResult",
    "Model",
    "ModelError",
    "Param",
    "Posterior",
    "Probability",
    "Stacked",
    "constraints",
    "find_map",
    "posterior_predictive",
    "ppc",
    "prior_predictive",
    "replicate_statistics",
    "sample",
    "stack",
]
__version__ = "0.1.0"
