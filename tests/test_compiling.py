"""Kernels' inner steps compiled with the traced log density (`bayeslib.compiling`,
`sample(compile=True)`): the compiled NUTS leaf against the leaf run operation by operation,
compiled runs against uncompiled ones and the truth, the cache, and the refusals."""

import functools
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sample import RHO, Correlated, assert_within_mcse
from test_tracing import Branching, failing_z, poisson_gp, random_z

import bayeslib as bl
from bayeslib import compiling
from bayeslib.models import Best
from bayeslib.samplers import nuts
from bayeslib.samplers.metrics import make_metric
from bayeslib.samplers.nuts import SubTree, check_masks, checkpoint_indices, leaf
from bayeslib.tracing import make_target, recorded, trace_logdensity

MAX_TREE_DEPTH = 6


def best():
    rng = np.random.default_rng(1)
    return Best(rng.normal(0.0, 1.0, 30), rng.normal(0.5, 2.0, 25))


def random_leaf_arguments(generator, chains, dim):
    """A sub-tree midway: random states, some chains already out of it, one far out (its
    leaf diverges), and random checkpoints."""

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    z = randn(chains, dim)
    z[0] = 40.0  # far in the tails: its leaf's weight is below -max_delta_energy
    active = torch.rand(chains, generator=generator) < 0.75
    active[0] = True
    sub = SubTree(
        z,
        randn(chains, dim),
        randn(chains, dim),
        randn(chains),
        randn(chains, dim),
        randn(chains),
        randn(chains, dim),
        randn(chains),
        randn(chains, dim),
        active,
    )
    eps = 0.3 * randn(chains, 1)
    metric = make_metric(0.5 + torch.rand(chains, dim, generator=generator, dtype=torch.float64))
    neg_log_u = torch.empty(chains, dtype=torch.float64).exponential_(generator=generator)
    checkpoints = tuple(randn(3, MAX_TREE_DEPTH, chains, dim))
    return sub, eps, metric, randn(chains), neg_log_u, checkpoints


def test_the_compiled_leaf_is_the_leaf():
    """At even leaves (no U-turn check) and odd leaves checking 1 to 3 checkpoints, with
    chains out of the sub-tree and a diverging one: the compiled leaf, given every checkpoint
    and a mask, gives the leaf's values on the checkpoints it checks, to rounding (float64:
    1e-12), and the same booleans."""
    model = best()
    chains, dim = 6, model.dim
    generator = torch.Generator().manual_seed(0)
    target = make_target(model, torch.zeros(chains, dim, dtype=torch.float64))
    run_leaf = functools.partial(
        leaf, logdensity_and_grad=target.logdensity_and_grad, max_delta_energy=1000.0
    )
    masks = check_masks(MAX_TREE_DEPTH, torch.device("cpu"))
    example = random_leaf_arguments(generator, chains, dim)
    compiled = compiling.compile_function(run_leaf, (*example, masks[1]))
    for n in (0, 1, 2, 3, 7):
        args = random_leaf_arguments(generator, chains, dim)
        *before, checkpoints = args
        idx_min, idx_max = checkpoint_indices(n)
        span = slice(idx_min, idx_max + 1)
        checked = None if n % 2 == 0 else tuple(c[span] for c in checkpoints)
        expected = run_leaf(*before, checked, None)
        got = compiled(*args, masks[n])
        assert not bool(expected[0].active[0])  # the far-out chain diverged and left
        for e, g in zip(*(compiling._flatten(x)[0] for x in (expected, got)), strict=True):
            if e.dtype.is_floating_point:
                torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12, equal_nan=True)
            else:
                assert torch.equal(g, e), n


