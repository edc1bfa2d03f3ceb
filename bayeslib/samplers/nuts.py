"""The No-U-Turn sampler: multinomial trajectory sampling and the generalised no-U-turn
criterion (Hoffman & Gelman 2014; Betancourt 2017), as in Stan and NumPyro.

The tree is built iteratively and in lockstep: at each doubling every chain integrates the
same number of leapfrog steps, each in its own direction, and a chain whose tree (or
current sub-tree) has terminated keeps its state, masked, while the others go on. U-turns
inside a sub-tree are checked at the leaves where one of its sub-trees closes, against
checkpoints of momenta and momentum sums indexed by the leaf number's bits (as NumPyro's
``iterative_build_subtree``). The leaf number is shared by all chains, so the checkpoint
indices are plain Python integers.
"""

import math

import torch
from torch import Tensor

from .base import HamiltonianSampler, Info, State, Target, clean_logdensity
from .integrators import leapfrog


def checkpoint_indices(leaf: int) -> tuple[int, int]:
    """For leaf ``n`` (from 0) of a sub-tree: ``idx_max`` is the checkpoint an even leaf
    writes, and ``[idx_min, idx_max]`` the checkpoints an odd leaf checks against (one per
    sub-tree that ends at this leaf; empty for even leaves)."""
    idx_max = bin(leaf >> 1).count("1")
    trailing_ones = bin((~leaf & (leaf + 1)) - 1).count("1")
    return idx_max - trailing_ones + 1, idx_max


