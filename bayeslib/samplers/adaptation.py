"""Warmup adaptation, kept apart from the kernels: dual averaging of a step size (or a
proposal scale), Welford estimates of the posterior (co)variance, and Stan's windows.

All of it is batched over chains, and learnt from all chains of a group: the chains of one
data set (``groups`` data sets own consecutive, equal blocks of the batch) share one step size
(or proposal scale), steered by their mean acceptance, and one metric, estimated from every
chain's draws; nothing is shared across data sets. With a shared step size no chain waits,
masked, for another's longer trajectory, and many chains adapt faster and less noisily than one.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor


class DualAveragingState(NamedTuple):
    """Dual averaging per chain: ``x`` (log value), ``mu`` (the log value it shrinks toward),
    their running averages ``x_avg`` and ``g_avg``, and the updates so far ``t``."""

    x: Tensor
    mu: Tensor
    x_avg: Tensor
    g_avg: Tensor
    t: int


class DualAveraging(NamedTuple):
    """Nesterov's dual averaging as in Stan (Hoffman & Gelman 2014, section 3.2), per chain:
    drives ``exp(x)`` so that the mean of the adaptation statistic approaches ``target``.
    ``init``, ``update`` and ``final`` are pure functions of its `DualAveragingState`."""

    target: float
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75

    def init(self, value: Tensor, mu: Tensor) -> DualAveragingState:
        """Start from ``value`` (per chain), shrinking toward ``mu`` (log scale)."""
        x = value.log()
        return DualAveragingState(x, mu, torch.zeros_like(x), torch.zeros_like(x), 0)

    def update(self, state: DualAveragingState, statistic: Tensor) -> DualAveragingState:
        """One update from this iteration's statistic; the next value is ``exp(state.x)``."""
        t = state.t + 1
        eta = 1.0 / (t + self.t0)
        statistic = statistic.clamp(max=1.0).nan_to_num(0.0)
        g_avg = (1.0 - eta) * state.g_avg + eta * (self.target - statistic)
        x = state.mu - (math.sqrt(t) / self.gamma) * g_avg
        weight = t ** (-self.kappa)
        x_avg = (1.0 - weight) * state.x_avg + weight * x
        return DualAveragingState(x, state.mu, x_avg, g_avg, t)

    def final(self, state: DualAveragingState) -> Tensor:
        """The averaged value, used once adaptation ends."""
        return state.x_avg.exp()


class WelfordState(NamedTuple):
    """Running mean ``[chains, dim]`` and sum of squared deviations (``[chains, dim]``, or
    ``[chains, dim, dim]`` for a dense estimate) of ``n`` draws, one estimate per chain."""

    mean: Tensor
    m2: Tensor
    n: int


def welford_init(like: Tensor, dense: bool) -> WelfordState:
    """No draws yet, for draws shaped as ``like`` ``[chains, dim]``."""
    chains, dim = like.shape
    shape = (chains, dim, dim) if dense else (chains, dim)
    return WelfordState(torch.zeros_like(like), like.new_zeros(shape), 0)


def welford_update(state: WelfordState, z: Tensor) -> WelfordState:
    n = state.n + 1
    delta = z - state.mean
    mean = state.mean + delta / n
    if state.m2.dim() == 3:
        m2 = state.m2 + delta.unsqueeze(-1) * (z - mean).unsqueeze(-2)
    else:
        m2 = state.m2 + delta * (z - mean)
    return WelfordState(mean, m2, n)


