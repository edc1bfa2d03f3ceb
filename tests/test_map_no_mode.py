"""find_map on a posterior with no mode says so (issue 12): the parameters that ran away to
an edge of the parameter space are named, and `check_mode` refuses to start chains there."""

import pytest
import torch
from torch.distributions import Normal, constraints

import bayeslib as bl
from bayeslib.inference import check_mode, running_away


class FreeScale(bl.Model):
    """y ~ Normal(mu, sigma) with a flat prior on sigma > 0: with one observation, or
    constant data, the density grows without bound as sigma -> 0 at mu = y."""

    mu = bl.Param(Normal(0.0, 10.0))
    sigma = bl.Param(support=constraints.positive)

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        return {"y": Normal(p.mu, p.sigma)}


class TwoScales(bl.Model):
    """Two groups, each with its own flat-prior scale: only the constant group has no mode."""

    mu = bl.Param(Normal(0.0, 10.0), shape=(2,))
    sigma = bl.Param(support=constraints.positive, shape=(2,))

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        return {"y": Normal(p.mu, p.sigma)}


def data(*values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("y", [data(1.0), data(2.0, 2.0, 2.0)], ids=["one", "constant"])
def test_a_scale_running_to_zero_is_named(y):
    model = FreeScale(y)
    with pytest.warns(UserWarning, match=r"no mode.*\['sigma'\].*proper prior"):
        result = bl.find_map(model)
    assert not result.converged and result.unbounded == ["sigma"]
    assert result.params["sigma"] < 1e-8  # where the optimiser stopped: far out, still rising
    with pytest.raises(bl.ModelError, match=r"FreeScale.*no mode.*\['sigma'\].*init='uniform'"):
        check_mode(result, model)


def test_sample_refuses_to_start_from_no_mode():
    model = FreeScale(data(1.0))
    with pytest.warns(UserWarning, match="no mode"):
        with pytest.raises(bl.ModelError, match=r"no mode.*\['sigma'\].*no mode to start"):
            bl.sample(model, init="map", warmup=10, draws=10, progress=False)


def test_a_posterior_with_a_mode_passes():
    model = FreeScale(data(0.5, 1.2, 2.0))
    result = bl.find_map(model)
    assert result.converged and result.unbounded == []
    check_mode(result, model)  # no error
    assert running_away(model, result.z, torch.zeros_like(result.z)) == []


def test_an_element_of_a_vector_is_named():
    y = data(1.0, 1.0, 1.0, 0.3, 1.9, -0.4).reshape(2, 3).T  # group 0 constant
    with pytest.warns(UserWarning, match=r"\['sigma\[0\]'\]"):
        result = bl.find_map(TwoScales(y))
    assert result.unbounded == ["sigma[0]"]


def test_a_stack_reports_per_data_set_with_one_warning():
    models = [FreeScale(data(1.0, 1.0, 1.0)), FreeScale(data(0.5, 1.2, 2.0))]
    models.append(FreeScale(data(3.0, 3.0, 3.0)))
    stack = bl.stack(models)
    with pytest.warns(UserWarning, match=r"data sets \[0, 2\]") as caught:
        results = bl.find_map(stack, max_iter=300)  # Newton iterates max_iter times
    assert len([w for w in caught if "no mode" in str(w.message)]) == 1
    assert [r.unbounded for r in results] == [["sigma"], [], ["sigma"]]
    assert [r.converged for r in results] == [False, True, False]
    with pytest.raises(bl.ModelError, match=r"data set 0"):
        check_mode(results, stack)
    check_mode(results[1], models[1])  # no error


class FarMean(bl.Model):
    """A mean with a flat prior and its mode 400 units out: a slow optimiser stopped on the
    way there has the log density still growing outward, yet the posterior has a mode."""

    mu = bl.Param()

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        return {"y": Normal(p.mu, 1.0)}


def test_a_slow_optimiser_is_not_called_unbounded():
    model = FarMean(data(399.0, 400.0, 401.0))
    result = bl.find_map(model, method="adam", max_iter=500)  # moves 0.05 per iteration
    assert not result.converged and 20.0 < float(result.z[0]) < 390.0
    assert result.unbounded == []
    check_mode(result, model)  # no error
