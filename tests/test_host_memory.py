"""Kept draws go to host memory as they come, and a run whose draws cannot fit there is
refused before it starts."""

import pytest
import torch
from torch.distributions import Normal

import bayeslib as bl
import bayeslib.sampling
from bayeslib.models import Best
from bayeslib.samplers import make_sampler
from bayeslib.sampling import available_memory, host_bytes, run_chains
from bayeslib.tracing import make_target


class Counted(bl.Model):
    """Counts the evaluations of its log density."""

    calls = 0
    mu = bl.Param(Normal(0.0, 1.0))

    def observe(self, p):
        Counted.calls += 1
        return {}


def test_a_run_that_cannot_fit_in_host_memory_is_refused_before_sampling():
    model = Counted()
    Counted.calls = 0
    with pytest.raises(ValueError) as refused:
        bl.sample(model, "nuts", chains=4, draws=10**12, traced=False, progress=False)
    message = str(refused.value)
    assert "GiB of host memory" in message and "GiB are available" in message
    assert "fewer draws" in message and "thin" in message and "fewer chains" in message
    assert Counted.calls == 0  # not even a starting point was evaluated


def test_the_estimate_covers_what_the_posterior_holds():
    model = Best.simulate(seed=0)[0]
    post = bl.sample(model, "nuts", chains=2, warmup=30, draws=20, thin=2, progress=False)
    held = sum(
        value.numel() * value.element_size()
        for group in (post.draws, post.stats, post.warmup, post.warmup_stats)
        for value in group.values()
    )
    estimate = host_bytes(model, make_sampler("nuts"), 2, 30, 20, 2)
    assert held <= estimate <= 3 * held
    assert available_memory() > 0


@pytest.mark.parametrize("sampler", ["nuts", "hmc", "metropolis"])
@pytest.mark.parametrize("chunk_size", [1, 7])
def test_chunked_copies_give_the_draws_of_direct_writes(sampler, chunk_size):
    """Through a buffer of `chunk_size` kept iterations (as off the CPU), the draws and
    statistics are those written straight into host memory, bit for bit."""
    model = Best.simulate(seed=1)[0]
    kernel = make_sampler(sampler)
    runs = []
    for chunk in (None, chunk_size):
        g = torch.Generator().manual_seed(5)
        z0 = 4 * torch.rand(3, model.dim, generator=g, dtype=torch.float64) - 2
        target = make_target(model, z0, kernel.needs_grad)
        runs.append(run_chains(kernel, target, z0, g, 41, 16, thin=2, chunk_size=chunk))
    direct, chunked = runs
    assert direct.positions.shape == (3, 16, model.dim)
    assert direct.warmup_positions.shape == (3, 20, model.dim)
    assert torch.equal(direct.positions, chunked.positions)
    assert torch.equal(direct.warmup_positions, chunked.warmup_positions)
    for name in direct.stats:
        assert torch.equal(direct.stats[name], chunked.stats[name]), name
        assert torch.equal(direct.warmup_stats[name], chunked.warmup_stats[name]), name


def test_constraining_in_chunks_gives_the_same_draws(monkeypatch):
    """The draws are constrained on the device a chunk at a time (here one draw at a
    time), with the values of one pass over all of them."""
    model = Best.simulate(seed=2)[0]
    options = dict(chains=2, warmup=20, draws=15, seed=3, progress=False)
    whole = bl.sample(model, "metropolis", **options)
    monkeypatch.setattr(bayeslib.sampling, "CHUNK_BYTES", 1)
    chunked = bl.sample(model, "metropolis", **options)
    for name in whole.names:
        assert torch.equal(whole[name], chunked[name]), name
        assert torch.equal(whole.warmup[name], chunked.warmup[name]), name
