"""find_map finds the seed's answers: the mode of the constrained density, no Jacobian."""

import pytest
import torch

import bayeslib as bl
from bayeslib.models import Best, LinearRegression


def best_mode_residuals(y, mu, sigma):
    """Stationarity of log N(mu | 0, 1) + sum log N(y | mu, sigma) (sigma's prior is flat)."""
    n = y.numel()
    return mu - y.sum() / (n + sigma**2), sigma**2 - ((y - mu) ** 2).mean()


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_best_map_is_the_mode(method):
    model, _ = Best.simulate(n1=20, n2=20, effect_size=0.3, seed=11)
    result = bl.find_map(model, method=method, max_iter=5000)
    assert result.converged
    for j, y in enumerate((model.y1, model.y2)):
        mu, sigma = result.params["mu"][j], result.params["sigma"][j]
        tol = 1e-6 if method == "lbfgs" else 1e-4
        for residual in best_mode_residuals(y, mu, sigma):
            assert abs(residual.item()) < tol
        # the seed's reading: close to the group's mean and standard deviation
        assert abs(mu - y.mean()) < 0.05 and abs(sigma - y.std(unbiased=False)) < 1e-3


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_linear_map_is_least_squares(method):
    model, _ = LinearRegression.simulate(n=200, seed=12)
    result = bl.find_map(model, method=method, max_iter=5000)
    beta = torch.linalg.lstsq(model.X, model.y[:, None]).solution.ravel()
    rss = ((model.y - model.X @ beta) ** 2).sum()
    tol = 1e-6 if method == "lbfgs" else 1e-3
    torch.testing.assert_close(result.params["beta"], beta, atol=tol, rtol=0)
    assert abs(result.params["sigma"] - (rss / 200).sqrt()) < tol
    expected = (
        torch.distributions.Normal(model.X @ beta, (rss / 200).sqrt()).log_prob(model.y).sum()
        - 3 * torch.log(torch.tensor(200.0))
        - torch.log(torch.tensor(100.0))
    )
    assert result.log_density == pytest.approx(expected.item(), abs=1e-6)
    assert result.z.shape == (4,)


def test_map_is_the_same_from_any_start():
    model, _ = Best.simulate(seed=13)
    modes = [bl.find_map(model, seed=s).params["mu"] for s in range(3)]
    modes.append(bl.find_map(model, init="zeros").params["mu"])
    for mode in modes[1:]:
        torch.testing.assert_close(mode, modes[0], atol=1e-6, rtol=0)


def test_not_converged_is_reported():
    model, _ = LinearRegression.simulate(n=50)
    result = bl.find_map(model, method="adam", max_iter=3)
    assert not result.converged and result.iterations == 3 and result.grad_max > 1e-3


def test_bad_arguments():
    model, _ = Best.simulate()
    with pytest.raises(ValueError, match="method='newton' is unknown"):
        bl.find_map(model, method="newton")
    with pytest.raises(ValueError, match="max_iter must be a positive int"):
        bl.find_map(model, max_iter=0)
    with pytest.raises(TypeError, match="needs a bl.Model"):
        bl.find_map(lambda z: z)


@pytest.mark.parametrize("data_seed, seed", [(1, 18), (3, 8)])
def test_a_start_whose_line_search_steps_to_nan_is_replaced(data_seed, seed):
    """From these uniform starts, L-BFGS steps to where sigma underflows to 0 and the density
    is NaN, and its line search gives up; find_map starts again and still finds least
    squares."""
    model, _ = LinearRegression.simulate(n=200, seed=data_seed)
    result = bl.find_map(model, seed=seed)
    beta = torch.linalg.lstsq(model.X, model.y[:, None]).solution.ravel()
    assert result.converged
    torch.testing.assert_close(result.params["beta"], beta, atol=1e-6, rtol=0)
