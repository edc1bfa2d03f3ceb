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

import torch
from torch import Tensor


class DualAveraging:
    """Nesterov's dual averaging as in Stan (Hoffman & Gelman 2014, section 3.2), per chain.

    Drives ``exp(x)`` so that the mean of the adaptation statistic approaches ``target``.
    """

    def __init__(self, target: float, gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75):
        self.target, self.gamma, self.t0, self.kappa = target, gamma, t0, kappa

    def restart(self, value: Tensor, mu: Tensor) -> None:
        """Start again from ``value`` (per chain), shrinking toward ``mu`` (log scale)."""
        self.x = value.log()
        self.mu = mu
        self.x_avg = torch.zeros_like(self.x)
        self.g_avg = torch.zeros_like(self.x)
        self.t = 0

    def update(self, statistic: Tensor) -> Tensor:
        """One update from this iteration's statistic; returns the next value, ``exp(x)``."""
        self.t += 1
        eta = 1.0 / (self.t + self.t0)
        statistic = statistic.clamp(max=1.0).nan_to_num(0.0)
        self.g_avg = (1.0 - eta) * self.g_avg + eta * (self.target - statistic)
        self.x = self.mu - (math.sqrt(self.t) / self.gamma) * self.g_avg
        weight = self.t ** (-self.kappa)
        self.x_avg = (1.0 - weight) * self.x_avg + weight * self.x
        return self.x.exp()

    def final(self) -> Tensor:
        """The averaged value, used once adaptation ends."""
        return self.x_avg.exp()


class Welford:
    """Running mean and (co)variance of ``[chains, dim]`` draws, one estimate per chain."""

    def __init__(self, chains: int, dim: int, dense: bool, dtype, device):
        self.dense = dense
        self.mean = torch.zeros(chains, dim, dtype=dtype, device=device)
        shape = (chains, dim, dim) if dense else (chains, dim)
        self.m2 = torch.zeros(shape, dtype=dtype, device=device)
        self.n = 0

    def update(self, z: Tensor) -> None:
        self.n += 1
        delta = z - self.mean
        self.mean += delta / self.n
        if self.dense:
            self.m2 += delta.unsqueeze(-1) * (z - self.mean).unsqueeze(-2)
        else:
            self.m2 += delta * (z - self.mean)

    def covariance(self) -> Tensor:
        """Stan's regularised estimate, but shrunk toward its own diagonal: the variances are
        widened by ``1e-3 * 5 / (n + 5)`` of themselves and the covariances kept. A ridge of a
        multiple of the identity (Stan's, even in the posterior's own scale) sets the smallest
        eigenvalue: a slope over calendar years correlates with the intercept at -0.99996,
        its posterior's smallest eigenvalue is 1e-11 of its largest, and such a ridge made the
        proposal 30 times too wide across the ridge of the posterior."""
        n = self.n
        cov = self.m2 / max(n - 1, 1)
        widen = 1.0 + 1e-3 * 5.0 / (n + 5.0)
        if self.dense:
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


class WindowAdaptation:
    """Step size by dual averaging and a (co)variance estimate over Stan's windows.

    The sampler reads ``value`` (its step size or proposal scale, one per chain and equal
    across chains) and, after each window, receives a new covariance.
    """

    def __init__(
        self,
        warmup: int,
        chains: int,
        dim: int,
        target_accept: float,
        dense: bool,
        dtype,
        device,
        adapt_covariance: bool = True,
        mu_factor: float = 10.0,
        groups: int = 1,
    ):
        self.warmup = warmup
        self.groups = groups
        self.schedule = build_schedule(warmup) if adapt_covariance else Schedule(0, 0, frozenset())
        self.dual_averaging = DualAveraging(target_accept)
        self.mu_factor = mu_factor
        self.welford = Welford(chains, dim, dense, dtype, device)
        self.dims = (chains, dim, dense, dtype, device)

    def restart(self, value: Tensor) -> None:
        """Start the dual averaging again from the geometric mean of each group's `value`s."""
        value = group_mean(value.log(), self.groups).exp()
        self.dual_averaging.restart(value, (self.mu_factor * value).log())

    def update(self, i: int, z: Tensor, statistic: Tensor) -> tuple[Tensor, Tensor | None]:
        """Feed iteration ``i``; returns the next value, and a new covariance when a window
        has just closed (else None). The value follows the mean statistic of each group's
        chains, so they share it."""
        statistic = statistic.clamp(max=1.0).nan_to_num(0.0)
        value = self.dual_averaging.update(group_mean(statistic, self.groups))
        if i == self.warmup - 1:
            value = self.dual_averaging.final()
        covariance = None
        if self.schedule.start <= i < self.schedule.end:
            self.welford.update(z)
            if i in self.schedule.window_ends:
                covariance = pooled(self.welford.covariance(), self.groups)
                self.welford = Welford(*self.dims)
        return value, covariance


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
