"""Posterior summaries, warnings, derived quantities, probabilities, intervals, LOO."""

import math

import arviz as az
import numpy as np
import pytest
import torch
from torch.distributions import Normal

import bayeslib as bl
from bayeslib import diagnostics
from bayeslib.models import Best
from bayeslib.sampling import sample


def iid_posterior(chains=4, draws=1000, seed=0, **stats):
    """Independent draws: mu ~ Normal(0, 1) [2], sigma ~ Exponential(1); no warnings due."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(chains, draws, 2, generator=g, dtype=torch.float64)
    sigma = -torch.rand(chains, draws, generator=g, dtype=torch.float64).log()
    return bl.Posterior({"mu": mu, "sigma": sigma}, stats, attrs={"sampler": "nuts"})


def ar1(chains, draws, rho, seed=0):
    """Stationary AR(1) chains with unit marginal variance."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(chains, draws, generator=g, dtype=torch.float64)
    x = torch.empty_like(noise)
    x[:, 0] = noise[:, 0]
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + math.sqrt(1 - rho**2) * noise[:, t]
    return x


@pytest.fixture(scope="module")
def best_run():
    model, _ = Best.simulate(seed=1)
    return model, sample(model, chains=4, warmup=150, draws=250, seed=0, init="map", progress=False)


def test_summary_has_a_row_per_flat_name_and_matches_diagnostics():
    post = iid_posterior()
    table = post.summary(prob=0.9)
    assert list(table.index) == ["mu[0]", "mu[1]", "sigma"]
    assert list(table.columns) == [
        "mean",
        "sd",
        "median",
        "eti_low",
        "eti_high",
        "hdi_low",
        "hdi_high",
        "mcse_mean",
        "mcse_sd",
        "ess_bulk",
        "ess_tail",
        "r_hat",
    ]
    assert table.equals(diagnostics.summary(post.draws, prob=0.9))
    # 4000 independent N(0, 1) draws: the mean's sd is 1/sqrt(4000) = 0.016
    assert abs(table.loc["mu[0]", "mean"]) < 0.07
    assert table.loc["mu[0]", "eti_high"] == pytest.approx(1.645, abs=0.15)


def test_iid_draws_give_no_warnings():
    post = iid_posterior(
        diverging=torch.zeros(4, 1000, dtype=torch.bool),
        tree_depth=torch.full((4, 1000), 3),
        energy=torch.randn(4, 1000, generator=torch.Generator().manual_seed(1)),
    )
    assert post.warnings() == []


def test_warnings_name_what_went_wrong():
    g = torch.Generator().manual_seed(2)
    stuck = torch.randn(4, 400, generator=g, dtype=torch.float64)
    stuck[0] += 3.0  # one chain elsewhere
    tree_depth = torch.full((4, 400), 4)
    tree_depth[1, :7] = 6
    post = bl.Posterior(
        {"stuck": stuck, "sticky": ar1(4, 400, rho=0.97, seed=3)},
        stats={
            "diverging": torch.arange(1600).reshape(4, 400) % 200 == 0,
            "tree_depth": tree_depth,
            # a random walk: transitions tiny next to the spread, so E-BFMI is far below 0.3
            "energy": 0.05 * torch.randn(4, 400, generator=g, dtype=torch.float64).cumsum(1),
        },
        attrs={"sampler": "nuts", "max_tree_depth": 6},
    )
    warnings = post.warnings()
    assert len(warnings) == 6
    r_hat, ess, tail, divergences, depth, bfmi = warnings
    assert r_hat.startswith("r_hat > 1.01") and "stuck" in r_hat
    # Total ESS of all chains, as Vehtari et al. (2021): 400, not 100 per chain.
    assert ess.startswith("ess_bulk < 400 for") and "sticky" in ess
    assert tail.startswith("ess_tail < 400 for") and "sticky" in tail
    assert divergences.startswith("8 divergent transitions (0.5% of draws)")
    assert depth.startswith("7 draws (0.4%) hit max_tree_depth=6")
    assert bfmi.startswith("E-BFMI < 0.3 (chain 0:")


def test_sampler_summary_and_e_bfmi_match_arviz():
    g = torch.Generator().manual_seed(4)
    energy = torch.randn(3, 500, generator=g, dtype=torch.float64).cumsum(1) * 0.3 + torch.randn(
        3, 500, generator=g, dtype=torch.float64
    )
    post = iid_posterior(
        chains=3,
        draws=500,
        diverging=torch.arange(1500).reshape(3, 500) == 17,
        acceptance_rate=torch.full((3, 500), 0.8, dtype=torch.float64),
        step_size=torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)[:, None].expand(3, 500),
        tree_depth=torch.full((3, 500), 10),
        energy=energy,
    )
    stats = post.sampler_summary()
    assert stats["sampler"] == "nuts" and stats["chains"] == 3 and stats["draws"] == 500
    assert stats["divergences"] == 1
    assert stats["acceptance_rate"] == pytest.approx(0.8)
    assert stats["step_size"] == pytest.approx(0.2)
    assert stats["max_tree_depth"] == 10 and stats["max_tree_depth_hits"] == 1500
    np.testing.assert_allclose(stats["e_bfmi"], az.bfmi(energy.numpy()), rtol=1e-12)