def test_the_compiled_join_is_the_join_and_the_next_begin():
    """The join of a sub-tree of 3 built leaves to the tree, compiled over rows for every leaf
    a sub-tree can have (those not built: 0 and False), then the next sub-tree's start: the
    values of `_join` on the 3 built rows and `_begin`, to rounding."""
    model = best()
    chains, dim = 6, model.dim
    generator = torch.Generator().manual_seed(1)
    target = make_target(model, torch.zeros(chains, dim, dtype=torch.float64))
    target = target._replace(compiled=compiling.Compiled())
    sub, eps, metric, h0, _, _ = random_leaf_arguments(generator, chains, dim)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    tree = {key: randn(chains, dim) for key in nuts.TREE_KEYS}
    for key in ("lp_prop", "prop_log_weight", "log_weight", "sum_accept", "lp0"):
        tree[key] = randn(chains)
    tree["step_size"] = torch.rand(chains, generator=generator, dtype=torch.float64)
    tree["active"] = torch.rand(chains, generator=generator) < 0.7
    tree["depth"] = torch.full((chains,), 2)
    tree["n_steps"] = torch.full((chains,), 3)
    tree["diverging"] = torch.zeros(chains, dtype=torch.bool)
    tree["metric"] = metric
    rows = 2 ** (MAX_TREE_DEPTH - 1)
    leaf_log_weights, leaf_active = (
        torch.zeros(rows, chains, dtype=torch.float64),
        torch.zeros(rows, chains, dtype=torch.bool),
    )
    leaf_log_weights[:3] = -2.0 * torch.rand(3, chains, generator=generator, dtype=torch.float64)
    leaf_log_weights[2, 1] = -5000.0  # diverged
    leaf_active[:3] = torch.rand(3, chains, generator=generator) < 0.8
    leaf_active[2, 1] = True
    right = torch.rand(chains, generator=generator) < 0.5
    accept_u, next_u = torch.rand(2, chains, generator=generator, dtype=torch.float64)
    ws = {**tree, "sub": sub, "right": right, "uniforms": torch.stack([next_u, accept_u])[:, None]}
    join = target.compiled.function(
        *nuts.join_request(target, ws, (leaf_log_weights, leaf_active), 1000.0)
    )
    got = join(tree, sub, leaf_log_weights, leaf_active, right, accept_u, next_u)
    expected = nuts._join(tree, sub, leaf_log_weights[:3], leaf_active[:3], right, accept_u, 1000.0)
    expected = {**expected, **nuts._begin({**tree, **expected}, next_u)}
    assert bool(expected["diverging"][1]) and set(got) == set(expected)
    for name in expected:
        for e, g in zip(
            *(compiling._flatten(v)[0] for v in (expected[name], got[name])), strict=True
        ):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12, equal_nan=True, msg=name)


@pytest.mark.parametrize("sampler", ["nuts", "hmc"])
def test_compiled_runs_follow_the_uncompiled_draws_and_find_the_truth(sampler, monkeypatch):
    """A Gaussian correlated at 0.95, dense metric. Compiled code rounds differently, so a
    compiled run follows the uncompiled run of the same seed until a rounding difference
    flips an accept decision: the first warmup iterations agree to 1e-8. The compiled draws'
    mean and sd are within 4 MCSE of the truth. A second compiled run loads the library from
    the cache (nothing is compiled) and gives the same draws, bit for bit."""
    run = dict(chains=4, warmup=500, draws=1000, seed=3, progress=False)
    plain = bl.sample(Correlated(), sampler, **run)
    compiled = bl.sample(Correlated(), sampler, compile=True, **run)
    assert compiled.attrs["compiled"] and not plain.attrs["compiled"]
    assert plain.attrs["compile_time"] == 0.0
    assert 0 < compiled.attrs["compile_time"] < compiled.attrs["warmup_time"]
    early = slice(0, 10)
    np.testing.assert_allclose(
        compiled.warmup["x"][:, early].numpy(), plain.warmup["x"][:, early].numpy(), atol=1e-8
    )
    x = compiled["x"].numpy()
    for i in range(2):
        assert_within_mcse(x[..., i], 0.0, 1.0)
    assert abs(np.corrcoef(x[..., 0].ravel(), x[..., 1].ravel())[0, 1] - RHO) < 0.02

    def no_build(*args):
        raise AssertionError("compiled again instead of loading from the cache")

    monkeypatch.setattr(compiling, "_build", no_build)
    again = bl.sample(Correlated(), sampler, compile=True, **run)
    assert torch.equal(again["x"], compiled["x"])
    for name in compiled.stats:
        assert torch.equal(again.stats[name], compiled.stats[name]), name


def test_a_compilation_is_announced_and_a_load_from_the_cache_is_not(monkeypatch, tmp_path, caplog):
    """Compiling logs what and where (logger "bayeslib") and calls `notify` (`sample`'s
    line above the progress bar); loading the same library from the cache does neither."""
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path))
    x = torch.randn(4, 3, dtype=torch.float64)
    notified = []
    with caplog.at_level("INFO", logger="bayeslib"):
        first = compiling.compile_function(torch.sin, (x,), "the sine", notified.append)
    assert notified == ["the sine"]
    assert any(
        "compiling the sine into" in r.message and str(tmp_path) in r.message
        for r in caplog.records
    )
    caplog.clear()
    with caplog.at_level("INFO", logger="bayeslib"):
        again = compiling.compile_function(torch.sin, (x,), "the sine", notified.append)
    assert notified == ["the sine"] and not caplog.records
    assert again.path == first.path
    torch.testing.assert_close(again(x), torch.sin(x), rtol=1e-12, atol=1e-12)


