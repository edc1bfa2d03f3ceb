"""Two-group comparisons: BEST as in the seed, and Kruschke's (2013) BEST with a Student-t."""

import numpy as np
import torch
from torch.distributions import Exponential, Normal, StudentT, Uniform

from ..model import Model, Param


class Best(Model):
    """The seed's BEST: y1 ~ Normal(mu[0], sigma[0]), y2 ~ Normal(mu[1], sigma[1]),
    mu ~ Normal(0, 1), sigma ~ Uniform(0, 100)."""

    mu = Param(Normal(0.0, 1.0), shape=(2,))
    sigma = Param(Uniform(0.0, 100.0), shape=(2,))

    def __init__(self, y1, y2):
        super().__init__(y1=y1, y2=y2)
        self.check_ndim("y1", 1)
        self.check_ndim("y2", 1)

    def observe(self, p):
        return {"y1": Normal(p.mu[0], p.sigma[0]), "y2": Normal(p.mu[1], p.sigma[1])}

    @classmethod
    def simulate(cls, n1=20, n2=20, effect_size=0.3, sigma=1.0, seed=0):
        """The seed's data: group 1 ~ Normal(effect_size * sigma, sigma), group 2 ~ Normal(0,
        sigma). Returns (model, truth)."""
        y1, y2, truth = _two_groups(n1, n2, effect_size, sigma, seed, df=None)
        return cls(y1, y2), truth


class BestStudentT(Model):
    """Kruschke (2013): y_j ~ StudentT(nu, mu[j], sigma[j]) with nu shared, nu - 1 ~
    Exponential(1/29); mu ~ Normal(mean, 1000 sd) and sigma ~ Uniform(sd / 1000, 1000 sd),
    with mean and sd those of the pooled data. nu = 1 + nu_minus_one."""

    mu = Param(lambda p: Normal(p.pooled_mean, 1000 * p.pooled_sd), shape=(2,))
    sigma = Param(lambda p: Uniform(p.pooled_sd / 1000, 1000 * p.pooled_sd), shape=(2,))
    nu_minus_one = Param(Exponential(1 / 29))

    def __init__(self, y1, y2):
        super().__init__(y1=y1, y2=y2)
        self.check_ndim("y1", 1)
        self.check_ndim("y2", 1)
        pooled = torch.cat([self.y1, self.y2])
        self.pooled_mean = pooled.mean()
        self.pooled_sd = pooled.std() if pooled.numel() > 1 else torch.ones(())
        if self.pooled_sd == 0:
            self.pooled_sd = torch.ones(())

    def observe(self, p):
        nu = 1 + p.nu_minus_one
        return {
            "y1": StudentT(nu, p.mu[0], p.sigma[0]),
            "y2": StudentT(nu, p.mu[1], p.sigma[1]),
        }

    @classmethod
    def simulate(cls, n1=20, n2=20, effect_size=0.3, sigma=1.0, nu=5.0, seed=0):
        """Groups drawn from Student-t(nu) with locations effect_size * sigma and 0."""
        y1, y2, truth = _two_groups(n1, n2, effect_size, sigma, seed, df=nu)
        truth["nu_minus_one"] = torch.tensor(nu - 1.0, dtype=torch.float64)
        return cls(y1, y2), truth


def _two_groups(n1, n2, effect_size, sigma, seed, df):
    rng = np.random.default_rng(seed)
    noise = (lambda n: rng.standard_normal(n)) if df is None else (lambda n: rng.standard_t(df, n))
    mu = np.array([effect_size * sigma, 0.0])
    y1 = mu[0] + sigma * noise(n1)
    y2 = mu[1] + sigma * noise(n2)
    truth = {"mu": torch.tensor(mu), "sigma": torch.tensor([sigma, sigma], dtype=torch.float64)}
    return y1, y2, truth
