"""The kernels and their adaptation, on plain batched log densities (no Model)."""

import math

import numpy as np
import pytest
import torch

from bayeslib.samplers import (
    HMC,
    NUTS,
    DualAveraging,
    RandomWalkMetropolis,
    Target,
    build_schedule,
    find_reasonable_step_size,
    leapfrog,
    make_metric,
    pooled,
    welford_covariance,
    welford_init,
    welford_update,
)
from bayeslib.samplers.base import State
from bayeslib.samplers.nuts import checkpoint_indices

DTYPE = torch.float64


def gaussian_target(cov):
    """Batched log density and gradient of N(0, cov)."""
    precision = torch.linalg.inv(cov)

    def logdensity(z):
        return -0.5 * ((z @ precision) * z).sum(-1)

    def logdensity_and_grad(z):
        return logdensity(z), -(z @ precision)

    return Target(logdensity_and_grad, logdensity)


def correlated_cov(rho=0.95):
    return torch.tensor([[1.0, rho], [rho, 1.0]], dtype=DTYPE)


def test_checkpoint_indices_match_the_subtrees_closing_at_each_leaf():
    # Simulate the writes at even leaves; at odd leaf n, the checkpoints read must be the
    # first leaves of the sub-trees of sizes 2, 4, ... that end at n.
    for n_leaves in (2, 8, 64, 512):
        written = {}
        for n in range(n_leaves):
            idx_min, idx_max = checkpoint_indices(n)
            if n % 2 == 0:
                assert idx_min > idx_max  # nothing to check at an even leaf
                written[idx_max] = n
            else:
                starts = {written[i] for i in range(idx_min, idx_max + 1)}
                expected = set()
                size = 2
                while (n + 1) % size == 0:
                    expected.add(n + 1 - size)
                    size *= 2
                assert starts == expected, n
    assert [checkpoint_indices(n)[1] for n in (6, 7, 13)] == [2, 2, 2]
    assert [checkpoint_indices(n)[1] - checkpoint_indices(n)[0] + 1 for n in (6, 7, 13)] == [
        0,
        3,
        1,
    ]


@pytest.mark.parametrize("dense", [False, True])
def test_leapfrog_is_reversible_and_nearly_conserves_energy(dense):
    g = torch.Generator().manual_seed(0)
    target = gaussian_target(correlated_cov(0.5))
    inverse_mass = torch.tensor([0.7, 1.3], dtype=DTYPE)
    inverse_mass = torch.diag(inverse_mass) + 0.2 if dense else inverse_mass
    metric = make_metric(inverse_mass.expand(5, *inverse_mass.shape))
    z0 = torch.randn(5, 2, generator=g, dtype=DTYPE)
    r0 = metric.sample_momentum(g, z0)
    lp0, grad0 = target.logdensity_and_grad(z0)
    eps = torch.full((5, 1), 0.1, dtype=DTYPE)
    z, r, lp, grad = z0, r0, lp0, grad0
    for _ in range(20):
        z, r, lp, grad = leapfrog(z, r, grad, eps, metric, target.logdensity_and_grad)
    energy_error = (metric.kinetic_energy(r) - lp) - (metric.kinetic_energy(r0) - lp0)
    assert energy_error.abs().max() < 0.01
    for _ in range(20):
        z, r, lp, grad = leapfrog(z, r, grad, -eps, metric, target.logdensity_and_grad)
    torch.testing.assert_close(z, z0, rtol=0, atol=1e-12)
    torch.testing.assert_close(r, r0, rtol=0, atol=1e-12)


def test_dense_metric_momentum_has_the_mass_matrix_as_covariance():
    g = torch.Generator().manual_seed(1)
    inverse_mass = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=DTYPE)
    metric = make_metric(inverse_mass.expand(20000, 2, 2))
    r = metric.sample_momentum(g, torch.zeros(20000, 2, dtype=DTYPE))
    # Sampling error of a covariance entry from 20,000 draws is about 0.01 to 0.02.
    torch.testing.assert_close(r.T.cov(), torch.linalg.inv(inverse_mass), rtol=0, atol=0.06)


def exact_draws(cov, chains, g):
    return (
        torch.randn(chains, cov.shape[0], generator=g, dtype=DTYPE) @ torch.linalg.cholesky(cov).T
    )


