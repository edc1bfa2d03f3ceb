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

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from .base import HamiltonianParams, HamiltonianSampler, Info, State, Target
from .graphs import load, run_phase
from .integrators import leapfrog
from .metrics import is_turning


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
    """One NUTS transition for every chain; ``step_size`` is ``[chains]``.

    A leaf's log weight is ``H0 - H`` (NaN counts as -inf); the leaf diverges when it is
    below ``-max_delta_energy``. Each doubling is one phase (`graphs.run_phase`): on CUDA,
    with ``target.graphs``, a captured graph per depth.
    """
    z0, lp0, grad0 = state
    chains = z0.shape[0]
    dtype, device = z0.dtype, z0.device
    graphs = target.graphs
    r0 = metric.sample_momentum(generator, z0)
    # Per doubling: direction, and the uniform for moving the proposal into the new sub-tree.
    uniforms = torch.rand(
        2, max_tree_depth, chains, generator=generator, dtype=dtype, device=device
    )
    inputs = {"z0": z0, "lp0": lp0, "grad0": grad0, "r0": r0, "uniforms": uniforms}
    ws = load(graphs, {**inputs, "step_size": step_size, "metric": metric})
    # Per leaf, -log u for taking it as its sub-tree's proposal. On the CPU each leaf draws its
    # own (a sub-tree that every chain has left draws no more); off it, a graph cannot draw
    # from the generator, so each doubling's are drawn before it, with or without graphs.
    leaf_generator = generator if draws_each_leaf(device) else None
    for d in range(max_tree_depth):
        if leaf_generator is None:
            neg_log_u = torch.empty(2**d, chains, dtype=dtype, device=device)
            ws = load(graphs, {f"neg_log_u{d}": neg_log_u.exponential_(generator=generator)}, ws)
        doubling = functools.partial(
            _doubling,
            d=d,
            target=target,
            max_delta_energy=max_delta_energy,
            max_tree_depth=max_tree_depth,
            generator=leaf_generator,
        )
        ws = run_phase(graphs, ("nuts", d, max_delta_energy), doubling, ws)
        if not bool(ws["active"].any()):
            break

    # Graphs write into the same tensors again at the next transition.
    out = (lambda t: t) if graphs is None else torch.clone
    info = Info(
        acceptance_rate=ws["sum_accept"] / ws["n_steps"],
        diverging=out(ws["diverging"]),
        energy=ws["h0"] - ws["prop_log_weight"],
        n_steps=out(ws["n_steps"]),
        tree_depth=out(ws["depth"]),
    )
    return State(out(ws["z_prop"]), out(ws["lp_prop"]), out(ws["g_prop"])), info


def draws_each_leaf(device: torch.device) -> bool:
    """Whether each NUTS leaf draws its own uniform (on the CPU), or each doubling draws its
    leaves' before it runs (off the CPU, where the doubling may be a captured graph)."""
    return device.type == "cpu"


def _start(ws: dict) -> dict:
    """The tree of one leaf, the current state."""
    z0, lp0, grad0, r0 = ws["z0"], ws["lp0"], ws["grad0"], ws["r0"]
    active = torch.ones_like(lp0, dtype=torch.bool)
    depth = torch.zeros_like(lp0, dtype=torch.int64)
    return {
        "h0": ws["metric"].kinetic_energy(r0) - lp0,
        "z_left": z0,
        "r_left": r0,
        "g_left": grad0,
        "z_right": z0,
        "r_right": r0,
        "g_right": grad0,
        "z_prop": z0,
        "lp_prop": lp0,
        "g_prop": grad0,
        "prop_log_weight": torch.zeros_like(lp0),
        "log_weight": torch.zeros_like(lp0),
        "r_sum": r0,
        "active": active,
        "diverging": torch.zeros_like(active),
        "depth": depth,
        "n_steps": torch.zeros_like(depth),
        "sum_accept": torch.zeros_like(lp0),
    }


class SubTree(NamedTuple):
    """What a leaf passes to the next leaf of its sub-tree: the integrator's state (a chain
    that left the sub-tree keeps its position, with zero momentum and gradient), the
    sub-tree's log weight, proposal (with its log weight) and momentum sum, and the chains
    still in it."""

    z: Tensor
    r: Tensor
    grad: Tensor
    log_weight: Tensor
    z_prop: Tensor
    lp_prop: Tensor
    g_prop: Tensor
    prop_log_weight: Tensor
    r_sum: Tensor
    active: Tensor


