"""The seed's models and their simulators."""

import numpy as np
import pytest
import torch

from bayeslib.models import Best, BestStudentT, LinearRegression


@pytest.mark.parametrize("cls", [Best, BestStudentT])
def test_two_group_simulators(cls):
    model, truth = cls.simulate(n1=20, n2=30, effect_size=0.3, sigma=2.0, seed=1)
    assert model.y1.shape == (20,) and model.y2.shape == (30,)
    torch.testing.assert_close(truth["mu"], torch.tensor([0.6, 0.0], dtype=torch.float64))
    torch.testing.assert_close(truth["sigma"], torch.tensor([2.0, 2.0], dtype=torch.float64))
    assert set(truth) == set(model.param_shapes)
    again, _ = cls.simulate(n1=20, n2=30, effect_size=0.3, sigma=2.0, seed=1)
    assert torch.equal(again.y1, model.y1)
    other, _ = cls.simulate(n1=20, n2=30, effect_size=0.3, sigma=2.0, seed=2)
    assert not torch.equal(other.y1, model.y1)


def test_two_group_simulator_moments():
    model, _ = Best.simulate(n1=20000, n2=20000, effect_size=0.5, sigma=3.0, seed=3)
    # standard errors: 3 / sqrt(20000) = 0.021 for the mean; 3 / sqrt(40000) for the sd
    assert abs(model.y1.mean().item() - 1.5) < 5 * 0.021
    assert abs(model.y2.mean().item()) < 5 * 0.021
    assert abs(model.y1.std().item() - 3.0) < 5 * 3.0 / np.sqrt(40000)


def test_student_t_priors_scale_with_the_data():
    model, truth = BestStudentT.simulate(nu=4.0, seed=4)
    pooled = torch.cat([model.y1, model.y2])
    assert model.pooled_mean == pooled.mean() and model.pooled_sd == pooled.std()
    assert truth["nu_minus_one"].item() == 3.0
    draws = model.sample_prior(2000, seed=5)
    assert (draws["sigma"] >= pooled.std() / 1000).all()
    assert (draws["sigma"] <= pooled.std() * 1000).all()
    # nu - 1 ~ Exponential(1/29): mean 29, sd 29, so the mean of 2000 is within 5 * 29/sqrt(2000)
    assert abs(draws["nu_minus_one"].mean().item() - 29) < 5 * 29 / np.sqrt(2000)


def test_linear_simulator_is_the_seeds():
    model, truth = LinearRegression.simulate(n=200, beta=(2.0, 1.0, -3.0), sigma=1.0, seed=6)
    X = model.X.numpy()
    assert X.shape == (200, 3) and (X[:, 0] == 1).all()
    assert ((X[:, 1:] >= 0) & (X[:, 1:] < 1)).all()
    residual = model.y.numpy() - X @ np.array([2.0, 1.0, -3.0])
    assert abs(residual.std() - 1.0) < 5 / np.sqrt(400)
    assert model.param_shapes == {"beta": (3,), "sigma": ()}
    torch.testing.assert_close(truth["beta"], torch.tensor([2.0, 1.0, -3.0], dtype=torch.float64))


def test_linear_without_outcomes_only_predicts():
    model = LinearRegression(np.ones((4, 2)))
    assert model.observed == [] and "y" not in model.data
    z = torch.zeros(2, model.dim, dtype=torch.float64)
    # the log density is the prior's alone: two Uniform(-100, 100) and one Uniform(0, 100)
    expected = -2 * np.log(200) - np.log(100)
    torch.testing.assert_close(
        model.logdensity(z, jacobian=False), torch.full((2,), expected, dtype=torch.float64)
    )