@pytest.mark.parametrize(
    "sampler",
    [
        NUTS(),
        NUTS(dense_mass=True),
        NUTS(max_tree_depth=2),
        HMC(trajectory_length=3.0),
        RandomWalkMetropolis(),
    ],
    ids=["nuts", "nuts-dense", "nuts-depth2", "hmc", "metropolis"],
)
def test_kernels_leave_the_target_invariant(sampler):
    """Start 4,096 chains at exact draws of a correlated Gaussian and apply the kernel with
    deliberately coarse tuning: a valid kernel keeps the draws distributed as the target."""
    g = torch.Generator().manual_seed(2)
    chains = 4096
    cov = correlated_cov(0.9)
    target = gaussian_target(cov)
    state = sampler.init_state(target, exact_draws(cov, chains, g))
    params = sampler.init_params(state)
    # Coarse: leapfrog is stable below 2 * sqrt(0.1) = 0.63 here.
    params = params._replace(
        step_size=torch.full((chains,), 0.5 if sampler.name != "metropolis" else 1.5)
    )
    if sampler.name != "metropolis" and sampler.dense_mass(2):
        inverse_mass = torch.tensor([[1.5, 0.5], [0.5, 0.8]], dtype=DTYPE)
        params = params._replace(metric=make_metric(inverse_mass.expand(chains, 2, 2)))
    start = state.position
    for _ in range(10):
        state, info = sampler.step(g, target, state, params)
    z = state.position
    assert (z != start).all(-1).float().mean() > 0.5
    # Standard errors from 4,096 independent draws: mean 0.016, variance 0.022.
    assert z.mean(0).abs().max() < 4 * math.sqrt(1 / chains)
    torch.testing.assert_close(z.T.cov(), cov, rtol=0, atol=4 * math.sqrt(2 / chains))
    assert 0.15 < float(info.acceptance_rate.mean()) < 1.0
    assert torch.isfinite(state.logdensity).all()


@pytest.mark.parametrize(
    "sampler", [NUTS(), HMC(), RandomWalkMetropolis()], ids=["nuts", "hmc", "metropolis"]
)
def test_nan_log_density_is_a_rejection_never_a_draw(sampler):
    """The density is NaN (with a NaN gradient) on half of the plane: no draw may land there,
    and HMC and NUTS report the trajectories that enter it as divergent."""
    g = torch.Generator().manual_seed(3)
    base = gaussian_target(torch.eye(2, dtype=DTYPE))

    def logdensity(z):
        lp = base.logdensity(z)
        return torch.where(z[:, 0] > 1.0, math.nan, lp)

    def logdensity_and_grad(z):
        lp, grad = base.logdensity_and_grad(z)
        bad = (z[:, 0] > 1.0).unsqueeze(-1)
        return logdensity(z), torch.where(bad, math.nan, grad)

    target = Target(logdensity_and_grad, logdensity)
    chains = 256
    z0 = torch.rand(chains, 2, generator=g, dtype=DTYPE) - 0.5
    state = sampler.init_state(target, z0)
    params = sampler.init_params(state)._replace(
        step_size=torch.full((chains,), 0.5 if sampler.name != "metropolis" else 2.0)
    )
    divergences = 0
    for _ in range(30):
        state, info = sampler.step(g, target, state, params)
        assert torch.isfinite(state.position).all()
        assert torch.isfinite(state.logdensity).all()
        assert (state.position[:, 0] <= 1.0).all()
        assert torch.isfinite(info.acceptance_rate).all()
        if info.diverging is not None:
            divergences += int(info.diverging.sum())
    if sampler.name != "metropolis":
        assert divergences > 0


def test_build_schedule_as_stan():
    schedule = build_schedule(1000)
    assert (schedule.start, schedule.end) == (75, 950)
    assert sorted(schedule.window_ends) == [99, 149, 249, 449, 949]
    short = build_schedule(100)  # 15% / 75% / 10%
    assert (short.start, short.end, sorted(short.window_ends)) == (15, 90, [89])
    assert build_schedule(19).window_ends == frozenset()