def leaf(
    sub: SubTree,
    eps: Tensor,
    metric,
    h0: Tensor,
    neg_log_u: Tensor,
    checkpoints,
    checks,
    logdensity_and_grad,
    max_delta_energy: float,
) -> tuple[SubTree, Tensor, Tensor, Tensor]:
    """The next leaf of every chain's sub-tree: one leapfrog step, its log weight ``H0 - H``
    (NaN counts as -inf), taken as the sub-tree's proposal where ``-log u`` (`neg_log_u`)
    exceeds its share of the weight, and the sub-tree left by chains that diverge or, at
    an odd leaf, turn against one of the `checkpoints` ``(r, v, r_sum)`` (``[k, chains, dim]``
    each; None at an even leaf), those of bool mask `checks` ``[k]`` when given. Returns the
    sub-tree after the leaf, and the leaf's log weight, momentum and velocity."""
    inf = math.inf
    z1, r1, lp1, g1 = leapfrog(sub.z, sub.r, sub.grad, eps, metric, logdensity_and_grad)
    v1 = metric.velocity(r1)
    log_weight = torch.sub(h0 + lp1, torch.linalg.vecdot(r1, v1), alpha=0.5)
    log_weight = log_weight.nan_to_num(-inf, posinf=-inf)
    new_log_weight = torch.logaddexp(sub.log_weight, log_weight)
    # Take the leaf with probability exp(leaf - new): log u < leaf - new, u uniform.
    take = sub.active & (neg_log_u > new_log_weight - log_weight)
    take_col = take.unsqueeze(-1)
    z_prop = torch.where(take_col, z1, sub.z_prop)
    g_prop = torch.where(take_col, g1, sub.g_prop)
    lp_prop = torch.where(take, lp1, sub.lp_prop)
    prop_log_weight = torch.where(take, log_weight, sub.prop_log_weight)
    r_sum = sub.r_sum + r1

    stop = log_weight < -max_delta_energy
    if checkpoints is not None:
        r_start, v_start, r_sum_start = checkpoints
        turning = is_turning(v_start, v1, r_start, r1, r_sum - r_sum_start + r_start)
        if checks is not None:
            turning = turning & checks.unsqueeze(-1)
        stop = stop | turning.any(0)
    active = sub.active & ~stop
    active_col = active.unsqueeze(-1)
    new = SubTree(
        z=torch.where(active_col, z1, sub.z),
        r=torch.where(active_col, r1, 0.0),
        grad=torch.where(active_col, g1, 0.0),
        log_weight=new_log_weight,
        z_prop=z_prop,
        lp_prop=lp_prop,
        g_prop=g_prop,
        prop_log_weight=prop_log_weight,
        r_sum=r_sum,
        active=active,
    )
    return new, log_weight, r1, v1


@functools.cache
def check_masks(max_tree_depth: int, device: torch.device) -> Tensor:
    """``[leaves, max_tree_depth]``: per leaf of a sub-tree, the checkpoints its U-turn
    checks read (`checkpoint_indices`; none for an even leaf), as a compiled leaf takes them."""
    leaves = 2 ** (max_tree_depth - 1)
    masks = torch.zeros(leaves, max_tree_depth, dtype=torch.bool)
    for n in range(1, leaves, 2):
        idx_min, idx_max = checkpoint_indices(n)
        masks[n, idx_min : idx_max + 1] = True
    return masks.to(device)


def compiled_leaf(target: Target, ws: dict, max_tree_depth: int, max_delta_energy: float):
    """`leaf` with the target's log density, compiled (`target.compiled`) for the chains of
    workspace `ws` (a doubling's, once its sub-tree has begun), whose values are the examples
    it is checked at."""
    metric = ws["metric"]

    def build():
        z0 = ws["z0"]
        checkpoints = tuple(z0.new_zeros(3, max_tree_depth, *z0.shape))
        checks = check_masks(max_tree_depth, z0.device)[1]
        neg_log_u = torch.ones_like(ws["lp0"])
        examples = (ws["sub"], ws["eps"], metric, ws["h0"], neg_log_u, checkpoints, checks)
        fn = functools.partial(
            leaf,
            logdensity_and_grad=target.logdensity_and_grad,
            max_delta_energy=max_delta_energy,
        )
        return fn, examples

    key = ("nuts leaf", type(metric).__name__, max_tree_depth, max_delta_energy)
    return target.compiled.function(key, "the NUTS leaf", build)


