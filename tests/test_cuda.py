"""Sampling on CUDA: captured graphs give the draws of eager launches, bit for bit; the same
seed gives the same draws; CUDA agrees with the CPU within Monte Carlo error; float32, stacks
of data sets and linear algebra that fails for some chains run under graphs. These need a
GPU: where CUDA is absent they are skipped (the CPU runs the same kernels in every other test).
"""

import numpy as np
import pytest
import torch
from torch.distributions import HalfNormal, InverseGamma, MultivariateNormal

import bayeslib as bl
from bayeslib.diagnostics import mcse_mean
from bayeslib.models import Best, LinearRegression

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ITERATIONS = {"warmup": 150, "draws": 100, "progress": False}


def best():
    rng = np.random.default_rng(1)
    return Best(rng.normal(0.0, 1.0, 30), rng.normal(0.5, 2.0, 25))


def linear():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 3))
    return LinearRegression(x, x @ np.array([2.0, 1.0, -3.0]) + rng.normal(size=100))


def assert_identical(a, b):
    for name in a.names:
        assert np.array_equal(np.asarray(a[name]), np.asarray(b[name]), equal_nan=True), name
    for name in a.stats:
        assert np.array_equal(a.stats[name], b.stats[name], equal_nan=True), name


@pytest.mark.parametrize("sampler", ["nuts", "hmc"])
@pytest.mark.parametrize("dense_mass", [None, False])
def test_graphs_give_the_eager_draws(sampler, dense_mass):
    run = dict(chains=64, seed=5, device="cuda", dense_mass=dense_mass, **ITERATIONS)
    graphed = bl.sample(best(), sampler, **run)
    eager = bl.sample(best(), sampler, cuda_graphs=False, **run)
    assert graphed.attrs["cuda_graphs"] and not eager.attrs["cuda_graphs"]
    assert_identical(graphed, eager)


def test_same_seed_same_draws():
    a = bl.sample(linear(), chains=32, seed=9, device="cuda", **ITERATIONS)
    b = bl.sample(linear(), chains=32, seed=9, device="cuda", **ITERATIONS)
    assert_identical(a, b)


@pytest.mark.parametrize("sampler", ["nuts", "hmc"])
def test_cuda_agrees_with_the_cpu(sampler):
    """Posterior means on CUDA and on the CPU differ by less than 4 combined MCSE (ArviZ's
    MCSE of the mean, `bl.diagnostics` being equal to it)."""
    run = dict(chains=16, warmup=500, draws=500, progress=False)
    on_gpu = bl.sample(best(), sampler, device="cuda", seed=1, **run)
    on_cpu = bl.sample(best(), sampler, device="cpu", seed=2, **run)
    for name in on_gpu.names:
        a, b = np.asarray(on_gpu[name]), np.asarray(on_cpu[name])
        error = np.hypot(mcse_mean(a), mcse_mean(b))
        difference = np.abs(a.mean((0, 1)) - b.mean((0, 1)))
        assert (difference < 4 * error).all(), (name, difference, error)


def test_float32_under_graphs():
    post = bl.sample(best(), chains=256, seed=3, device="cuda", dtype=torch.float32, **ITERATIONS)
    assert post.attrs["cuda_graphs"] and post.attrs["dtype"] == "float32"
    assert all(np.isfinite(np.asarray(post[name])).all() for name in post.names)
    # float64 on the CPU, same settings: [-0.064, 0.487] with MCSE [0.0008, 0.0019]
    mu = np.asarray(post["mu"]).mean((0, 1))
    assert mu == pytest.approx([-0.064, 0.487], abs=0.01)


def test_stack_under_graphs():
    stack = bl.stack([best(), best()])
    run = dict(chains=8, seed=4, device="cuda", **ITERATIONS)
    assert_identical(bl.sample(stack, **run), bl.sample(stack, cuda_graphs=False, **run))


class GP(bl.Model):
    """A marginal Gaussian process whose Cholesky factor fails for some proposals (a tiny
    noise): those chains' proposals are rejected inside the captured graph."""

    alpha = bl.Param(HalfNormal(2.0))
    rho = bl.Param(InverseGamma(5.0, 5.0))

    def __init__(self, x, y):
        super().__init__(x=x, y=y)

    def observe(self, p):
        d = (p.x[:, None] - p.x[None, :]) / p.rho
        eye = torch.eye(len(p.x), dtype=p.x.dtype, device=p.x.device)
        K = p.alpha**2 * torch.exp(-0.5 * d**2) + 1e-10 * eye
        return {"y": MultivariateNormal(torch.zeros_like(p.x), scale_tril=torch.linalg.cholesky(K))}


def test_failing_linear_algebra_under_graphs():
    x = torch.linspace(0.0, 10.0, 12, dtype=torch.float64)
    run = dict(chains=32, seed=6, device="cuda", **ITERATIONS)
    graphed = bl.sample(GP(x, torch.sin(x)), **run)
    assert graphed.attrs["cuda_graphs"]
    assert_identical(graphed, bl.sample(GP(x, torch.sin(x)), cuda_graphs=False, **run))


def test_draws_leave_the_device_in_chunks():
    """The kept draws go to host memory through a small device buffer: the same draws as
    one large buffer."""
    from bayeslib import sampling

    run = dict(chains=64, seed=7, device="cuda", **ITERATIONS)
    default = bl.sample(best(), "metropolis", **run)
    chunk_bytes = sampling.CHUNK_BYTES
    try:
        sampling.CHUNK_BYTES = 4096
        small = bl.sample(best(), "metropolis", **run)
    finally:
        sampling.CHUNK_BYTES = chunk_bytes
    assert_identical(default, small)


@pytest.mark.parametrize("sampler", ["nuts", "hmc"])
def test_compiled_kernels_on_cuda(sampler):
    """compile=True on CUDA (Triton kernels from Inductor): replayed in captured graphs, the
    draws of the same compiled kernels called eagerly, bit for bit; the first warmup
    iterations follow the uncompiled run to rounding (1e-8) until a decision flips; the
    posterior means within 4 combined MCSE of the uncompiled run's (1000 draws, 64 chains)."""
    run = dict(chains=64, seed=8, device="cuda", warmup=300, draws=1000, progress=False)
    compiled = bl.sample(best(), sampler, compile=True, **run)
    assert compiled.attrs["compiled"] and compiled.attrs["cuda_graphs"]
    eager = bl.sample(best(), sampler, compile=True, cuda_graphs=False, **run)
    assert_identical(compiled, eager)
    plain = bl.sample(best(), sampler, **run)
    np.testing.assert_allclose(
        compiled.warmup["mu"][:, :5].numpy(), plain.warmup["mu"][:, :5].numpy(), atol=1e-8
    )
    for name in plain.names:
        a, b = np.asarray(compiled[name]), np.asarray(plain[name])
        error = np.hypot(mcse_mean(a), mcse_mean(b))
        assert (np.abs(a.mean((0, 1)) - b.mean((0, 1))) < 4 * error).all(), name