def test_welford_matches_numpy_with_relative_regularisation():
    """The variances widened by 1e-3 * 5 / (n + 5) of themselves, the covariances kept: the
    same relative regularisation whatever the units, and no isotropic ridge that would set
    the smallest eigenvalue of a strongly correlated posterior."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, 3, 2, generator=g, dtype=DTYPE) * torch.tensor([1.0, 3.0], dtype=DTYPE)
    n = 50
    for units in (1.0, 1e-4):
        dense, diagonal = (welford_init(x[0], d) for d in (True, False))
        for row in x * units:
            dense = welford_update(dense, row)
            diagonal = welford_update(diagonal, row)
        for chain in range(3):
            cov = torch.from_numpy(np.cov((x[:, chain] * units).numpy(), rowvar=False))
            expected = cov + 1e-3 * (5 / (n + 5)) * torch.diag(cov.diagonal())
            torch.testing.assert_close(welford_covariance(dense)[chain], expected)
            torch.testing.assert_close(welford_covariance(diagonal)[chain], expected.diagonal())


def test_pooled_covariance_is_shared_and_robust_to_a_lost_chain():
    """Chains share one estimate: geometric mean of the variances, mean of the correlations.
    A chain with a 1e6 times larger spread moves the shared scale by (1e6)**(1/4), not 1e6/4."""
    correlations = torch.tensor([0.5, 0.7, 0.3, 0.5], dtype=DTYPE)
    variances = torch.tensor([[1.0, 4.0], [1.0, 4.0], [1.0, 4.0], [1e6, 4e6]], dtype=DTYPE)
    sd = variances.sqrt()
    dense = torch.stack(
        [
            torch.tensor([[1.0, c], [c, 1.0]], dtype=DTYPE) * s.outer(s)
            for c, s in zip(correlations, sd, strict=True)
        ]
    )
    shared = pooled(dense)
    scale = torch.tensor([1.0, 2.0], dtype=DTYPE) * 1e6 ** (1 / 8)
    expected = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=DTYPE) * scale.outer(scale)
    for chain in range(4):
        torch.testing.assert_close(shared[chain], expected)
    torch.testing.assert_close(pooled(variances), (scale**2).expand(4, 2))


def test_dual_averaging_ignores_a_nan_statistic_as_a_rejection():
    adaptation = DualAveraging(target=0.8)
    step = torch.ones(2, dtype=DTYPE)
    state = adaptation.init(step, (10 * step).log())
    state = adaptation.update(state, torch.tensor([math.nan, 0.0], dtype=DTYPE))
    step = state.x.exp()
    assert torch.isfinite(step).all() and step[0] == step[1]


def test_dual_averaging_finds_the_step_size_with_the_target_statistic():
    # A statistic that falls with the step size, exp(-step_size), per chain with a scale.
    scale = torch.tensor([0.1, 1.0, 10.0], dtype=DTYPE)
    adaptation = DualAveraging(target=0.8)
    step = torch.ones(3, dtype=DTYPE)
    state = adaptation.init(step, (10 * step).log())
    for _ in range(2000):
        state = adaptation.update(state, torch.exp(-state.x.exp() / scale))
    expected = -scale * math.log(0.8)
    torch.testing.assert_close(adaptation.final(state), expected, rtol=0.05, atol=0)


def test_find_reasonable_step_size_scales_with_the_posterior():
    g = torch.Generator().manual_seed(5)
    scales = torch.tensor([1e-3, 1.0, 1e3], dtype=DTYPE)
    # Chain c targets N(0, scales[c]^2 I) in 3 dimensions.
    target_scale = scales.unsqueeze(-1)

    def logdensity_and_grad(z):
        return -0.5 * ((z / target_scale) ** 2).sum(-1), -z / target_scale**2

    target = Target(logdensity_and_grad, lambda z: logdensity_and_grad(z)[0])
    z = torch.randn(3, 3, generator=g, dtype=DTYPE) * target_scale
    lp, grad = logdensity_and_grad(z)
    metric = make_metric(torch.ones(3, 3, dtype=DTYPE))
    step = find_reasonable_step_size(g, State(z, lp, grad), target, torch.ones(3), metric)
    ratio = step / scales
    assert ((ratio > 0.1) & (ratio < 8.0)).all(), ratio


@pytest.mark.parametrize("dim, dense", [(3, True), (10, True), (11, False)])
def test_dense_mass_by_default_up_to_ten_dimensions(dim, dense):
    target = gaussian_target(torch.eye(dim, dtype=DTYPE))
    z = torch.zeros(2, dim, dtype=DTYPE)
    for sampler in (NUTS(), HMC()):
        params = sampler.init_params(sampler.init_state(target, z))
        assert sampler.dense_mass(dim) is dense
        assert params.metric.inverse_mass_matrix.shape == ((2, dim, dim) if dense else (2, dim))
    forced = NUTS(dense_mass=False)
    params = forced.init_params(forced.init_state(target, z))
    assert params.metric.inverse_mass_matrix.shape == (2, dim)


def test_chains_share_the_adapted_step_size_so_hmc_chains_move_in_step():
    """One step size for all chains, steered by their mean acceptance: HMC's chains then take
    the same number of leapfrog steps (one jitter per iteration), none waiting for another."""
    from bayeslib.sampling import run_chains

    target = gaussian_target(torch.diag(torch.tensor([1.0, 4.0], dtype=DTYPE)))
    g = torch.Generator().manual_seed(0)
    z0 = 4 * torch.rand(6, 2, generator=g, dtype=DTYPE) - 2
    for sampler in (NUTS(), HMC(), RandomWalkMetropolis()):
        run = run_chains(sampler, target, z0, g, 200, 50)
        step = run.stats["step_size"]
        assert torch.equal(step, step[:1].expand_as(step))
        if sampler.name == "hmc":
            n_steps = run.stats["n_steps"]
            assert torch.equal(n_steps, n_steps[:1].expand_as(n_steps))
            assert n_steps.unique().numel() > 1  # jittered from one iteration to the next