# What `_join` and `_begin` read of a doubling's workspace.
TREE_KEYS = (
    "z_left", "r_left", "g_left", "z_right", "r_right", "g_right", "z_prop", "g_prop", "lp_prop",
    "prop_log_weight", "log_weight", "r_sum", "active", "depth", "sum_accept", "n_steps",
    "diverging", "metric", "step_size", "lp0",
)  # fmt: skip


def join_request(target: Target, ws: dict, leaf_arrays: tuple, max_delta_energy: float) -> tuple:
    """``(key, what, build)`` of `_join` followed by the next doubling's `_begin`, compiled
    (`Compiled.function`, `Compiled.ahead`) for workspace `ws` and `leaf_arrays` (log
    weights and activity of every possible leaf of a sub-tree: the rows of leaves not built
    are 0 and False)."""

    def join_and_begin(tree, sub, leaf_log_weights, leaf_active, right, accept_u, next_u):
        new = _join(tree, sub, leaf_log_weights, leaf_active, right, accept_u, max_delta_energy)
        return {**new, **_begin({**tree, **new}, next_u)}

    def build():
        uniforms = ws["uniforms"]
        tree = {key: ws[key] for key in TREE_KEYS}
        examples = (tree, ws["sub"], *leaf_arrays, ws["right"], uniforms[1, 0], uniforms[0, 0])
        return join_and_begin, examples

    key = ("nuts join", type(ws["metric"]).__name__, leaf_arrays[0].shape[0], max_delta_energy)
    return key, "the NUTS tree's join", build


def _begin(tree: dict, uniform: Tensor) -> dict:
    """A new sub-tree: each chain's direction (forward where `uniform` < 0.5), its signed
    step size ``eps`` ``[chains, 1]``, and the `SubTree` it starts from at that end of the
    tree."""
    active = tree["active"]
    right = uniform < 0.5
    right_col = right.unsqueeze(-1)
    eps = torch.where(right, tree["step_size"], -tree["step_size"]).unsqueeze(-1)
    z = torch.where(right_col, tree["z_right"], tree["z_left"])
    # A chain that is done waits with zero momentum and gradient, so that its leapfrog
    # steps stay where its log density was already evaluated: no needless evaluation
    # (which could raise, or be NaN) past the end of its trajectory.
    active_col = active.unsqueeze(-1)
    r = torch.where(active_col, torch.where(right_col, tree["r_right"], tree["r_left"]), 0.0)
    grad = torch.where(active_col, torch.where(right_col, tree["g_right"], tree["g_left"]), 0.0)
    sub = SubTree(
        z=z,
        r=r,
        grad=grad,
        log_weight=torch.full_like(tree["lp0"], -math.inf),
        z_prop=z,
        lp_prop=tree["lp0"],
        g_prop=grad,
        prop_log_weight=tree["prop_log_weight"],
        r_sum=torch.zeros_like(r),
        active=active,
    )
    return {"sub": sub, "eps": eps, "right": right}


