"""Intra-op threads (issue 16): the entry points run their loops with threads chosen for the
work or given by `threads=`, restore the caller's setting, and draw the same bits either way.

tests/conftest.py sets 1 thread for the session; the `user_threads` fixture sets another value
the library must not leave changed, and puts the session's back after each test.
"""

import subprocess
import sys
import time

import pytest
import torch
from torch.distributions import Normal

import bayeslib as bl
from bayeslib.models import Best, LinearRegression
from bayeslib.samplers import NUTS
from bayeslib.threads import (
    ELEMENTS_PER_THREAD,
    check_threads,
    choose_threads,
    idle_cores,
    intra_op_threads,
    work,
)

USER = 3  # a setting no choice of the library's gives on a 2-core machine


@pytest.fixture
def user_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(USER)
    yield USER
    torch.set_num_threads(before)


class Recorder(bl.Model):
    """y ~ Normal(mu, 1); every evaluation of its code records the intra-op thread count."""

    mu = bl.Param(Normal(0.0, 1.0))
    seen: list = []

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        Recorder.seen.append(torch.get_num_threads())
        return {"y": Normal(p.mu, 1.0)}


def recorder(n=10):
    Recorder.seen = []
    model = Recorder(torch.linspace(-1.0, 1.0, n, dtype=torch.float64))
    Recorder.seen = []
    return model