def test_derive_adds_draws_with_the_same_summary():
    post = iid_posterior()
    derived = post.derive(diff=lambda p: p.mu[..., 1] - p.mu[..., 0], scale=lambda p: 2 * p.sigma)
    assert derived.names == ["mu", "sigma", "diff", "scale"] and post.names == ["mu", "sigma"]
    diff = post["mu"][..., 1] - post["mu"][..., 0]
    assert torch.equal(derived["diff"], diff)
    table = derived.summary()
    assert table.loc["diff"].equals(diagnostics.summary({"diff": diff}).loc["diff"])
    with pytest.raises(ValueError, match="'mu' is already in the posterior"):
        post.derive(mu=lambda p: p.sigma)
    with pytest.raises(ValueError, match=r"keep the leading \[chains, draws\]"):
        post.derive(total=lambda p: p.sigma.sum())
    with pytest.raises(AttributeError, match="no parameter 'nu'"):
        post.derive(nu=lambda p: p.nu)


def test_prob_of_independent_draws_has_the_binomial_standard_error():
    post = iid_posterior(draws=2500)  # 10000 draws
    result = post.prob(lambda p: p.mu[..., 1] < p.mu[..., 0])  # exactly 1/2
    assert isinstance(result.value, float) and isinstance(result.mcse, float)
    binomial = math.sqrt(0.25 / 10_000)
    assert result.mcse == pytest.approx(binomial, rel=0.1)
    assert abs(result.value - 0.5) < 4 * binomial
    # P(sigma > 1) = exp(-1) for an Exponential(1)
    above = post.prob(lambda p: p.sigma > 1.0)
    assert abs(above.value - math.exp(-1)) < 4 * above.mcse


def test_prob_of_correlated_draws_has_a_larger_standard_error():
    x = ar1(4, 2500, rho=0.9, seed=5)
    post = bl.Posterior({"x": x})
    result = post.prob(lambda p: p.x > 0)
    iid = math.sqrt(0.25 / 10_000)
    # the indicator of an AR(1) with rho = 0.9 keeps a correlation time well above 3
    assert result.mcse > 2.5 * iid
    assert abs(result.value - 0.5) < 4 * result.mcse


def test_prob_of_a_vector_event_and_of_a_sure_event():
    post = iid_posterior()
    result = post.prob(lambda p: p.mu > 0)
    assert result.value.shape == (2,) and result.mcse.shape == (2,)
    assert np.all(np.abs(result.value - 0.5) < 4 * result.mcse)
    sure = post.prob(lambda p: p.sigma > 0)
    assert sure == (1.0, 0.0)


def test_interval_by_name_or_function_and_kind():
    post = iid_posterior(draws=2500)
    eti = post.interval("mu", prob=0.9)
    assert eti.shape == (2, 2)
    # the 5% quantile of 10000 draws has sd sqrt(0.05 * 0.95 / 10000) / phi(1.645) = 0.021
    np.testing.assert_allclose(eti, [[-1.645, 1.645]] * 2, atol=0.09)
    # mu[1] - mu[0] ~ Normal(0, sqrt(2)): the HDI's ends wander more than its width
    diff = post.interval(lambda p: p.mu[..., 1] - p.mu[..., 0], prob=0.5, kind="hdi")
    assert diff[1] - diff[0] == pytest.approx(2 * 0.674 * math.sqrt(2), abs=0.06)
    assert abs(diff.mean()) < 0.15
    # the exponential's highest-density interval starts at 0: -log(1 - 0.8) = 1.609 wide
    hdi = post.interval("sigma", prob=0.8, kind="hdi")
    assert hdi[0] < 0.01 and hdi[1] == pytest.approx(1.609, abs=0.06)
    with pytest.raises(ValueError, match="kind='mode' is unknown"):
        post.interval("mu", kind="mode")


def test_log_likelihood_is_pointwise_and_chunked():
    model, _ = Best.simulate(seed=2)
    g = torch.Generator().manual_seed(6)
    mu = torch.randn(2, 30, 2, generator=g, dtype=torch.float64)
    sigma = 0.5 + torch.rand(2, 30, 2, generator=g, dtype=torch.float64)
    post = bl.Posterior({"mu": mu, "sigma": sigma})
    expected = Normal(mu[..., 0, None], sigma[..., 0, None]).log_prob(model.y1)
    for chunk_size in (4096, 7):
        loglik = post.log_likelihood(model, chunk_size=chunk_size)
        assert set(loglik) == {"y1", "y2"} and loglik["y1"].shape == (2, 30, 20)
        torch.testing.assert_close(loglik["y1"], expected)
    with pytest.raises(ValueError, match=r"no draws of \['sigma'\]"):
        bl.Posterior({"mu": post["mu"]}).log_likelihood(model)


def test_to_arviz_with_a_model_feeds_loo(best_run):
    model, post = best_run
    idata = post.to_arviz(model=model)
    assert {"posterior", "sample_stats", "log_likelihood", "observed_data"} <= set(idata.groups())
    assert idata.log_likelihood["y1"].shape == (4, 250, 20)
    np.testing.assert_array_equal(idata.observed_data["y2"], model.y2.numpy())
    loo = az.loo(idata, var_name="y1")
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == 20
    # y1 informs two parameters, mu[0] and sigma[0]: about two effective parameters
    assert 1.0 < loo.p_loo < 4.0
    assert "log_likelihood" not in post.to_arviz().groups()