def welford_covariance(state: WelfordState) -> Tensor:
    """Stan's regularised estimate, but shrunk toward its own diagonal: the variances are
    widened by ``1e-3 * 5 / (n + 5)`` of themselves and the covariances kept. A ridge of a
    multiple of the identity (Stan's, even in the posterior's own scale) sets the smallest
    eigenvalue: a slope over calendar years correlates with the intercept at -0.99996,
    its posterior's smallest eigenvalue is 1e-11 of its largest, and such a ridge made the
    proposal 30 times too wide across the ridge of the posterior."""
    n = state.n
    cov = state.m2 / max(n - 1, 1)
    widen = 1.0 + 1e-3 * 5.0 / (n + 5.0)
    if cov.dim() == 3:
        cov = 0.5 * (cov + cov.mT)
        variances = cov.diagonal(dim1=-2, dim2=-1)
        return cov + (widen - 1.0) * torch.diag_embed(variances)
    return widen * cov


def group_mean(x: Tensor, groups: int = 1) -> Tensor:
    """The mean of ``x`` ``[chains, ...]`` over each group's chains, given back to every chain
    of the group (``groups`` equal, consecutive blocks of chains)."""
    blocks = x.reshape(groups, -1, *x.shape[1:])
    return blocks.mean(1, keepdim=True).expand_as(blocks).reshape(x.shape)


def pooled(covariance: Tensor, groups: int = 1) -> Tensor:
    """Every chain's estimate (``[chains, dim]`` variances or ``[chains, dim, dim]``) replaced
    by one learnt from all chains of its group: the geometric mean of their variances, and for
    a dense estimate the mean of their correlation matrices. The geometric mean keeps a chain
    still lost in a flat tail early in warmup, with a huge spread, from setting everyone's
    scale. Warmup only, so detailed balance holds while sampling."""
    variances = covariance if covariance.dim() == 2 else covariance.diagonal(dim1=-2, dim2=-1)
    # A chain that rejected every proposal of the window has zero variances and no
    # correlation: it is left out, and a group where no chain moved gets the identity.
    moved = (variances > 0).all(-1, keepdim=True).to(covariance.dtype)
    share = group_mean(moved, groups)
    weight = torch.where(share > 0, moved / share, 0.0)
    sd = torch.where(variances > 0, variances, 1.0).sqrt()
    scale = group_mean(weight * sd.log(), groups).exp()
    if covariance.dim() == 2:
        return scale**2
    correlation = covariance / (sd.unsqueeze(-1) * sd.unsqueeze(-2))
    correlation = group_mean(weight.unsqueeze(-1) * correlation, groups)
    eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
    correlation = torch.where(share.unsqueeze(-1) > 0, correlation, eye)
    return scale.unsqueeze(-1) * correlation * scale.unsqueeze(-2)


@dataclass(frozen=True)
class Schedule:
    """Stan's warmup windows: iterations ``[start, end)`` feed the (co)variance estimate,
    which is renewed after each iteration in ``window_ends``."""

    start: int
    end: int
    window_ends: frozenset[int]


def build_schedule(
    warmup: int, init_buffer: int = 75, term_buffer: int = 50, base_window: int = 25
) -> Schedule:
    """Stan's schedule: a fast initial buffer, slow windows doubling in length, a fast final
    buffer; 15% / 75% / 10% of warmup when it is too short for those; no metric adaptation
    under 20 iterations."""
    if warmup < 20:
        return Schedule(0, 0, frozenset())
    if init_buffer + base_window + term_buffer > warmup:
        init_buffer = int(0.15 * warmup)
        term_buffer = int(0.1 * warmup)
        base_window = warmup - init_buffer - term_buffer
    end = warmup - term_buffer
    ends = []
    start, size = init_buffer, base_window
    while start < end:
        # The last slow window absorbs what would be too short for a window of its own.
        if start + 3 * size > end:
            size = end - start
        ends.append(start + size - 1)
        start, size = start + size, 2 * size
    return Schedule(init_buffer, end, frozenset(ends))


class WindowState(NamedTuple):
    """Where `WindowAdaptation` stands: the warmup ``iteration`` it is fed next, the dual
    averaging of the step size and the (co)variance estimate of the current window."""

    iteration: int
    dual_averaging: DualAveragingState
    welford: WelfordState


