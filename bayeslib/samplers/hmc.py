"""Hamiltonian Monte Carlo with a jittered trajectory length."""

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from .adaptation import build_schedule
from .base import Adaptation, HamiltonianSampler, Info, State, Target, clean_logdensity
from .graphs import load, run_phase
from .integrators import leapfrog
from .metrics import DenseMetric, DiagonalMetric
from .nuts import nuts_step

# The tree depth of the NUTS transitions HMC takes early in warmup.
WARMUP_MAX_TREE_DEPTH = 10


class HMCParams(NamedTuple):
    """HMC's tuning: ``step_size`` ``[chains]``, the metric, and ``nuts``: take NUTS
    transitions (early in warmup, before a metric is learnt) instead of HMC's."""

    step_size: Tensor
    metric: DiagonalMetric | DenseMetric
    nuts: bool = False


def hmc_step(
    generator: torch.Generator,
    state: State,
    target: Target,
    step_size: Tensor,
    metric,
    trajectory_length: float = 2.0,
    max_steps: int = 1024,
    max_delta_energy: float = 1000.0,
) -> tuple[State, Info]:
    """One HMC transition for every chain. Each chain integrates for a time drawn uniformly
    from ``[0.5, 1.5] * trajectory_length`` (jitter avoids periodic trajectories), the same
    draw for all chains; a chain whose larger step size needs fewer steps waits, masked, for
    the others."""
    z0, lp0, grad0 = state
    chains = z0.shape[0]
    r0 = metric.sample_momentum(generator, z0)
    h0 = metric.kinetic_energy(r0) - lp0
    # One jitter for all chains: chains with the same step size then take the same number
    # of steps, and none waits, masked, for another's longer trajectory.
    uniforms = torch.rand(chains + 1, generator=generator, dtype=z0.dtype, device=z0.device)
    n_steps = torch.ceil((0.5 + uniforms[0]) * trajectory_length / step_size)
    n_steps = n_steps.clamp(1, max_steps).to(torch.int64)
    fewest, most = (int(v) for v in torch.aminmax(n_steps))
    if target.graphs is not None:
        z, r, lp, grad, failed = _trajectory_in_graphs(
            target, state, r0, step_size, metric, n_steps, most
        )
    elif target.compiled is not None:
        z, r, lp, grad, failed = _trajectory_compiled(
            target, state, r0, step_size, metric, n_steps, most
        )
    else:
        z, r, lp, grad, failed = _trajectory(
            target, state, r0, step_size, metric, n_steps, fewest, most
        )

    lp = clean_logdensity(torch.where(failed, math.nan, lp))
    h = metric.kinetic_energy(r) - lp
    delta = (h - h0).nan_to_num(math.inf)
    acceptance_rate = torch.exp(-delta).clamp(max=1.0)
    accept = uniforms[1:] < acceptance_rate
    accept_col = accept.unsqueeze(-1)
    new_state = State(
        torch.where(accept_col, z, z0),
        torch.where(accept, lp, lp0),
        torch.where(accept_col, grad, grad0),
    )
    info = Info(
        acceptance_rate=acceptance_rate,
        diverging=delta > max_delta_energy,
        energy=torch.where(accept, h, h0),
        n_steps=n_steps,
    )
    return new_state, info


def _trajectory(target, state, r0, step_size, metric, n_steps, fewest, most):
    """Each chain's `n_steps` leapfrog steps from `state` with momentum `r0`: ``(z, r, lp,
    grad, failed)``."""
    z0, lp0, grad0 = state
    eps = step_size.unsqueeze(-1)
    z, r, lp, grad = z0, r0, lp0, grad0
    # Chains whose log density came back NaN (the model's code failed there) stop, with zero
    # momentum and gradient so that their remaining steps stay at their last point instead of
    # evaluating the model at NaN, and are rejected. The CPU checks every step, where a sync
    # is cheap; until a chain fails, all take their first `fewest` steps unmasked.
    failed = torch.zeros_like(lp0, dtype=torch.bool)
    any_failed, check_each_step = False, z0.device.type == "cpu"
    for k in range(most):
        z1, r1, lp1, g1 = leapfrog(z, r, grad, eps, metric, target.logdensity_and_grad)
        if check_each_step and not any_failed:
            any_failed = bool(lp1.isnan().any())
        if k < fewest and not any_failed:
            z, r, lp, grad = z1, r1, lp1, g1
            continue
        failed = failed | lp1.isnan()
        moving = (k < n_steps) & ~failed
        moving_col, failed_col = moving.unsqueeze(-1), failed.unsqueeze(-1)
        z = torch.where(moving_col, z1, z)
        r = torch.where(moving_col, r1, torch.where(failed_col, 0.0, r))
        grad = torch.where(moving_col, g1, torch.where(failed_col, 0.0, grad))
        lp = torch.where(moving, lp1, lp)
    return z, r, lp, grad, failed