def nuts_step(
    generator: torch.Generator,
    state: State,
    target: Target,
    step_size: Tensor,
    metric,
    max_tree_depth: int = 10,
    max_delta_energy: float = 1000.0,
) -> tuple[State, Info]:
    """One NUTS transition for every chain; ``step_size`` is ``[chains]``."""
    z0, lp0, grad0 = state
    chains, dim = z0.shape
    dtype, device = z0.dtype, z0.device
    logdensity_and_grad = target.logdensity_and_grad

    r0 = metric.sample_momentum(generator, z0)
    h0 = metric.kinetic_energy(r0) - lp0
    # Per doubling: direction, and the uniform for moving the proposal into the new sub-tree.
    uniforms = torch.rand(
        2, max_tree_depth, chains, generator=generator, dtype=dtype, device=device
    )
    go_right = uniforms[0] < 0.5
    r_ckpts = z0.new_empty(max_tree_depth, chains, dim)
    r_sum_ckpts = z0.new_empty(max_tree_depth, chains, dim)

    z_left = z_right = z0
    r_left = r_right = r0
    g_left = g_right = grad0
    z_prop, lp_prop, g_prop, h_prop = z0, lp0, grad0, h0
    log_weight = torch.zeros_like(lp0)
    r_sum = r0
    active = torch.ones(chains, dtype=torch.bool, device=device)
    diverging = torch.zeros_like(active)
    depth = torch.zeros(chains, dtype=torch.int64, device=device)
    n_steps = torch.zeros_like(depth)
    sum_accept = torch.zeros_like(lp0)

    for d in range(max_tree_depth):
        right = go_right[d]
        right_col = right.unsqueeze(-1)
        eps = torch.where(right, step_size, -step_size).unsqueeze(-1)
        z = torch.where(right_col, z_right, z_left)
        r = torch.where(right_col, r_right, r_left)
        grad = torch.where(right_col, g_right, g_left)

        # The new sub-tree of 2**d leaves, sampled uniformly by weight (multinomial).
        leaf_uniforms = torch.rand(2**d, chains, generator=generator, dtype=dtype, device=device)
        sub_log_weight = torch.full_like(lp0, -math.inf)
        sub_z, sub_lp, sub_g, sub_h = z, lp0, grad, h0
        sub_r_sum = torch.zeros_like(r0)
        sub_active = active
        sub_stopped = torch.zeros_like(active)
        sub_diverging = torch.zeros_like(active)
        for n in range(2**d):
            z1, r1, lp1, g1 = leapfrog(z, r, grad, eps, metric, logdensity_and_grad)
            lp1 = clean_logdensity(lp1)
            h1 = metric.kinetic_energy(r1) - lp1
            delta = (h1 - h0).nan_to_num(math.inf)
            leaf_diverging = delta > max_delta_energy
            sum_accept += torch.where(sub_active, torch.exp(-delta).clamp(max=1.0), 0.0)
            n_steps += sub_active

            new_log_weight = torch.logaddexp(sub_log_weight, -delta)
            take = sub_active & (leaf_uniforms[n] < torch.exp(-delta - new_log_weight))
            take_col = take.unsqueeze(-1)
            sub_z = torch.where(take_col, z1, sub_z)
            sub_g = torch.where(take_col, g1, sub_g)
            sub_lp = torch.where(take, lp1, sub_lp)
            sub_h = torch.where(take, h1, sub_h)
            sub_log_weight = torch.where(sub_active, new_log_weight, sub_log_weight)
            sub_r_sum = sub_r_sum + r1

            idx_min, idx_max = checkpoint_indices(n)
            if n % 2 == 0:
                r_ckpts[idx_max] = r1
                r_sum_ckpts[idx_max] = sub_r_sum
                turning = None
            else:
                r_start = r_ckpts[idx_min : idx_max + 1]
                span_sum = sub_r_sum - r_sum_ckpts[idx_min : idx_max + 1] + r_start
                turning = metric.is_turning(r_start, r1, span_sum).any(0)

            stop = leaf_diverging if turning is None else leaf_diverging | turning
            sub_diverging |= sub_active & leaf_diverging
            sub_stopped |= sub_active & stop
            sub_active = sub_active & ~stop
            active_col = sub_active.unsqueeze(-1)
            z = torch.where(active_col, z1, z)
            r = torch.where(active_col, r1, r)
            grad = torch.where(active_col, g1, grad)
            if n + 1 < 2**d and not bool(sub_active.any()):
                break

        # Join the sub-tree to the tree: move the proposal into it with probability
        # min(1, w_sub / w_tree) unless it turned or diverged (biased progressive sampling).
        accept = active & ~sub_stopped
        accept &= uniforms[1, d] < torch.exp(sub_log_weight - log_weight)
        accept_col = accept.unsqueeze(-1)
        z_prop = torch.where(accept_col, sub_z, z_prop)
        g_prop = torch.where(accept_col, sub_g, g_prop)
        lp_prop = torch.where(accept, sub_lp, lp_prop)
        h_prop = torch.where(accept, sub_h, h_prop)

        log_weight = torch.where(active, torch.logaddexp(log_weight, sub_log_weight), log_weight)
        r_sum = torch.where(active.unsqueeze(-1), r_sum + sub_r_sum, r_sum)
        grow_right = (active & right).unsqueeze(-1)
        grow_left = (active & ~right).unsqueeze(-1)
        z_right = torch.where(grow_right, z, z_right)
        r_right = torch.where(grow_right, r, r_right)
        g_right = torch.where(grow_right, grad, g_right)
        z_left = torch.where(grow_left, z, z_left)
        r_left = torch.where(grow_left, r, r_left)
        g_left = torch.where(grow_left, grad, g_left)

        depth += active
        diverging |= active & sub_diverging
        turning = metric.is_turning(r_left, r_right, r_sum)
        active = active & ~sub_stopped & ~turning
        if not bool(active.any()):
            break

    info = Info(
        acceptance_rate=sum_accept / n_steps,
        diverging=diverging,
        energy=h_prop,
        n_steps=n_steps,
        tree_depth=depth,
    )
    return State(z_prop, lp_prop, g_prop), info


class NUTS(HamiltonianSampler):
    """The No-U-Turn sampler with Stan's windowed warmup.

    Options: ``step_size`` (initial; adapted during warmup), ``target_accept`` (0.8),
    ``dense_mass`` (False), ``inverse_mass_matrix`` (initial; identity), ``max_tree_depth``
    (10).
    """

    name = "nuts"
    stat_names = ("acceptance_rate", "diverging", "tree_depth", "n_steps", "energy")

    def __init__(
        self,
        step_size: float = 1.0,
        target_accept: float = 0.8,
        dense_mass: bool = False,
        inverse_mass_matrix=None,
        max_tree_depth: int = 10,
    ):
        super().__init__(step_size, target_accept, dense_mass, inverse_mass_matrix)
        if not (isinstance(max_tree_depth, int) and max_tree_depth >= 1):
            raise ValueError(f"max_tree_depth must be an integer >= 1, got {max_tree_depth!r}")
        self.max_tree_depth = max_tree_depth

    def step(self, generator: torch.Generator, state: State) -> tuple[State, Info]:
        return nuts_step(
            generator,
            state,
            self.target,
            self.step_size,
            self.metric,
            self.max_tree_depth,
            self.max_delta_energy,
        )