def _join(
    tree: dict,
    sub: SubTree,
    leaf_log_weights: Tensor,
    leaf_active: Tensor,
    right: Tensor,
    accept_u: Tensor,
    max_delta_energy: float,
) -> dict:
    """The tree after its new sub-tree `sub`, whose leaves had `leaf_log_weights` and
    `leaf_active` (``[leaves, chains]``): the sub-tree joins the tree where it is complete,
    and the proposal moves into it with probability min(1, w_sub / w_tree) (biased
    progressive sampling, `accept_u` uniform); a chain stays active unless the sub-tree
    turned or diverged, or the tree now turns."""
    metric, active = tree["metric"], tree["active"]
    # Clamped below so that exp stays off the slow path of subnormal results; a leaf
    # that far out adds under 1e-17 to the statistic.
    accept_stat = (leaf_log_weights.clamp(-40.0, 0.0).exp() * leaf_active).sum(0)
    sum_accept = tree["sum_accept"] + accept_stat
    n_steps = tree["n_steps"] + leaf_active.sum(0)
    diverged = (leaf_log_weights < -max_delta_energy) & leaf_active
    diverging = tree["diverging"] | diverged.any(0)
    # A chain's sub-tree is complete when it was active to its last leaf.
    complete = sub.active
    accept = complete & (accept_u.log() < sub.log_weight - tree["log_weight"])
    accept_col = accept.unsqueeze(-1)
    grow_right = (complete & right).unsqueeze(-1)
    grow_left = (complete & ~right).unsqueeze(-1)
    new = {
        "z_prop": torch.where(accept_col, sub.z_prop, tree["z_prop"]),
        "g_prop": torch.where(accept_col, sub.g_prop, tree["g_prop"]),
        "lp_prop": torch.where(accept, sub.lp_prop, tree["lp_prop"]),
        "prop_log_weight": torch.where(accept, sub.prop_log_weight, tree["prop_log_weight"]),
        "depth": tree["depth"] + active,
        "log_weight": torch.logaddexp(tree["log_weight"], sub.log_weight),
        "r_sum": tree["r_sum"] + sub.r_sum,
        "z_right": torch.where(grow_right, sub.z, tree["z_right"]),
        "r_right": torch.where(grow_right, sub.r, tree["r_right"]),
        "g_right": torch.where(grow_right, sub.grad, tree["g_right"]),
        "z_left": torch.where(grow_left, sub.z, tree["z_left"]),
        "r_left": torch.where(grow_left, sub.r, tree["r_left"]),
        "g_left": torch.where(grow_left, sub.grad, tree["g_left"]),
        "sum_accept": sum_accept,
        "n_steps": n_steps,
        "diverging": diverging,
    }
    turned = is_turning(
        metric.velocity(new["r_left"]),
        metric.velocity(new["r_right"]),
        new["r_left"],
        new["r_right"],
        new["r_sum"],
    )
    new["active"] = complete & ~turned
    return new