def _trajectory_in_graphs(target, state, r0, step_size, metric, n_steps, most):
    """`_trajectory` as `most` replays of one captured leapfrog step, every step masked (the
    same values: a chain past its `n_steps`, or failed, keeps its state)."""
    graphs = target.graphs
    ws = load(graphs, _masked_start(state, r0, step_size, metric, n_steps))
    step = _masked_step_function(target, ws)
    for _ in range(most):
        ws = run_phase(graphs, ("hmc",), step, ws)
    return tuple(ws[name].clone() for name in ("z", "r", "lp", "grad", "failed"))


def _trajectory_compiled(target, state, r0, step_size, metric, n_steps, most):
    """`_trajectory` as `most` calls of one compiled leapfrog step, every step masked."""
    ws = _masked_start(state, r0, step_size, metric, n_steps)
    step = _masked_step_function(target, ws)
    for _ in range(most):
        ws = {**ws, **step(ws)}
    return tuple(ws[name] for name in ("z", "r", "lp", "grad", "failed"))


def _masked_step_function(target, ws: dict):
    """`_masked_step` with the target's log density; compiled (`target.compiled`) for
    workspaces laid out as `ws` where the target has it."""
    if target.compiled is None:
        return functools.partial(_masked_step, logdensity_and_grad=target.logdensity_and_grad)
    return target.compiled.function(*masked_step_request(target, ws["metric"], lambda: ws))


def masked_step_request(target, metric, workspace) -> tuple:
    """``(key, what, build)`` of `_masked_step` compiled for workspaces laid out as
    `workspace()`'s (`Compiled.function`, `Compiled.ahead`: called only when it compiles); of
    a workspace shared with other phases, it reads only `_masked_start`'s entries."""

    def build():
        step = functools.partial(_masked_step, logdensity_and_grad=target.logdensity_and_grad)
        ws = workspace()
        return step, ({name: ws[name] for name in MASKED_STEP_KEYS},)

    return ("hmc step", type(metric).__name__), "the HMC leapfrog step", build


# What `_masked_step` reads: `_masked_start`'s entries.
MASKED_STEP_KEYS = ("z", "r", "lp", "grad", "step_size", "metric", "n_steps", "failed", "k")


def _masked_start(state, r0, step_size, metric, n_steps) -> dict:
    """What `_masked_step` reads, before the first step: no chain failed, step 0."""
    z0, lp0, grad0 = state
    return {
        "z": z0,
        "r": r0,
        "lp": lp0,
        "grad": grad0,
        "step_size": step_size,
        "metric": metric,
        "n_steps": n_steps,
        "failed": torch.zeros_like(lp0, dtype=torch.bool),
        "k": torch.zeros((), dtype=torch.int64, device=z0.device),
    }


def _masked_step(ws: dict, logdensity_and_grad) -> dict:
    """Leapfrog step `k` of every chain still moving; a chain whose log density came back NaN
    stops, with zero momentum and gradient."""
    z, r, grad, metric = ws["z"], ws["r"], ws["grad"], ws["metric"]
    eps = ws["step_size"].unsqueeze(-1)
    z1, r1, lp1, g1 = leapfrog(z, r, grad, eps, metric, logdensity_and_grad)
    failed = ws["failed"] | lp1.isnan()
    moving = (ws["k"] < ws["n_steps"]) & ~failed
    moving_col, failed_col = moving.unsqueeze(-1), failed.unsqueeze(-1)
    return {
        "z": torch.where(moving_col, z1, z),
        "r": torch.where(moving_col, r1, torch.where(failed_col, 0.0, r)),
        "grad": torch.where(moving_col, g1, torch.where(failed_col, 0.0, grad)),
        "lp": torch.where(moving, lp1, ws["lp"]),
        "failed": failed,
        "k": ws["k"] + 1,
    }


