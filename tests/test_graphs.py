"""The kernels' phases over a static workspace (`bayeslib.samplers.graphs`), run on the CPU:
CUDA's capture and replay stand in for by running the phase again into the same workspace,
which is what a replayed graph does. What runs on CUDA alone (the capture itself) is tested
in tests/test_cuda.py on a GPU."""

import types

import numpy as np
import pytest
import torch
from test_sample import Correlated, assert_within_mcse

import bayeslib as bl
from bayeslib import sampling
from bayeslib.models import Best
from bayeslib.samplers import graphs, nuts

ITERATIONS = {"warmup": 150, "draws": 100, "progress": False}


@pytest.fixture
def as_off_the_cpu(monkeypatch):
    """NUTS draws each doubling's uniforms before it, as off the CPU."""
    monkeypatch.setattr(nuts, "draws_each_leaf", lambda device: False)


def best():
    rng = np.random.default_rng(1)
    return Best(rng.normal(0.0, 1.0, 30), rng.normal(0.5, 2.0, 25))


@pytest.mark.parametrize("sampler", ["nuts", "hmc"])
@pytest.mark.parametrize("dense_mass", [None, False])
def test_phases_in_a_static_workspace_give_the_same_draws(
    sampler, dense_mass, as_off_the_cpu, monkeypatch
):
    assert_replayed_phases_give_the_same_draws(
        dict(sampler=sampler, chains=8, seed=5, dense_mass=dense_mass, **ITERATIONS), monkeypatch
    )


@pytest.mark.parametrize("sampler", ["nuts", "hmc"])
def test_compiled_steps_in_a_static_workspace_give_the_same_draws(
    sampler, as_off_the_cpu, monkeypatch
):
    """`compile=True` under graphs, as on CUDA: the compiled leaf, join and HMC step called
    in phases over the static workspace (HMC's step reading its entries of a workspace
    NUTS's phases share) give the draws of the same compiled steps without phases."""
    run = dict(sampler=sampler, chains=8, seed=6, compile=True, **ITERATIONS)
    assert_replayed_phases_give_the_same_draws(run, monkeypatch)


def assert_replayed_phases_give_the_same_draws(run: dict, monkeypatch):
    """The draws and statistics of `bl.sample(best(), **run)`, and of the same run with every
    phase captured (a replay runs the phase again, into the same workspace), are equal."""
    without = bl.sample(best(), **run)
    captured = []

    def capture(step, graphs_):
        """A replay runs the step again, into the same workspace."""
        captured.append(step)
        return types.SimpleNamespace(replay=step)

    monkeypatch.setattr(graphs, "warm_up", lambda step: step())
    monkeypatch.setattr(graphs, "capture", capture)
    make_target = sampling.make_target
    monkeypatch.setattr(
        sampling,
        "make_target",
        lambda *a, **k: make_target(*a, **k)._replace(graphs=graphs.Graphs()),
    )
    replayed = bl.sample(best(), **run)  # every phase captured, then replayed
    assert captured  # phases ran from the static workspace
    assert replayed.attrs["compiled"] == without.attrs["compiled"] == run.get("compile", False)
    for name in without.names:
        assert torch.equal(without[name], replayed[name]), name
    for name in without.stats:
        assert torch.equal(without.stats[name], replayed.stats[name]), name


def test_nuts_with_each_doublings_uniforms_drawn_before_it(as_off_the_cpu):
    """The draws of the off-CPU NUTS path: a Gaussian correlated at 0.95, mean and sd within 4
    MCSE of the truth."""
    post = bl.sample(Correlated(), chains=4, warmup=500, draws=1000, seed=3, progress=False)
    x = post["x"].numpy()
    for i in range(2):
        assert_within_mcse(x[..., i], 0.0, 1.0)