class WindowAdaptation:
    """Step size by dual averaging and a (co)variance estimate over Stan's windows, as pure
    functions of a `WindowState`: ``init``, ``update`` (once per warmup iteration), ``final``.

    The value it steers is a sampler's step size or proposal scale, one per chain and equal
    across the chains of a group; after each window it gives a new covariance.
    """

    def __init__(self, warmup: int, target_accept: float, mu_factor: float = 10.0, groups: int = 1):
        self.warmup = warmup
        self.groups = groups
        self.schedule = build_schedule(warmup)
        self.dual_averaging = DualAveraging(target_accept)
        self.mu_factor = mu_factor

    def init(self, value: Tensor, z: Tensor, dense: bool) -> WindowState:
        """Start steering from ``value``, estimating a dense or diagonal (co)variance of
        draws shaped as ``z``."""
        return self.restart(WindowState(0, None, welford_init(z, dense)), value)

    def restart(self, state: WindowState, value: Tensor) -> WindowState:
        """Start the dual averaging again from the geometric mean of each group's `value`s."""
        value = group_mean(value.log(), self.groups).exp()
        averaging = self.dual_averaging.init(value, (self.mu_factor * value).log())
        return state._replace(dual_averaging=averaging)

    def update(
        self, state: WindowState, z: Tensor, statistic: Tensor
    ) -> tuple[WindowState, Tensor, Tensor | None]:
        """Feed one warmup iteration's draws and statistic; returns the new state, the next
        value, and a new covariance when a window has just closed (else None). The value
        follows the mean statistic of each group's chains, so they share it."""
        i = state.iteration
        statistic = statistic.clamp(max=1.0).nan_to_num(0.0)
        averaging = self.dual_averaging.update(
            state.dual_averaging, group_mean(statistic, self.groups)
        )
        welford, covariance = state.welford, None
        if self.schedule.start <= i < self.schedule.end:
            welford = welford_update(welford, z)
            if i in self.schedule.window_ends:
                covariance = pooled(welford_covariance(welford), self.groups)
                welford = welford_init(z, welford.m2.dim() == 3)
        return WindowState(i + 1, averaging, welford), averaging.x.exp(), covariance

    def final(self, state: WindowState) -> Tensor:
        """The value once warmup ends: the dual average."""
        return self.dual_averaging.final(state.dual_averaging)


def straggler_gap(dim: int) -> float:
    """How far (in log density) below its data set's median chain a chain must lie to count
    as stranded. A chain in a posterior's typical set lies about chi2(dim) / 2 below the mode,
    so draws spread over a few times sqrt(dim / 2); this gap is far outside that spread."""
    return 20.0 + dim


def restart_stragglers(generator: torch.Generator, state, groups: int = 1):
    """Restart every chain whose log density lies more than `straggler_gap` below its group's
    median from the state of a chain of the same group that does not, drawn at random.

    A chain that starts far out in a flat or narrow region can stay there through warmup while
    the others have converged (the proposal scale and metric, learnt from all chains, fit the
    others, not it). Warmup only: the draws still come from an unchanged, valid kernel.
    Returns the state and how many chains were restarted."""
    lp = state.logdensity.reshape(groups, -1)
    per_group = lp.shape[1]
    median = lp.nan_to_num(-math.inf).median(dim=1, keepdim=True).values
    stranded = ~(lp >= median - straggler_gap(state.position.shape[-1]))
    count = int(stranded.sum())
    if count == 0:
        return state, 0
    donors = torch.multinomial(
        (~stranded).to(state.position.dtype), per_group, True, generator=generator
    )
    chain = torch.arange(per_group, device=lp.device).expand_as(donors)
    source = torch.where(stranded, donors, chain)
    source = (source + per_group * torch.arange(groups, device=lp.device).unsqueeze(-1)).reshape(-1)
    return type(state)(*(None if field is None else field[source] for field in state)), count