class HMC(HamiltonianSampler):
    """Static HMC with a jittered trajectory length, after Stan's windowed warmup.

    Warmup takes NUTS transitions until the first metric window closes: a fixed trajectory
    length means nothing before the metric has learnt the posterior's scale (a posterior with
    standard deviation 0.005 under the initial unit metric would take hundreds of leapfrog
    steps per iteration), while NUTS finds its own length. Step size and metric adapt as for
    NUTS; the rest of warmup and the draws are HMC's.

    Options: ``trajectory_length`` (2.0, in the units of the adapted metric, where the
    posterior has roughly unit scale), ``max_steps`` (1024 leapfrog steps per iteration),
    and those of NUTS: ``step_size``, ``target_accept``, ``dense_mass``,
    ``inverse_mass_matrix``.
    """

    name = "hmc"
    stat_names = ("acceptance_rate", "diverging", "n_steps", "energy")

    def __init__(
        self,
        step_size: float = 1.0,
        target_accept: float = 0.8,
        dense_mass: bool | None = None,
        inverse_mass_matrix=None,
        trajectory_length: float = 2.0,
        max_steps: int = 1024,
    ):
        super().__init__(step_size, target_accept, dense_mass, inverse_mass_matrix)
        if not trajectory_length > 0:
            raise ValueError(f"trajectory_length must be positive, got {trajectory_length}")
        if not (isinstance(max_steps, int) and max_steps >= 1):
            raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
        self.trajectory_length = float(trajectory_length)
        self.max_steps = max_steps

    def options(self) -> dict:
        return {
            **super().options(),
            "trajectory_length": self.trajectory_length,
            "max_steps": self.max_steps,
        }

    def init_params(self, state: State, covariance: Tensor | None = None) -> HMCParams:
        return HMCParams(*super().init_params(state, covariance), nuts=False)

    def adaptation(self, warmup: int, dim: int, groups: int = 1) -> Adaptation:
        """NUTS's adaptation, and NUTS transitions until the first metric window closes."""
        nuts = super().adaptation(warmup, dim, groups)
        first_metric_update = min(build_schedule(warmup).window_ends, default=-1)

        def init(generator, target, state, params):
            params, adaptation_state = nuts.init(generator, target, state, params)
            return params._replace(nuts=first_metric_update >= 0), adaptation_state

        def update(generator, target, state, info, params, adaptation_state):
            i = adaptation_state.iteration
            params, adaptation_state = nuts.update(
                generator, target, state, info, params, adaptation_state
            )
            return params._replace(nuts=params.nuts and i < first_metric_update), adaptation_state

        return Adaptation(init, update, nuts.final)

    def step(
        self, generator: torch.Generator, target: Target, state: State, params: HMCParams
    ) -> tuple[State, Info]:
        if params.nuts:
            if target.compiled is not None:
                # the HMC step compiles in a child process during NUTS's first transition
                def workspace():
                    n_steps = torch.zeros_like(state.logdensity, dtype=torch.int64)
                    return _masked_start(
                        state, state.position, params.step_size, params.metric, n_steps
                    )

                target.compiled.ahead(*masked_step_request(target, params.metric, workspace))
            state, info = nuts_step(
                generator,
                state,
                target,
                params.step_size,
                params.metric,
                WARMUP_MAX_TREE_DEPTH,
                self.max_delta_energy,
            )
            return state, info._replace(tree_depth=None)
        return hmc_step(
            generator,
            state,
            target,
            params.step_size,
            params.metric,
            self.trajectory_length,
            self.max_steps,
            self.max_delta_energy,
        )