def test_a_compilation_ahead_runs_in_a_child_process_whose_library_is_used(monkeypatch, tmp_path):
    """`Compiled.ahead` starts compiling in a child process (announced then); `function`
    waits for it and loads its library, which gives the function's values: nothing is
    compiled in this process, and the child's job file is gone."""
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path))
    x = torch.randn(4, 3, dtype=torch.float64)
    notified = []
    compiled = compiling.Compiled(notified.append)
    compiled.ahead("cos", "the cosine", lambda: (torch.cos, (x,)))
    assert notified == ["the cosine"]
    _, child = compiled.ahead_of_use["cos"]

    def no_build(*args):
        raise AssertionError("compiled in this process")

    monkeypatch.setattr(compiling, "_build", no_build)
    cos = compiled.function("cos", "the cosine", lambda: (torch.cos, (x,)))
    assert child.returncode == 0 and notified == ["the cosine"]
    torch.testing.assert_close(cos(x), torch.cos(x), rtol=1e-12, atol=1e-12)
    assert [p.name for p in (tmp_path / "compiled").iterdir()] == [cos.path.name]


@pytest.mark.parametrize("child", ["fails", "cannot start"])
def test_a_failed_compilation_ahead_is_compiled_in_this_process(child, monkeypatch, tmp_path):
    """A child that fails (here: one that exits at once), or that cannot be started (no
    interpreter to start), leaves no library and no job file: `function` compiles
    it in this process, announcing it again."""
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path))
    if child == "fails":
        executable = sys.executable
        monkeypatch.setattr(
            compiling,
            "_compile_in_child",
            lambda recording, what: subprocess.Popen([executable, "-c", "raise SystemExit(1)"]),
        )
    else:

        def no_interpreter(*args, **kwargs):
            raise FileNotFoundError(2, "No such file or directory", "python")

        spawning = types.SimpleNamespace(Popen=no_interpreter, DEVNULL=subprocess.DEVNULL)
        monkeypatch.setattr(compiling, "subprocess", spawning)
    x = torch.randn(4, 3, dtype=torch.float64)
    notified = []
    compiled = compiling.Compiled(notified.append)
    compiled.ahead("cos", "the cosine", lambda: (torch.cos, (x,)))
    cos = compiled.function("cos", "the cosine", lambda: (torch.cos, (x,)))
    assert notified == ["the cosine", "the cosine"]
    assert [p.name for p in (tmp_path / "compiled").iterdir()] == [cos.path.name]
    torch.testing.assert_close(cos(x), torch.cos(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("damage", ["not a library", "cut short"])
def test_a_damaged_cached_library_is_compiled_again(damage, monkeypatch, tmp_path, caplog):
    """A cached library that cannot be loaded (not a package, or a package cut short, as by
    a full disk) is compiled again, with a warning naming it, and then computes right."""
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path))
    x = torch.randn(4, 3, dtype=torch.float64)
    path = compiling.compile_function(torch.sin, (x,), "the sine").path
    whole = path.read_bytes()
    path.write_bytes(b"not a library" if damage == "not a library" else whole[: len(whole) // 2])
    with caplog.at_level("WARNING", logger="bayeslib"):
        sine = compiling.compile_function(torch.sin, (x,), "the sine")
    assert any(str(path) in r.message and "unusable" in r.message for r in caplog.records)
    assert sine.path == path and path.read_bytes() != b"not a library"
    torch.testing.assert_close(sine(x), torch.sin(x), rtol=1e-12, atol=1e-12)


def test_a_cache_that_cannot_be_written_is_refused_before_sampling(monkeypatch, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv(compiling.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(compiling.CompileError, match="BAYESLIB_CACHE.*compile=False"):
        bl.sample(best(), compile=True, warmup=10, draws=10, progress=False)


def test_the_library_is_named_by_the_graph_and_layouts_not_the_data():
    """The data are inputs of the library: other data of the same shape, the same library;
    another function, data of another shape, or another layout of the inputs: another."""
    z = torch.randn(4, 3, dtype=torch.float64)
    data = torch.arange(3.0, dtype=torch.float64)

    def key(fn, x=z):
        graph_module = recorded(fn, x)
        return compiling._key(graph_module, compiling._constants_as_inputs(graph_module) + [x])

    assert key(lambda x: x * data) == key(lambda x: x * (data + 1))
    assert key(lambda x: x * data) != key(lambda x: x + data)
    assert key(lambda x: x * data) != key(lambda x: x * data[:1])
    assert key(lambda x: x * data) != key(lambda x: x * data, z[:2].clone())


def test_a_library_compiled_for_one_data_set_computes_with_another():
    """Compiled at one data set's values, called on another's (same shapes): that data
    set's log density and gradient, to rounding, from the same library."""
    chains = 4
    z = 0.3 * torch.randn(
        chains, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    rng = np.random.default_rng(7)
    other = Best(rng.normal(3.0, 1.0, 30), rng.normal(-1.0, 0.5, 25))
    first = compiling.compile_function(make_target(best(), z).logdensity_and_grad, (z,))
    second_target = make_target(other, z)
    second = compiling.compile_function(second_target.logdensity_and_grad, (z,))
    assert second.path == first.path
    for got, want in zip(second(z), other.logdensity_and_grad(z), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_compiled_cholesky_gives_nan_for_the_chains_where_it_fails():
    """A GP's traced log density and gradient compiled (Inductor runs the Cholesky through
    ATen from the library): NaN for the chains whose factorisation fails, the model's own
    values for the others."""
    model, chains = poisson_gp(), 6
    traced = trace_logdensity(model, random_z(model, chains, seed=0, scale=0.3))
    compiled = compiling.compile_function(traced, (random_z(model, chains, seed=0, scale=0.3),))
    z, bad = failing_z(model, chains, seed=1)
    ok = torch.ones(chains, dtype=torch.bool)
    ok[bad] = False
    got_lp, got_grad = compiled(z)
    assert got_lp[~ok].isnan().all() and got_grad[~ok].isnan().all()
    lp, grad = model.logdensity_and_grad(z[ok])
    torch.testing.assert_close(got_lp[ok], lp, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_grad[ok], grad, rtol=1e-10, atol=1e-10)


def test_compile_without_a_cxx_compiler_is_refused_before_sampling(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(compiling.CompileError, match=r"C\+\+ compiler.*compile=False"):
        bl.sample(best(), compile=True, warmup=10, draws=10, progress=False)


def test_compile_without_tracing_is_refused():
    with pytest.raises(ValueError, match="compile=True.*traced=True"):
        bl.sample(best(), compile=True, traced=False, warmup=10, draws=10, progress=False)


def test_a_failed_compilation_names_the_fix_and_leaves_no_partial_library(monkeypatch, tmp_path):
    """Inductor failing (here: made to fail) is a CompileError naming compile=False; the
    half-written library is removed, and nothing is left in the cache."""

    def fail(graph_module, examples, path):
        Path(path).write_bytes(b"half a library")
        raise RuntimeError("C++ compile error")

    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(compiling, "aoti_compile", fail)
    z = torch.zeros(4, 4, dtype=torch.float64)
    target = make_target(best(), z)
    with pytest.raises(compiling.CompileError, match=r"C\+\+ compile error.*compile=False"):
        compiling.compile_function(target.logdensity_and_grad, (z,), "the gradient")
    assert list((tmp_path / "compiled").iterdir()) == []


def test_compile_on_a_device_it_cannot_serve_is_refused_naming_the_fix(monkeypatch):
    """Neither CPU nor CUDA: refused. CUDA without Triton (Inductor's GPU code generator):
    refused, naming Triton and compile=False."""
    with pytest.raises(compiling.CompileError, match="CPU and on CUDA.*compile=False"):
        compiling.check_compiler(torch.device("mps"))
    find_spec = compiling.importlib.util.find_spec
    monkeypatch.setattr(
        compiling.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "triton" else find_spec(name, *args),
    )
    with pytest.raises(compiling.CompileError, match="Triton.*compile=False"):
        compiling.check_compiler(torch.device("cuda"))


def test_a_model_that_cannot_be_traced_runs_uncompiled_with_the_trace_warning():
    model = Branching(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    with pytest.warns(UserWarning, match="could not be traced"):
        post = bl.sample(model, compile=True, warmup=20, draws=20, progress=False)
    assert post.attrs["compiled"] is False


def test_metropolis_has_nothing_to_compile():
    post = bl.sample(best(), "metropolis", compile=True, warmup=20, draws=20, progress=False)
    assert post.attrs["compiled"] is False
    assert math.isfinite(float(post["mu"].mean()))