class RecordingNUTS(NUTS):
    """NUTS that records the thread count at every transition, and raises at `fail_at`."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.seen, self.fail_at = [], fail_at

    def step(self, generator, target, state, params):
        self.seen.append(torch.get_num_threads())
        if len(self.seen) == self.fail_at:
            raise RuntimeError("the sampler failed")
        return super().step(generator, target, state, params)


def short(model, **options):
    return bl.sample(model, warmup=20, draws=20, progress=False, **options)


# ----- the caller's setting is restored


def test_sample_restores_the_callers_threads_and_runs_small_models_on_one(user_threads):
    kernel = RecordingNUTS()
    short(LinearRegression.simulate()[0], sampler=kernel, chains=4)
    assert torch.get_num_threads() == user_threads
    assert set(kernel.seen) == {1}
    assert len(kernel.seen) == 40


def test_sample_restores_the_callers_threads_when_the_loop_raises(user_threads):
    for threads in (None, 2):
        kernel = RecordingNUTS(fail_at=5)
        with pytest.raises(RuntimeError, match="the sampler failed"):
            short(Best.simulate()[0], sampler=kernel, chains=4, threads=threads)
        assert torch.get_num_threads() == user_threads
        assert set(kernel.seen) == {threads or 1}


def test_find_map_and_predictive_restore_the_callers_threads(user_threads):
    model = LinearRegression.simulate()[0]
    post = short(model, chains=2)
    assert torch.get_num_threads() == user_threads
    bl.find_map(model)
    assert torch.get_num_threads() == user_threads
    bl.posterior_predictive(model, post)
    assert torch.get_num_threads() == user_threads
    bl.prior_predictive(model, 5)
    assert torch.get_num_threads() == user_threads
    bl.ppc(model, post)
    assert torch.get_num_threads() == user_threads
    with pytest.raises(ValueError, match="thin"):
        bl.posterior_predictive(model, post, thin=0)
    assert torch.get_num_threads() == user_threads


def test_intra_op_threads_sets_and_restores(user_threads):
    with pytest.raises(KeyError):
        with intra_op_threads(2):
            assert torch.get_num_threads() == 2
            raise KeyError("inside")
    assert torch.get_num_threads() == user_threads
    with intra_op_threads(None):
        assert torch.get_num_threads() == user_threads


# ----- threads= is honoured, in the loop and in what the call runs inside it


def test_explicit_threads_reach_the_loop_and_every_log_density(user_threads):
    kernel = RecordingNUTS()
    model = recorder()
    short(model, sampler=kernel, chains=4, init="map", traced=False, threads=2)
    assert set(kernel.seen) == {2}
    assert len(Recorder.seen) > 40  # find_map's evaluations, the starts and every step
    assert set(Recorder.seen) == {2}
    assert torch.get_num_threads() == user_threads


def test_automatic_threads_reach_everything_the_call_runs(user_threads):
    model = recorder()
    short(model, chains=4, init="map", traced=False)
    assert set(Recorder.seen) == {1}


@pytest.mark.parametrize(
    "call",
    [
        lambda model, post, threads: bl.find_map(model, threads=threads),
        lambda model, post, threads: bl.posterior_predictive(model, post, threads=threads),
        lambda model, post, threads: bl.prior_predictive(model, 3, threads=threads),
        lambda model, post, threads: bl.ppc(model, post, threads=threads),
    ],
    ids=["find_map", "posterior_predictive", "prior_predictive", "ppc"],
)
def test_other_entry_points_honour_threads(user_threads, call):
    model = recorder()
    post = short(model, chains=2)
    for threads, expected in ((2, 2), (None, 1)):
        Recorder.seen = []
        call(model, post, threads)
        assert Recorder.seen and set(Recorder.seen) == {expected}
        assert torch.get_num_threads() == user_threads


def test_a_large_batch_gets_more_threads(user_threads, monkeypatch):
    # The tests run in parallel on few cores: say two are idle, as on a quiet 2-core machine.
    monkeypatch.setattr("bayeslib.threads.idle_cores", lambda: 2.0)
    kernel = RecordingNUTS()
    large = recorder(2 * ELEMENTS_PER_THREAD)  # one chain, 65536 observations
    bl.sample(large, sampler=kernel, chains=1, warmup=2, draws=2, progress=False)
    assert set(kernel.seen) == {2}
    assert torch.get_num_threads() == user_threads


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_threads_must_be_a_positive_int_or_none(bad):
    model = Best.simulate()[0]
    for name, call in [
        ("sample", lambda: bl.sample(model, threads=bad)),
        ("find_map", lambda: bl.find_map(model, threads=bad)),
        ("prior_predictive", lambda: bl.prior_predictive(model, 3, threads=bad)),
    ]:
        with pytest.raises(ValueError, match=f"{name}: threads must be a positive int or None"):
            call()
    assert check_threads(None, "f") is None and check_threads(4, "f") == 4


# ----- the choice


def test_the_choice_grows_with_the_work_per_operation():
    best, linear = Best.simulate()[0], LinearRegression.simulate()[0]
    # Elements per operation: chains x the largest observed field (x data sets of a stack).
    assert work(best, 4) == 4 * 20
    assert work(linear, 1024) == 1024 * 200
    assert work(bl.stack([best] * 50), 64) == 50 * 64 * 20
    assert work(linear, 4, device="cuda") is None
    assert work(linear, 1, new_data={"X": torch.ones(10**5, 3)}) == 3 * 10**5
    # One thread per ELEMENTS_PER_THREAD elements, at least 1, at most what is available.
    assert choose_threads(work(best, 4), 2) == 1
    assert choose_threads(work(best, 1024), 2) == 1
    assert choose_threads(2 * ELEMENTS_PER_THREAD - 1, 2) == 1
    assert choose_threads(2 * ELEMENTS_PER_THREAD, 2) == 2
    assert choose_threads(work(linear, 1024), 2) == 2
    assert choose_threads(work(linear, 1024), 16) == 6
    assert choose_threads(10**9, 1) == 1  # torch.set_num_threads(1) still caps it
    assert choose_threads(None, 2) is None


def test_busy_cores_cap_the_choice(user_threads):
    """With every core kept busy by another process, a large batch gets one thread."""
    cores = len(_cpu_lines())
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        assert idle_cores(0.2) < 0.5 * cores
        assert choose_threads(10**9) <= max(1, round(0.5 * cores))
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    assert 0 <= idle_cores(0.05) <= cores


def _cpu_lines():
    with open("/proc/stat") as stat:
        return [line for line in stat if line.startswith("cpu") and line[3].isdigit()]


# ----- the draws do not depend on the thread count


@pytest.mark.parametrize(
    "model, sampler, chains, options",
    [
        (Best.simulate()[0], "nuts", 4, {}),
        # 256 chains x 200 observations: the log density's operations are split across threads
        # (few, short trees keep the test quick on a busy machine, where two threads are slow)
        (LinearRegression.simulate()[0], "nuts", 256, {"max_tree_depth": 2}),
        (LinearRegression.simulate()[0], "metropolis", 512, {}),
    ],
    ids=["best-nuts-4", "linear-nuts-256", "linear-metropolis-512"],
)
def test_draws_are_the_same_bits_with_one_thread_or_two(model, sampler, chains, options):
    def run(threads):
        return bl.sample(model, sampler, chains, 5, 5, threads=threads, progress=False, **options)

    one, two = run(1), run(2)
    for name in one.names:
        assert torch.equal(one[name], two[name]), name
    assert torch.equal(one.stats["lp"], two.stats["lp"])


def test_find_map_and_predictive_are_the_same_bits_with_one_thread_or_two():
    model = LinearRegression.simulate()[0]
    assert torch.equal(bl.find_map(model, threads=1).z, bl.find_map(model, threads=2).z)
    post = short(model, chains=2)
    one = bl.posterior_predictive(model, post, threads=1)["y"]
    assert torch.equal(one, bl.posterior_predictive(model, post, threads=2)["y"])
