"""Simulation-based calibration (Talts et al. 2018) of each sampler on a conjugate model.

The data sets are batched into one model: parameter ``mu`` has one component per data set,
with independent priors and likelihoods, so its posterior is the product of the data sets'
posteriors and one vectorised run samples them all. For each data set, the rank of the true
value among the thinned draws (pooled over chains) is uniform when the sampler is
calibrated; a chi-square test must not reject uniformity at p = 0.001.
"""

import numpy as np
import pytest
import torch
from torch.distributions import Normal

import bayeslib as bl
from bayeslib import calibration
from bayeslib.sampling import sample

DATA_SETS = 120
OBSERVATIONS = 5
CHAINS = 4
KEPT = 11  # draws kept per chain: 44 draws in all, so 45 ranks in 9 bins of 5
BINS = 9


class ManyConjugate(bl.Model):
    """mu[k] ~ N(0, 1), y[k, i] ~ N(mu[k], 1): data set k is row k of y."""

    mu = bl.Param(Normal(0.0, 1.0), shape=lambda p: (p.y.shape[0],))

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        return {"y": Normal(p.mu.unsqueeze(-1), 1.0)}


def simulate(seed):
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(DATA_SETS)
    y = mu[:, None] + rng.standard_normal((DATA_SETS, OBSERVATIONS))
    return torch.from_numpy(mu), torch.from_numpy(y)


@pytest.mark.parametrize(
    "sampler, warmup, thin, options",
    [
        ("nuts", 200, 5, {}),
        ("hmc", 200, 5, {}),
        # A random walk in 120 dimensions needs about 3 * 120 iterations per effective draw.
        ("metropolis", 1500, 400, {"dense_covariance": False}),
    ],
)
def test_ranks_of_the_true_values_are_uniform(sampler, warmup, thin, options):
    truth, y = simulate(seed=0)
    post = sample(
        ManyConjugate(y),
        sampler,
        chains=CHAINS,
        warmup=warmup,
        draws=KEPT,
        thin=thin,
        seed=0,
        **options,
    )
    draws = post["mu"].permute(2, 0, 1)  # [data sets, chains, draws]
    ranks = calibration.ranks(draws, truth, size=CHAINS * KEPT)
    p_value, counts = calibration.uniformity_test(ranks, size=CHAINS * KEPT, bins=BINS)
    assert p_value > 0.001, counts
