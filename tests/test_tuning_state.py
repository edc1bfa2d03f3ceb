"""Tuning state in the open: kernels are pure functions of (generator, target, state,
params), adaptation an init/update/final triple over its own state, and the sampler object
holds only its options, which the Posterior records."""

import copy

import pytest
import torch
from torch.distributions import MultivariateNormal

import bayeslib as bl
from bayeslib.models import Best
from bayeslib.samplers import HMC, NUTS, RandomWalkMetropolis, Target
from bayeslib.sampling import run_chains

DTYPE = torch.float64


def gaussian_target(cov):
    precision = torch.linalg.inv(cov)

    def logdensity(z):
        return -0.5 * torch.einsum("ci,ij,cj->c", z, precision, z)

    return Target(lambda z: (logdensity(z), -z @ precision), logdensity)


COV = torch.tensor([[1.0, 0.8], [0.8, 2.0]], dtype=DTYPE)


@pytest.mark.parametrize(
    "sampler", [NUTS(), HMC(), RandomWalkMetropolis()], ids=["nuts", "hmc", "metropolis"]
)
def test_step_is_a_pure_function_of_its_arguments(sampler):
    """The same generator state, target, state and params give the same transition, and
    running chains leaves the sampler object as it was: all tuning lives in params."""
    target = gaussian_target(COV)
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(4, 2, generator=g, dtype=DTYPE)
    before = copy.deepcopy(vars(sampler))
    run = run_chains(sampler, target, z0, g, warmup=60, draws=5)
    assert vars(sampler) == before

    state = sampler.init_state(target, run.positions[:, -1])
    saved = g.get_state()
    first = sampler.step(g, target, state, run.params)
    g.set_state(saved)
    again = sampler.step(g, target, state, run.params)
    for a, b in zip(first[0], again[0], strict=True):
        assert a is None and b is None or torch.equal(a, b)
    assert torch.equal(first[1].acceptance_rate, again[1].acceptance_rate)
    # the run's recorded step size is the step size of the params it hands back
    assert torch.equal(run.stats["step_size"][:, -1], run.params.step_size)


def test_adaptation_is_init_update_final_over_its_own_state():
    """Warmup as three pure functions: the state counts the iterations it was fed, the
    params change only through what they return, and HMC's NUTS phase is a field of its
    params that ends when the first metric window closes (Stan's window ends at 99 here)."""
    target = gaussian_target(COV)
    g = torch.Generator().manual_seed(2)
    sampler = HMC()
    state = sampler.init_state(target, torch.randn(4, 2, generator=g, dtype=DTYPE))
    params = sampler.init_params(state)
    assert params.nuts is False
    adaptation = sampler.adaptation(warmup=200, dim=2)
    params, adapting = adaptation.init(g, target, state, params)
    assert params.nuts is True and adapting.iteration == 0
    phases = []
    for _ in range(200):
        state, info = sampler.step(g, target, state, params)
        given = params
        params, adapting = adaptation.update(g, target, state, info, params, adapting)
        assert given.nuts in (True, False)  # the old params are untouched values
        phases.append(params.nuts)
    assert adapting.iteration == 200
    assert phases.index(False) == 99 and not any(phases[99:])
    final = adaptation.final(params, adapting)
    assert torch.equal(final.step_size, adapting.dual_averaging.x_avg.exp())
    assert final.metric is params.metric


class Ridge(bl.Model):
    """A correlation of 0.99999: with a diagonal metric NUTS needs trajectories of hundreds
    of leapfrog steps, so its trees reach any depth under 9."""

    x = bl.Param(MultivariateNormal(torch.zeros(2), torch.tensor([[1.0, 0.99999], [0.99999, 1.0]])))


def test_a_run_records_its_options_and_warns_at_its_own_max_tree_depth(tmp_path):
    post = bl.sample(
        Ridge(),
        "nuts",
        chains=2,
        warmup=40,
        draws=40,
        seed=1,
        progress=False,
        max_tree_depth=8,
        dense_mass=False,
    )
    assert post.attrs["max_tree_depth"] == 8 and post.max_tree_depth == 8
    assert post.attrs["target_accept"] == 0.8 and post.attrs["dense_mass"] is False
    depth = post.stats["tree_depth"]
    assert depth.max() == 8 and (depth == 8).any()
    warnings = post.warnings()
    assert any("hit max_tree_depth=8" in w for w in warnings), warnings
    assert post.sampler_summary()["max_tree_depth_hits"] == int((depth >= 8).sum())
    # the record survives a file
    assert bl.Posterior.load(post.save(tmp_path / "post.npz")).max_tree_depth == 8


@pytest.mark.parametrize(
    "sampler, options, expected",
    [
        ("nuts", {"target_accept": 0.9}, {"target_accept": 0.9, "max_tree_depth": 10}),
        (
            "hmc",
            {"trajectory_length": 1.5, "max_steps": 64},
            {"trajectory_length": 1.5, "max_steps": 64, "target_accept": 0.8},
        ),
        (
            "metropolis",
            {"dense_covariance": False},
            {"dense_covariance": False, "target_accept": None, "initial_scale": None},
        ),
    ],
)
def test_the_sampler_options_are_in_the_attrs(sampler, options, expected):
    model = Best.simulate(seed=0)[0]
    post = bl.sample(model, sampler, chains=2, warmup=20, draws=10, progress=False, **options)
    for key, value in expected.items():
        assert post.attrs[key] == value, key
    if sampler != "nuts":
        assert "max_tree_depth" not in post.attrs


@pytest.mark.parametrize("sampler", [NUTS(), RandomWalkMetropolis()], ids=["nuts", "metropolis"])
def test_the_adapted_params_are_shared_within_a_data_set_and_not_across(sampler):
    """Two groups of 4 chains whose targets differ 100 times in scale: each group's chains
    end warmup with one step size and one metric (or proposal) of their own."""
    scale = torch.tensor([1.0] * 4 + [0.01] * 4, dtype=DTYPE).unsqueeze(-1)

    def logdensity(z):
        return -0.5 * ((z / scale) ** 2).sum(-1)

    target = Target(lambda z: (logdensity(z), -z / scale**2), logdensity)
    g = torch.Generator().manual_seed(4)
    z0 = torch.randn(8, 2, generator=g, dtype=DTYPE) * scale
    run = run_chains(sampler, target, z0, g, warmup=200, draws=5, groups=2)
    variances = sampler.variances(run.params).reshape(2, 4, 2)
    step_size = run.params.step_size.reshape(2, 4)
    assert (variances == variances[:, :1]).all() and (step_size == step_size[:, :1]).all()
    ratio = variances[0, 0] / variances[1, 0]
    assert ((ratio > 1e3) & (ratio < 1e5)).all(), ratio