def _doubling(
    ws: dict,
    d: int,
    target: Target,
    max_delta_energy: float,
    max_tree_depth: int,
    generator=None,
) -> dict:
    """Doubling `d` (from 0) of every chain's tree: a new sub-tree of ``2**d`` leaves in each
    chain's direction, joined to the tree unless it turned or diverged. Each leaf's -log u
    comes from ``ws["neg_log_u<d>"]``, or is drawn from `generator` when one is given.
    With ``target.compiled``, the leaves and the join (with the next doubling's start) run
    compiled (`compiled_leaf`, `join_request`)."""
    compiled = target.compiled is not None
    if d == 0:
        ws = {**ws, **_start(ws)}
    if d == 0 or not compiled:  # compiled, the previous join began this sub-tree
        ws = {**ws, **_begin(ws, ws["uniforms"][0, d])}
    metric, h0, lp0, eps = ws["metric"], ws["h0"], ws["lp0"], ws["eps"]
    chains, dim = ws["z0"].shape
    z = ws["z0"]
    # Checkpoints of momentum, velocity and momentum sum at even leaves of the sub-tree
    # (`checkpoint_indices` of its leaves stay below d). A compiled leaf takes them whole, of
    # one shape at every depth, with a mask of the ones it checks.
    slots = max_tree_depth if compiled else max(1, d)
    r_ckpts, v_ckpts, r_sum_ckpts = z.new_zeros(3, slots, chains, dim)
    # Per leaf of the sub-tree: its log weight, and whether its chain was active. Compiled:
    # rows for every leaf a sub-tree can have, those not built 0 and False.
    n_leaves = 2**d
    if compiled:
        rows = 2 ** (max_tree_depth - 1)
        leaf_log_weights = z.new_zeros(rows, chains)
        leaf_active = torch.zeros(rows, chains, dtype=torch.bool, device=z.device)
        if d == 0:  # the join compiles in a child process while the leaf compiles here
            request = join_request(target, ws, (leaf_log_weights, leaf_active), max_delta_energy)
            target.compiled.ahead(*request)
        leaf_fn = compiled_leaf(target, ws, max_tree_depth, max_delta_energy)
        masks = check_masks(max_tree_depth, z.device)
    else:
        leaf_log_weights = z.new_empty(n_leaves, chains)
        leaf_active = torch.empty(n_leaves, chains, dtype=torch.bool, device=z.device)
    neg_log_u = ws[f"neg_log_u{d}"] if generator is None else None
    # Stopping a sub-tree as soon as every chain has left it costs a device sync per leaf:
    # cheap on the CPU, where small batches often all stop early; on a GPU only the
    # doublings sync.
    sync_each_leaf = z.device.type == "cpu"

    # The new sub-tree, its proposal drawn in proportion to the weights.
    sub = ws["sub"]
    for n in range(n_leaves):
        if generator is None:
            leaf_neg_log_u = neg_log_u[n]
        else:
            leaf_neg_log_u = torch.empty_like(lp0).exponential_(generator=generator)
        leaf_active[n] = sub.active
        idx_min, idx_max = checkpoint_indices(n)
        if compiled:
            args = (sub, eps, metric, h0, leaf_neg_log_u, (r_ckpts, v_ckpts, r_sum_ckpts), masks[n])
            sub, leaf_log_weight, r1, v1 = leaf_fn(*args)
        else:
            span = slice(idx_min, idx_max + 1)
            checkpoints = None if n % 2 == 0 else (r_ckpts[span], v_ckpts[span], r_sum_ckpts[span])
            sub, leaf_log_weight, r1, v1 = leaf(
                sub,
                eps,
                metric,
                h0,
                leaf_neg_log_u,
                checkpoints,
                None,
                target.logdensity_and_grad,
                max_delta_energy,
            )
        leaf_log_weights[n] = leaf_log_weight
        if n % 2 == 0:
            r_ckpts[idx_max] = r1
            v_ckpts[idx_max] = v1
            r_sum_ckpts[idx_max] = sub.r_sum
        if sync_each_leaf and n + 1 < n_leaves and not bool(sub.active.any()):
            break

    uniforms = ws["uniforms"]
    if compiled:
        request = join_request(target, ws, (leaf_log_weights, leaf_active), max_delta_energy)
        join = target.compiled.function(*request)
        tree = {key: ws[key] for key in TREE_KEYS}
        next_u = uniforms[0, min(d + 1, max_tree_depth - 1)]
        new = join(tree, sub, leaf_log_weights, leaf_active, ws["right"], uniforms[1, d], next_u)
    else:
        built = slice(0, n + 1)
        leaf_arrays = (leaf_log_weights[built], leaf_active[built])
        new = _join(ws, sub, *leaf_arrays, ws["right"], uniforms[1, d], max_delta_energy)
    if d == 0:
        new["h0"] = h0
    return new


class NUTS(HamiltonianSampler):
    """The No-U-Turn sampler with Stan's windowed warmup.

    Options: ``step_size`` (initial; adapted during warmup), ``target_accept`` (0.8),
    ``dense_mass`` (None: a dense metric up to 10 dimensions, else diagonal),
    ``inverse_mass_matrix`` (initial; identity), ``max_tree_depth`` (10).
    """

    name = "nuts"
    stat_names = ("acceptance_rate", "diverging", "tree_depth", "n_steps", "energy")

    def __init__(
        self,
        step_size: float = 1.0,
        target_accept: float = 0.8,
        dense_mass: bool | None = None,
        inverse_mass_matrix=None,
        max_tree_depth: int = 10,
    ):
        super().__init__(step_size, target_accept, dense_mass, inverse_mass_matrix)
        if not (isinstance(max_tree_depth, int) and max_tree_depth >= 1):
            raise ValueError(f"max_tree_depth must be an integer >= 1, got {max_tree_depth!r}")
        self.max_tree_depth = max_tree_depth

    def options(self) -> dict:
        return {**super().options(), "max_tree_depth": self.max_tree_depth}

    def step(
        self, generator: torch.Generator, target: Target, state: State, params: HamiltonianParams
    ) -> tuple[State, Info]:
        return nuts_step(
            generator,
            state,
            target,
            params.step_size,
            params.metric,
            self.max_tree_depth,
            self.max_delta_energy,
        )
