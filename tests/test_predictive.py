"""Prior and posterior predictive draws, and posterior predictive checks."""

import math

import numpy as np
import pytest
import torch

import bayeslib as bl
from bayeslib.models import Best, LinearRegression
from bayeslib.predictive import (
    STATISTICS,
    posterior_predictive,
    ppc,
    prior_predictive,
    replicate_statistics,
)

BETA = torch.tensor([2.0, 1.0, -3.0], dtype=torch.float64)


def linear_posterior(chains=4, draws=1000, beta_sd=0.0, sigma=0.5, seed=0):
    """Draws with beta ~ Normal(BETA, beta_sd) independently and sigma fixed."""
    g = torch.Generator().manual_seed(seed)
    beta = BETA + beta_sd * torch.randn(chains, draws, 3, generator=g, dtype=torch.float64)
    return bl.Posterior({"beta": beta, "sigma": torch.full((chains, draws), sigma)})


def test_predictive_for_a_new_input_mixes_parameter_and_noise_uncertainty():
    model, _ = LinearRegression.simulate(n=50, seed=0)
    x = torch.tensor([[1.0, 0.3, 0.8], [1.0, 0.0, 0.0]], dtype=torch.float64)
    post = linear_posterior(beta_sd=0.4)
    y = posterior_predictive(model, post, X=x)["y"]
    assert y.shape == (4, 1000, 2)
    # y = x . beta + sigma * eps: mean x . BETA, variance 0.4^2 |x|^2 + 0.5^2
    mean = x @ BETA
    sd = torch.sqrt(0.16 * (x**2).sum(1) + 0.25)
    flat = y.reshape(-1, 2)
    # 4000 independent draws: the mean's sd is sd / 63, the sd's relative sd is 1 / sqrt(8000)
    torch.testing.assert_close(flat.mean(0), mean, atol=float(4 * sd.max() / 63), rtol=0)
    torch.testing.assert_close(flat.std(0), sd, rtol=0.05, atol=0)
    # the 95% interval of a normal with that mean and sd
    low, high = np.quantile(flat[:, 1].numpy(), [0.025, 0.975])
    assert low == pytest.approx(float(mean[1] - 1.96 * sd[1]), abs=0.1)
    assert high == pytest.approx(float(mean[1] + 1.96 * sd[1]), abs=0.1)


def test_predictive_without_new_data_replicates_every_observed_field():
    model, _ = Best.simulate(n1=12, n2=7, seed=0)
    g = torch.Generator().manual_seed(1)
    post = bl.Posterior(
        {
            "mu": torch.tensor([5.0, -5.0], dtype=torch.float64).expand(2, 500, 2),
            "sigma": 0.1 + torch.rand(2, 500, 2, generator=g, dtype=torch.float64),
        }
    )
    draws = posterior_predictive(model, post, seed=3)
    assert draws["y1"].shape == (2, 500, 12) and draws["y2"].shape == (2, 500, 7)
    # each replicated data set uses its own draw's sigma: E[s / sigma] = c4(12) = 0.9776 for 12
    # normal draws, and s / sigma has sd 0.21, so its mean over 1000 data sets has sd 0.007
    ratio = draws["y1"].std(-1) / post["sigma"][..., 0]
    assert float(ratio.mean()) == pytest.approx(0.9776, abs=0.03)
    assert abs(float(draws["y2"].mean()) + 5.0) < 0.05


def test_thinning_and_seeds():
    model, _ = LinearRegression.simulate(n=20, seed=0)
    post = linear_posterior(chains=3, draws=101, beta_sd=0.1)
    thinned = posterior_predictive(model, post, thin=10, seed=5)["y"]
    assert thinned.shape == (3, 11, 20)
    # thinning keeps draws 0, 10, ..., 100 of each chain: their predictions are those draws'
    assert torch.equal(thinned, posterior_predictive(model, post, thin=10, seed=5)["y"])
    assert not torch.equal(thinned, posterior_predictive(model, post, thin=10, seed=6)["y"])
    sub = bl.Posterior({name: value[:, ::10] for name, value in post.draws.items()})
    assert torch.equal(thinned, posterior_predictive(model, sub, seed=5)["y"])
    with pytest.raises(ValueError, match="thin must be an integer >= 1"):
        posterior_predictive(model, post, thin=0)
    with pytest.raises(ValueError, match=r"no draws of \['sigma'\]"):
        posterior_predictive(model, bl.Posterior({"beta": post["beta"]}))


def test_prior_predictive_draws_the_parameters_then_the_data():
    model, _ = LinearRegression.simulate(n=30, seed=0)
    y = prior_predictive(model, draws=2000, seed=0)["y"]
    assert y.shape == (2000, 30)
    x = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    y = prior_predictive(model, draws=2000, seed=1, X=x)["y"]
    assert y.shape == (2000, 1)
    # y = beta[0] + sigma * eps with beta[0] ~ U(-100, 100), sigma ~ U(0, 100):
    # E y = 0 and Var y = 200^2 / 12 + E sigma^2 = 10000 / 3 + 10000 / 3
    sd = math.sqrt(20000 / 3)
    assert abs(float(y.mean())) < 4 * sd / math.sqrt(2000)
    assert float(y.std()) == pytest.approx(sd, rel=0.06)
    assert torch.equal(y, prior_predictive(model, draws=2000, seed=1, X=x)["y"])


def test_replicated_statistics_and_p_values():
    model, _ = LinearRegression.simulate(n=40, sigma=0.5, seed=2)
    post = linear_posterior(chains=2, draws=500, sigma=0.5)
    statistics = {"q90": lambda y: torch.quantile(y, 0.9)}
    observed, replicated = replicate_statistics(model, post, statistics, seed=4)
    assert list(observed) == [("y", name) for name in [*STATISTICS, "q90"]]
    assert observed["y", "max"] == float(model.y.max())
    assert observed["y", "q90"] == pytest.approx(float(np.quantile(model.y.numpy(), 0.9)))
    assert replicated["y", "sd"].shape == (2, 500)

    table = ppc(model, post, statistics, seed=4)
    assert list(table.index) == list(observed)
    assert list(table.columns) == [
        "observed",
        "replicated_mean",
        "replicated_sd",
        "p_value",
        "p_value_mcse",
    ]
    for key, t_rep in replicated.items():
        assert table.loc[key, "p_value"] == np.mean(t_rep >= observed[key])
        assert table.loc[key, "replicated_mean"] == pytest.approx(t_rep.mean())
    # the data come from this very model: no statistic is extreme
    assert table["p_value"].between(0.01, 0.99).all()
    # independent draws: the p-value's MCSE is the binomial one
    p = table.loc[("y", "mean"), "p_value"]
    assert table.loc[("y", "mean"), "p_value_mcse"] == pytest.approx(
        math.sqrt(p * (1 - p) / 1000), rel=0.15
    )


def test_ppc_flags_what_the_model_cannot_reproduce():
    model, _ = LinearRegression.simulate(n=40, sigma=0.5, seed=2)
    y = model.y.clone()
    y[0] += 20.0  # an outlier 40 sigma out
    table = ppc(model.replace(y=y), linear_posterior(chains=2, draws=500, sigma=0.5), seed=0)
    assert table.loc[("y", "max"), "p_value"] == 0.0
    assert table.loc[("y", "sd"), "p_value"] == 0.0
    assert table.loc[("y", "min"), "p_value"] > 0.01
