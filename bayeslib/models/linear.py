"""The seed's linear regression."""

import numpy as np
import torch
from torch.distributions import Normal, Uniform

from ..model import Model, ModelError, Param


class LinearRegression(Model):
    """y ~ Normal(X @ beta, sigma), beta ~ Uniform(-100, 100), sigma ~ Uniform(0, 100).

    X: [N, K] (include a column of ones for an intercept); y: [N], or None to build a model that
    only predicts (posterior predictive draws for new inputs: `model.replace(X=new_X, y=None)`).
    """

    beta = Param(Uniform(-100.0, 100.0), shape=lambda p: (p.X.shape[1],))
    sigma = Param(Uniform(0.0, 100.0))

    def __init__(self, X, y=None):
        super().__init__(X=X, y=y)
        self.check_ndim("X", 2)
        if y is not None:
            self.check_ndim("y", 1)
            if self.y.shape[0] != self.X.shape[0]:
                raise ModelError(
                    f"Model 'LinearRegression': data 'y' has {self.y.shape[0]} rows but 'X' has "
                    f"{self.X.shape[0]}; give one y per row of X."
                )

    def observe(self, p):
        return {"y": Normal(self.X @ p.beta, p.sigma)}

    @classmethod
    def simulate(cls, n=200, beta=(2.0, 1.0, -3.0), sigma=1.0, seed=0):
        """The seed's data: X = [1, U(0, 1), ...], y = X @ beta + sigma * Normal(0, 1).
        Returns (model, truth)."""
        rng = np.random.default_rng(seed)
        beta = np.asarray(beta, dtype=np.float64)
        X = np.ones((n, beta.size))
        X[:, 1:] = rng.random((n, beta.size - 1))
        y = X @ beta + sigma * rng.standard_normal(n)
        truth = {"beta": torch.tensor(beta), "sigma": torch.tensor(sigma, dtype=torch.float64)}
        return cls(X, y), truth
