"""Traced log densities: the same numbers as the model's own code, or a clear fall back."""

import functools
import math
import warnings

import pytest
import torch
from test_model import (
    EIGHT_S,
    EIGHT_Y,
    BestBatched,
    Garch,
    Hierarchical,
    Mixture,
    WithHalfT,
    random_z,
)
from torch.distributions import (
    Bernoulli,
    HalfNormal,
    InverseGamma,
    MultivariateNormal,
    Normal,
    Poisson,
    Uniform,
)

import bayeslib as bl
from bayeslib import tracing
from bayeslib.models import Best, BestStudentT, LinearRegression
from bayeslib.torch_compat import direct_call, op_name
from bayeslib.tracing import (
    TracingError,
    _drop_identities,
    _fastest,
    _fold_constants,
    _is_op,
    _nearby,
    _share_repeated,
    _values,
    make_target,
    record,
    simplify,
    to_python,
    trace,
    trace_logdensity,
)

MODELS = [
    Best.simulate(seed=0)[0],
    BestStudentT.simulate(seed=0)[0],
    LinearRegression.simulate(n=30, seed=0)[0],
    Hierarchical(EIGHT_Y, EIGHT_S),
    Garch(),
    Mixture([0.0, 1.0, 4.0]),
    WithHalfT(),
    BestBatched(*Best.simulate(seed=1)[0].data.values()),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("chains", [1, 6])
def test_trace_equals_the_model_at_other_points(model, chains):
    """Traced at one batch, replayed at others: the graph holds no value of the first batch."""
    traced = trace_logdensity(model, random_z(model, chains, seed=0))
    traced_lp = trace_logdensity(model, random_z(model, chains, seed=0), grad=False)
    for seed, scale in [(1, 1.0), (2, 3.0), (3, 30.0)]:
        z = random_z(model, chains, seed=seed, scale=scale)
        lp, grad = model.logdensity_and_grad(z)
        got_lp, got_grad = traced(z)
        torch.testing.assert_close(got_lp, lp, rtol=1e-12, atol=1e-12, equal_nan=True)
        torch.testing.assert_close(got_grad, grad, rtol=1e-12, atol=1e-12, equal_nan=True)
        torch.testing.assert_close(traced_lp(z), lp, rtol=1e-12, atol=1e-12, equal_nan=True)


class InPlace(bl.Model):
    """Model code that writes into a tensor in place."""

    mu = bl.Param(Normal(0.0, 1.0))

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        loc = p.mu + torch.zeros_like(self.y)
        loc.mul_(2.0)
        loc += 1.0
        return {"y": Normal(loc, 1.0)}


def test_in_place_writes_are_traced_correctly():
    model = InPlace([0.5, -1.0, 2.0])
    traced = trace_logdensity(model, random_z(model, 4, seed=0))
    z = random_z(model, 4, seed=1)
    lp, grad = model.logdensity_and_grad(z)
    got_lp, got_grad = traced(z)
    torch.testing.assert_close(got_lp, lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, grad, rtol=1e-12, atol=1e-12)
    # Called twice: a folded constant must not have been written into by the first call.
    torch.testing.assert_close(traced(z)[0], lp, rtol=1e-12, atol=1e-12)


class Branching(bl.Model):
    """A batched model with Python control flow on parameter values: not traceable."""

    batched = True
    sigma = bl.Param(Uniform(0.0, 10.0))

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        scale = p.sigma[..., None]
        if bool((p.sigma > 5.0).all()):
            scale = 2.0 * scale
        return {"y": Normal(torch.zeros_like(self.y), scale)}


def test_untraceable_model_falls_back_to_its_own_code_with_a_warning():
    model = Branching([0.3, -0.2, 1.1])
    z = random_z(model, 4, seed=0)
    with pytest.raises(TracingError, match="data-dependent|control flow|local_scalar"):
        trace_logdensity(model, z)
    with pytest.warns(UserWarning, match="could not be traced.*torch.where"):
        target = make_target(model, z)
    assert target.logdensity_and_grad == model.logdensity_and_grad
    with pytest.warns(UserWarning, match="could not be traced"):
        post = bl.sample(model, chains=2, warmup=50, draws=20, seed=0, progress=False)
    assert torch.isfinite(post.draws["sigma"]).all()


@pytest.mark.parametrize("sampler", ["nuts", "metropolis"])
def test_traced_and_eager_sampling_give_the_same_draws(sampler):
    model, _ = Best.simulate(seed=2)
    kwargs = dict(sampler=sampler, chains=3, warmup=100, draws=50, seed=5, progress=False)
    traced = bl.sample(model, **kwargs)
    eager = bl.sample(model, traced=False, **kwargs)
    for name in traced.draws:
        torch.testing.assert_close(traced.draws[name], eager.draws[name], rtol=1e-9, atol=1e-9)


# ----- linear algebra: a failed factorisation is a rejected chain, not an exception


class PoissonGP(bl.Model):
    """Counts y_i ~ Poisson(exp(f(x_i))), f = m + L eta with L the Cholesky factor of a
    squared-exponential kernel (amplitude alpha, length scale rho) plus 1e-10 I. Written so
    that it runs for one draw (vmapped) or, with `batched = True`, for a leading chain
    dimension."""

    m = bl.Param(Normal(0.0, 2.0))
    alpha = bl.Param(HalfNormal(2.0))
    rho = bl.Param(InverseGamma(5.0, 5.0))
    eta = bl.Param(Normal(0.0, 1.0), shape=lambda p: tuple(p.x.shape))

    def __init__(self, x, y):
        super().__init__(x=x, y=y)

    def observe(self, p):
        alpha, rho = p.alpha[..., None, None], p.rho[..., None, None]
        distance = p.x[:, None] - p.x[None, :]
        K = alpha**2 * torch.exp(-0.5 * (distance / rho) ** 2)
        L = torch.linalg.cholesky(K + 1e-10 * torch.eye(len(p.x), dtype=p.x.dtype))
        f = p.m[..., None] + (L @ p.eta[..., None])[..., 0]
        return {"y": Poisson(f.exp())}


class PoissonGPBatched(PoissonGP):
    batched = True


class CorrelatedPair(bl.Model):
    """Pairs y_i ~ MultivariateNormal(0, [[1, r], [r, 1]]) with r on the whole real line: the
    covariance is not positive definite where |r| >= 1."""

    r = bl.Param(Normal(0.0, 0.5))

    def __init__(self, y):
        super().__init__(y=y)

    def observe(self, p):
        cov = torch.eye(2, dtype=p.y.dtype) + p.r * (1 - torch.eye(2, dtype=p.y.dtype))
        return {"y": MultivariateNormal(torch.zeros(2, dtype=p.y.dtype), covariance_matrix=cov)}


class SolvePair(bl.Model):
    """y ~ Normal(K^-1 1, 1) with K = [[1, r], [r, 1]]: K is singular at r = 1, where
    `torch.linalg.solve` raises."""

    r = bl.Param(Normal(0.0, 0.5))

    def __init__(self):
        super().__init__(y=[0.5, -1.0])

    def observe(self, p):
        K = torch.eye(2, dtype=p.y.dtype) + p.r[..., None, None] * (1 - torch.eye(2))
        return {"y": Normal(torch.linalg.solve(K, torch.ones_like(p.y)), 1.0)}


def poisson_gp(cls=PoissonGP, n=12):
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(0.0, 10.0, n, dtype=torch.float64)
    y = torch.poisson(torch.exp(1.0 + torch.sin(x)), generator=g)
    return cls(x, y)


def correlated_pair(n=40, r=0.8):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, n, generator=g, dtype=torch.float64)
    return CorrelatedPair(torch.stack([a, r * a + (1 - r**2) ** 0.5 * b], dim=-1))


def fails_alone(model, z_row):
    """The model's own code fails (raises, or gives NaN) at one chain's z."""
    try:
        lp, _ = model.logdensity_and_grad(z_row[None])
    except torch.linalg.LinAlgError:
        return True
    return bool(lp.isnan().all())


def failing_z(model, chains, seed):
    """Small random z with chains 1 and 4 (0 with one chain) where the factorisation fails:
    for the GP alpha = 1e5 and rho = 100 (K is numerically singular), for the pair r = 1.5
    (not positive definite), for the solve r = 1 (singular)."""
    z = random_z(model, chains, seed=seed, scale=0.3)
    bad = [0] if chains == 1 else [1, 4]
    if isinstance(model, PoissonGP):
        z[bad, 1] = math.log(1e5)  # alpha and rho, through exp
        z[bad, 2] = math.log(100.0)
    else:
        z[bad, 0] = 1.0 if isinstance(model, SolvePair) else 1.5
    return z, bad


LINALG_MODELS = [poisson_gp(), poisson_gp(PoissonGPBatched), correlated_pair(), SolvePair()]


@pytest.mark.parametrize("model", LINALG_MODELS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("chains", [1, 6])
def test_linear_algebra_is_traced_nan_for_the_chains_where_it_fails(model, chains):
    traced = trace_logdensity(model, random_z(model, chains, seed=0, scale=0.3))
    z, bad = failing_z(model, chains, seed=1)
    assert all(fails_alone(model, z[c]) for c in bad)
    got_lp, got_grad = traced(z)
    ok = torch.ones(chains, dtype=torch.bool)
    ok[bad] = False
    assert got_lp[~ok].isnan().all() and got_grad[~ok].isnan().all()
    if ok.any():
        lp, grad = model.logdensity_and_grad(z[ok])
        torch.testing.assert_close(got_lp[ok], lp, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_grad[ok], grad, rtol=1e-12, atol=1e-12)
    # where every factorisation succeeds, the model's own numbers
    z = random_z(model, chains, seed=2, scale=0.3)
    lp, grad = model.logdensity_and_grad(z)
    got_lp, got_grad = traced(z)
    torch.testing.assert_close(got_lp, lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, grad, rtol=1e-12, atol=1e-12)


def test_failures_near_the_trace_point_leave_it_traced():
    """Checked at a second point where some chains' covariance is not positive definite (the
    model's own code raises for the batch): those chains keep the first point."""
    model = correlated_pair()
    z = torch.full((6, 1), 0.95, dtype=torch.float64)
    assert (_nearby(z, 0.1).abs() >= 1).any()
    traced = trace_logdensity(model, z)
    torch.testing.assert_close(traced(z)[0], model.logdensity(z), rtol=1e-12, atol=1e-12)
    # where the model's own code raises at the trace point itself, it is not traced
    z[1] = 1.5
    with pytest.raises(TracingError, match="own code fails where it is checked"):
        trace_logdensity(model, z)


@pytest.mark.parametrize(
    "op",
    [
        lambda K, b: torch.linalg.solve(K, b),
        lambda K, b: torch.linalg.solve_triangular(
            torch.linalg.cholesky(K), b[..., None], upper=False
        )[..., 0],
        lambda K, b: torch.cholesky_solve(b[..., None], torch.linalg.cholesky(K))[..., 0],
        lambda K, b: torch.logdet(K) * b,
        lambda K, b: torch.linalg.slogdet(K)[1] * b,
        lambda K, b: torch.linalg.inv(K) @ b,
    ],
    ids=["solve", "solve_triangular", "cholesky_solve", "logdet", "slogdet", "inv"],
)
def test_linear_algebra_of_real_models_is_traced(op):
    model = LinearAlgebra(op)
    traced = trace_logdensity(model, random_z(model, 5, seed=0, scale=0.3))
    z = random_z(model, 5, seed=1, scale=0.3)
    lp, grad = model.logdensity_and_grad(z)
    got_lp, got_grad = traced(z)
    torch.testing.assert_close(got_lp, lp, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_grad, grad, rtol=1e-10, atol=1e-10)


class LinearAlgebra(bl.Model):
    """y ~ Normal(op(K, b), 1), K = I + A A^T with A and b parameters."""

    A = bl.Param(Normal(0.0, 1.0), shape=(3, 3))
    b = bl.Param(Normal(0.0, 1.0), shape=(3,))

    def __init__(self, op):
        super().__init__(y=[0.5, -1.0, 2.0])
        self.op = op

    def observe(self, p):
        K = torch.eye(3, dtype=p.A.dtype) + p.A @ p.A.mT
        return {"y": Normal(self.op(K, p.b), 1.0)}


class MixedChains(bl.Model):
    """A batched model whose factorisations cannot be told apart per chain: the one for chain
    c uses chain c - 1's amplitude (`roll`), one for all chains uses their mean amplitude
    (`shared`), or 4 fixed matrices, as many as the chains traced, do not depend on the chains
    at all (`data`)."""

    batched = True
    alpha = bl.Param(HalfNormal(1.0))

    def __init__(self, how):
        super().__init__(y=[0.5, -1.0])
        self.how = how

    def observe(self, p):
        alpha = p.alpha.reshape(-1)  # [chains], or [1] for the one draw the model is checked at
        diagonal = {
            "roll": lambda: 1.0 + alpha.roll(1, 0),
            "shared": lambda: 1.0 + alpha.mean(0, keepdim=True),
            "data": lambda: torch.arange(1.0, 5.0, dtype=alpha.dtype),
        }[self.how]()
        K = torch.eye(2, dtype=alpha.dtype) * diagonal[:, None, None]
        scale = torch.linalg.cholesky(K).diagonal(dim1=-2, dim2=-1)[-len(alpha) :]
        loc = (alpha[:, None] * scale).reshape(p.alpha.shape + (2,))
        return {"y": Normal(loc, 1.0)}


@pytest.mark.parametrize("how", ["roll", "shared", "data"])
def test_a_check_that_mixes_chains_fails_the_trace(how):
    model = MixedChains(how)
    with pytest.raises(TracingError, match="cannot be matched to chains"):
        trace_logdensity(model, random_z(model, 4, seed=0))
    with pytest.warns(UserWarning, match="could not be traced"):
        make_target(model, random_z(model, 4, seed=0))


def test_sampling_a_model_whose_cholesky_fails_for_some_proposals():
    """r near 1: NUTS proposes |r| >= 1 (no positive definite covariance) now and then; those
    proposals are divergences of their chain, and the run goes on traced."""
    model = correlated_pair(n=40, r=0.95)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*could not be traced")
        # a start inside |r| < 1: the model's own code (used to choose starts) raises outside
        post = bl.sample(
            model, chains=4, warmup=150, draws=100, seed=1, init={"r": 0.0}, progress=False
        )
    r = post["r"]
    assert (r.abs() < 1).all()
    assert 0.85 < float(r.mean()) < 1.0


# ----- the trace is checked at a second point and refuses other inputs


class NumpyBranch(bl.Model):
    """A batched model that reads parameter values through NumPy, out of the tracer's sight:
    the branch taken at the traced point is frozen into the trace."""

    batched = True
    mu = bl.Param(Normal(0.0, 1.0))
    threshold = 0.0

    def __init__(self):
        super().__init__(y=[0.5, -1.0])

    def observe(self, p):
        shift = 3.0 if (p.mu.detach().numpy() >= self.threshold).all() else 0.0
        return {"y": Normal(p.mu[..., None] + shift, 1.0)}


def test_the_trace_is_checked_at_a_second_point_near_the_first():
    model = NumpyBranch()
    z = torch.full((6, 1), 0.25, dtype=torch.float64)
    model.threshold = 0.25  # every chain sits on the branch point; the second point leaves it
    with pytest.raises(TracingError, match="differs from the model's own"):
        trace_logdensity(model, z)
    model.threshold = -10.0  # the branch never changes: traced
    trace_logdensity(model, z)


def test_the_traced_function_refuses_inputs_of_another_layout():
    model = Best.simulate(seed=0)[0]
    traced = trace_logdensity(model, random_z(model, 4, seed=0))
    refusal = r"Model 'Best'.*traced for inputs of shape \(4, 4\)"
    for z in [random_z(model, 5), random_z(model, 4).float(), random_z(model, 4)[:, :3]]:
        with pytest.raises(TracingError, match=refusal):
            traced(z)


# ----- each simplification pass, on tiny functions


def recorded(fn, *examples):
    graph_module = record(fn, *examples)
    return graph_module, _values(graph_module, examples)


def op_names(graph_module):
    return [op_name(n.target) for n in graph_module.graph.nodes if _is_op(n)]


Z = torch.tensor([[0.5, -1.0], [2.0, 0.1]], dtype=torch.float64)
DATA = torch.tensor([1.0, 2.0], dtype=torch.float64)


def test_constant_folding_computes_data_and_shape_only_operations_once():
    graph_module, values = recorded(lambda z: z * DATA.exp().sum() + torch.ones_like(z), Z)
    assert op_names(graph_module) == ["exp", "sum", "mul", "ones_like", "detach", "add"]
    _fold_constants(graph_module, values)
    graph_module.graph.eliminate_dead_code()
    assert op_names(graph_module) == ["mul", "add"]
    traced = to_python(graph_module, values)
    torch.testing.assert_close(traced(2 * Z), 2 * Z * DATA.exp().sum() + 1, rtol=0, atol=0)


def test_identities_are_dropped():
    def fn(z):
        return (z.view(z.shape) * 1 + 0).expand(z.shape).clone() / 1.0

    graph_module, values = recorded(fn, Z)
    assert op_names(graph_module) == ["view", "mul", "add", "expand", "clone", "div"]
    _drop_identities(graph_module.graph, values)
    graph_module.graph.eliminate_dead_code()
    assert op_names(graph_module) == []
    # a view or a product that changes its input stays
    graph_module, values = recorded(lambda z: z.view(4) * 2 + DATA.repeat(2), Z)
    _drop_identities(graph_module.graph, values)
    graph_module.graph.eliminate_dead_code()
    assert op_names(graph_module) == ["view", "mul", "repeat", "add"]


def test_repeated_operations_are_shared_but_random_ones_are_not():
    graph_module, values = recorded(lambda z: z.exp() + z.exp(), Z)
    _share_repeated(graph_module.graph)
    graph_module.graph.eliminate_dead_code()
    assert op_names(graph_module) == ["exp", "add"]
    graph_module, values = recorded(lambda z: z + torch.rand_like(z) - torch.rand_like(z), Z)
    _share_repeated(graph_module.graph)
    graph_module.graph.eliminate_dead_code()
    assert op_names(graph_module) == ["rand_like", "detach", "add", "rand_like", "detach", "sub"]


def test_dead_code_is_removed():
    def fn(z):
        z.cos()  # computed, never used
        return z.sin()

    graph_module, values = recorded(fn, Z)
    assert op_names(graph_module) == ["cos", "sin"]
    simplify(graph_module, values)
    assert op_names(graph_module) == ["sin"]


def test_the_fastest_binding_that_gives_the_traced_value(monkeypatch):
    graph_module, values = recorded(lambda z: torch.linalg.cholesky_ex(z @ z.mT + 1).L.exp(), Z)
    chosen = {op_name(n.target): _fastest(n, values) for n in graph_module.graph.nodes if _is_op(n)}
    assert chosen["exp"] is torch.exp and chosen["add"] is torch.add
    # no torch.* or Tensor.* binding of that name: the op's own entry point
    assert chosen["linalg_cholesky_ex"] is direct_call(torch.ops.aten.linalg_cholesky_ex.default)
    # a binding is used only where it gives the traced value
    (exp,) = [n for n in graph_module.graph.nodes if _is_op(n) and op_name(n.target) == "exp"]
    monkeypatch.setattr(torch, "exp", lambda x: x + 1)
    assert _fastest(exp, values) is torch.Tensor.exp
    monkeypatch.setattr(torch.Tensor, "exp", lambda x: x + 2)
    assert _fastest(exp, values) is direct_call(torch.ops.aten.exp.default)


def test_in_place_writes_that_cannot_become_plain_operations_are_refused():
    def into_input(z):
        return z.mul_(2.0)

    def into_data(z):
        return z + DATA.add_(0.0)

    def into_a_viewed_tensor(z):
        y = z.exp()
        first = y[0]
        y.mul_(2.0)
        return first + y

    with pytest.raises(TracingError, match="writes into the input or the data"):
        record(into_input, Z)
    with pytest.raises(TracingError, match="writes into the input or the data"):
        record(into_data, Z)
    with pytest.raises(TracingError, match="writes into a tensor that another one views"):
        record(into_a_viewed_tensor, Z)
    # an intermediate result that nothing views becomes a plain operation
    graph_module, _ = recorded(lambda z: z.exp().mul_(2.0), Z)
    assert op_names(graph_module) == ["exp", "mul"]


def test_a_view_made_after_an_in_place_write_sees_the_written_value():
    """`Bernoulli(logits=...)` writes `exp_` into an intermediate result that autograd then
    saves (a view made after the write): that is a plain operation, traced exactly."""

    def viewed_after(z):
        y = (-z).exp_()
        return y.view(-1)[0] + y.sum()

    traced = trace(viewed_after, Z)
    torch.testing.assert_close(traced(Z), viewed_after(Z.clone()), rtol=0, atol=0)
    model = Logistic(*logistic_data())
    z = random_z(model, 4, seed=2)
    traced = trace_logdensity(model, z)
    lp, grad = model.logdensity_and_grad(z)
    got_lp, got_grad = traced(z)
    torch.testing.assert_close(got_lp, lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, grad, rtol=1e-12, atol=1e-12)


class Logistic(bl.Model):
    a = bl.Param(Normal(0.0, 2.0))
    b = bl.Param(Normal(0.0, 2.0))

    def __init__(self, x, y):
        super().__init__(x=x, y=y)

    def observe(self, p):
        return {"y": Bernoulli(logits=p.a + p.b * p.x)}


def logistic_data(n=30):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=generator, dtype=torch.float64)
    y = torch.rand(n, generator=generator, dtype=torch.float64) < torch.sigmoid(0.5 + x)
    return x, y.double()


# ----- data times per-chain parameters: one matrix product for all chains


def correlated_regression(rows=5000, predictors=24, seed=0):
    """Rows of predictors correlated 0.9 with each other, y = X @ beta + noise."""
    generator = torch.Generator().manual_seed(seed)
    normal = functools.partial(torch.randn, generator=generator, dtype=torch.float64)
    X = 0.9**0.5 * normal(rows, 1) + 0.1**0.5 * normal(rows, predictors)
    return X, X @ normal(predictors) + normal(rows)


class RowTimesData(bl.Model):
    """y ~ Normal(beta @ X.T, sigma): the data on the right of a per-chain row vector."""

    beta = bl.Param(Normal(0.0, 10.0), shape=lambda p: (p.X.shape[1],))
    sigma = bl.Param(HalfNormal(10.0))

    def __init__(self, X, y):
        super().__init__(X=X, y=y)

    def observe(self, p):
        return {"y": Normal(p.beta @ self.X.T, p.sigma)}


class DataTimesColumn(RowTimesData):
    """y ~ Normal(X @ beta[:, None], sigma): the data on the left of a per-chain column."""

    def observe(self, p):
        return {"y": Normal((self.X @ p.beta[:, None])[:, 0], p.sigma)}


def assert_traced_equals_the_model(model, z):
    """The traced log density and gradient equal the model's at `z` and near it, to 1e-12."""
    traced = trace_logdensity(model, z)
    for point in (z, _nearby(z, 0.1)):
        lp, grad = model.logdensity_and_grad(point)
        got_lp, got_grad = traced(point)
        torch.testing.assert_close(got_lp, lp, rtol=1e-12, atol=0)
        torch.testing.assert_close(got_grad, grad, rtol=1e-12, atol=1e-12 * grad.abs().max())


def traced_op_names(model, z):
    graph_module = record(lambda z: model.logdensity_and_grad(z), z)
    simplify(graph_module, _values(graph_module, (z,)))
    return op_names(graph_module)


@pytest.mark.parametrize(
    "model_class", [RowTimesData, DataTimesColumn, LinearRegression], ids=lambda c: c.__name__
)
@pytest.mark.parametrize("chains", [1, 4])
def test_data_times_parameters_is_one_matrix_product_for_all_chains(model_class, chains):
    """Under vmap, `beta @ X.T` and `X @ beta[:, None]` are a `bmm` over one copy of X per
    chain (forward, and again for the gradient); the trace runs one `mm` for all chains
    instead, with the model's values and gradients."""
    model = model_class(*correlated_regression())
    z = random_z(model, chains, seed=3)
    names = traced_op_names(model, z)
    assert "bmm" not in names and names.count("mm") == 2
    assert_traced_equals_the_model(model, z)


def test_a_product_whose_matrices_differ_between_chains_stays_batched():
    per_chain = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(0)).double()

    def fn(z):  # z: [3, 2]; the data differ per chain, then both factors do
        data_times_z = per_chain @ z[:, :, None]
        return (data_times_z.mT @ data_times_z)[:, 0, 0]

    z = torch.randn(3, 2, dtype=torch.float64)
    graph_module, values = recorded(fn, z)
    simplify(graph_module, values)
    assert op_names(graph_module).count("bmm") == 2
    torch.testing.assert_close(trace(fn, z)(2 * z), fn(2 * z), rtol=0, atol=0)


def test_an_expanded_matrix_times_per_chain_matrices_is_one_product():
    def fn(z):  # a matrix made of every chain's values, expanded back to each chain
        shared = z.T @ z  # [2, 2]
        return torch.bmm(shared.expand(3, 2, 2), z[:, :, None])[:, :, 0]

    z = torch.randn(3, 2, dtype=torch.float64)
    graph_module, values = recorded(fn, z)
    simplify(graph_module, values)
    assert "bmm" not in op_names(graph_module)
    torch.testing.assert_close(trace(fn, z)(2 * z), fn(2 * z), rtol=1e-12, atol=0)


def test_a_transposed_product_is_laid_out_as_its_users_read_it():
    data = torch.randn(50, 2, generator=torch.Generator().manual_seed(1)).double()

    def fn(z):  # X @ z.T is [rows, chains]; its transpose feeds the elementwise work
        return (data @ z.T).T.exp().sum(1)

    graph_module, values = recorded(fn, Z)
    simplify(graph_module, values)
    values = _values(graph_module, (Z,))
    (product,) = (n for n in graph_module.graph.nodes if _is_op(n) and op_name(n.target) == "mm")
    assert values[product].shape == (2, 50) and values[product].is_contiguous()
    assert "permute" not in op_names(graph_module) and "t" not in op_names(graph_module)
    torch.testing.assert_close(trace(fn, Z)(2 * Z), fn(2 * Z), rtol=1e-12, atol=0)


def test_elementwise_work_on_a_broadcast_runs_once_per_chain():
    """`Normal(mu, sigma)` over rows takes log(sigma) and sigma**2 of sigma expanded to every
    row: computed once per chain, then expanded. A constant that repeats along a dimension
    is read once along it."""
    rows = 1000
    ones = torch.ones(2, rows, dtype=torch.float64)

    def fn(z):
        sigma = z[:, :1].exp().expand(2, rows)
        return (-(sigma.log() + sigma**2) * ones).sum(1)

    graph_module, values = recorded(fn, Z)
    simplify(graph_module, values)
    values = _values(graph_module, (Z,))
    for node in graph_module.graph.nodes:
        if _is_op(node) and op_name(node.target) in ("log", "pow", "neg", "mul"):
            assert values[node].numel() <= 2, op_name(node.target)
    constants = [values[n] for n in graph_module.graph.nodes if n.op == "get_attr"]
    assert all(c.numel() < rows for c in constants)
    torch.testing.assert_close(trace(fn, Z)(2 * Z), fn(2 * Z), rtol=0, atol=0)


def passes_over(graph_module, values, numel) -> list[str]:
    """The operations whose result has `numel` elements or more: passes over the data."""
    return [
        op_name(node.target)
        for node in graph_module.graph.nodes
        if _is_op(node) and isinstance(values[node], torch.Tensor) and values[node].numel() >= numel
    ]


@pytest.mark.parametrize("chains", [1, 4])
def test_a_normal_likelihood_passes_over_the_data_three_times(chains):
    """`Normal(X @ beta, sigma)` over 5000 rows: as recorded, 13 elementwise passes over the
    rows (forward and gradient). With scalings folded and sums taken before per-chain shifts
    and scales, three remain (the residual, its square, the residual scaled for the gradient
    of beta), besides the two matrix products; the values are the model's."""
    model = LinearRegression(*correlated_regression())
    z = random_z(model, chains, seed=6)
    graph_module, values = recorded(lambda z: model.logdensity_and_grad(z), z)
    rows = chains * 5000
    assert len(passes_over(graph_module, values, rows)) > 10
    simplify(graph_module, values)
    values = _values(graph_module, (z,))
    assert sorted(passes_over(graph_module, values, rows)) == ["mm", "mul", "pow", "sub"]
    assert_traced_equals_the_model(model, z)


def test_sums_before_shifts_keep_their_accuracy_on_offset_data():
    """`sum(y - mu)` over rows becomes `sum(y) - rows * mu`; on data far from zero (mean 1e6,
    sd 1), the gradient of mu still agrees with the model's to 1e-9 of its scale."""

    class Offset(bl.Model):
        mu = bl.Param(Normal(1e6, 10.0))
        sigma = bl.Param(HalfNormal(2.0))

        def __init__(self, y):
            super().__init__(y=y)

        def observe(self, p):
            return {"y": Normal(p.mu, p.sigma)}

    y = 1e6 + torch.randn(5000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model = Offset(y)
    z = torch.tensor([[1e6 + 0.01, 0.0], [1e6 - 0.02, 0.1]], dtype=torch.float64)
    graph_module, values = recorded(lambda z: model.logdensity_and_grad(z), z)
    simplify(graph_module, values)
    assert len(passes_over(graph_module, _values(graph_module, (z,)), 10000)) <= 3
    traced = trace_logdensity(model, z)
    for point in (z, _nearby(z, 0.1)):
        lp, grad = model.logdensity_and_grad(point)
        got_lp, got_grad = traced(point)
        torch.testing.assert_close(got_lp, lp, rtol=1e-12, atol=0)
        scale = 5000**0.5  # the gradient's spread over the posterior: sqrt(rows) / sigma
        torch.testing.assert_close(got_grad, grad, rtol=1e-12, atol=1e-9 * scale)


def test_small_tensors_are_left_as_traced():
    """Below `LARGE` elements a pass costs about what the small operations that replace it
    cost: Best's 4 chains of about 20 rows keep their traced operations."""
    model = Best.simulate(seed=0)[0]
    z = random_z(model, 4, seed=7)
    graph_module, values = recorded(lambda z: model.logdensity_and_grad(z), z)
    before = op_names(graph_module)
    simplify(graph_module, values)
    assert "reciprocal" not in op_names(graph_module) and "reciprocal" not in before


def test_many_chains_of_a_data_heavy_model_run_in_chunks():
    """A chain's intermediate results here are 5000 rows: 256 chains run in chunks that fit a
    core's cache, with the model's values; 4 chains run at once."""
    model = LinearRegression(*correlated_regression())
    z = random_z(model, 256, seed=4)
    traced = trace_logdensity(model, z)
    assert 8 <= traced.chunk < 256 and 256 % traced.chunk == 0
    for point in (z, _nearby(z, 0.1)):
        for got, want in zip(traced(point), model.logdensity_and_grad(point), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * want.abs().max())
    with pytest.raises(TracingError, match=r"traced for inputs of shape \(256, 25\)"):
        traced(z[:128])
    assert not hasattr(trace_logdensity(model, z[:4]), "chunk")


def test_only_chains_that_cannot_mix_run_in_chunks(monkeypatch):
    monkeypatch.setattr(tracing, "CHUNK_BYTES", 4096)  # some 20 chains of Best's 20 rows
    model = Best.simulate(seed=0)[0]
    z = random_z(model, 64, seed=5)
    traced = trace_logdensity(model, z, grad=False)
    assert traced.chunk < 64
    torch.testing.assert_close(traced(z), model.logdensity(z), rtol=1e-12, atol=0)
    # a batched model's own code may mix its chains: it runs all at once
    batched = BestBatched(*model.data.values())
    assert not hasattr(trace_logdensity(batched, z), "chunk")


# ----- fewer small operations, the same values to the last bit

EXACT_PASSES = (
    "_sums_of_one",
    "_views_of_views",
    "_scalar_factors_folded",
    "_negations_absorbed",
    "_products_of_masks",
    "_gradient_pieces_joined",
    "_clamp_masks",
    "_sums_shared",
)


@pytest.mark.parametrize("model", [*MODELS, LinearRegression(*correlated_regression())])
def test_the_small_operation_passes_change_no_bit(model, monkeypatch):
    """The passes that remove small operations (views of views, scalings by powers of two,
    the gradient's pieces, clamp masks, sums of one element or repeated) give the values of
    the trace without them bit for bit, at the trace point and away from it, and leave fewer
    operations."""
    z = random_z(model, 4, seed=8)
    with_passes = trace_logdensity(model, z)
    fewer = len(traced_op_names(model, z))
    for name in EXACT_PASSES:
        monkeypatch.setattr(tracing, name, lambda graph_module, values: None)
    without = trace_logdensity(model, z)
    assert fewer < len(traced_op_names(model, z))
    for point in (z, random_z(model, 4, seed=9, scale=3.0)):
        for got, want in zip(with_passes(point), without(point), strict=True):
            assert torch.equal(got.isnan(), want.isnan())
            assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_views_of_views_are_one_view_or_none():
    """Views of views merge into one view, or none. A strided input is made contiguous first:
    its elementwise results would be strided too, where the views (`reshape` records a `view`
    of a contiguous tensor) were traced on contiguous ones."""

    def fn(z):
        w = z.exp().unsqueeze(1).reshape(2, 2).sin().reshape(2, 1, 2).squeeze(1).reshape(4)
        return w * 3.0, z.unsqueeze(0).reshape(2, 2) + 1.0

    graph_module, values = recorded(fn, Z)
    assert op_names(graph_module).count("view") + op_names(graph_module).count("squeeze") == 5
    simplify(graph_module, values)
    assert op_names(graph_module) == ["exp", "sin", "view", "mul", "add"]
    for point in (2 * Z, (2 * Z).t().contiguous().t()):
        for got, want in zip(trace(fn, Z)(point), fn(point), strict=True):
            assert torch.equal(got, want)


def test_scalings_by_powers_of_two_are_folded_and_cancel():
    def fn(z):
        a = -(z * 2.0) * -0.5  # z
        b = -((-z.exp()) * DATA) * 3.0  # exp(z) * DATA * 3
        return a.sin() + (z / 4).cos() * 2 + b

    graph_module, values = recorded(fn, Z)
    simplify(graph_module, values)
    names = op_names(graph_module)
    # exp(z) * DATA * 3, z / 4, cos(.) * 2: the signs and the scalings of z are gone
    assert "neg" not in names and names.count("mul") + names.count("div") == 4
    for point in (Z, 7.3 * Z):
        assert torch.equal(trace(fn, Z)(point), fn(point))
    # 3 * (x / 3) is not x to the last bit: left alone
    graph_module, values = recorded(lambda z: (z / 3.0) * 3.0, Z)
    simplify(graph_module, values)
    assert op_names(graph_module) == ["div", "mul"]


def test_the_gradient_is_assembled_in_one_cat():
    """Best's gradient comes from slices and single columns of `z` (`slice_backward`,
    `select_backward`: a zero tensor with one part written, each, then added up): assembled
    instead by `cat`, the values unchanged."""
    model = Best.simulate(seed=0)[0]
    z = random_z(model, 4, seed=10)
    graph_module, values = recorded(lambda z: model.logdensity_and_grad(z), z)
    before = op_names(graph_module)
    assert before.count("select_backward") + before.count("slice_backward") == 6
    simplify(graph_module, values)
    names = op_names(graph_module)
    assert "select_backward" not in names and "slice_backward" not in names
    lp, grad = model.logdensity_and_grad(z)
    got_lp, got_grad = trace_logdensity(model, z)(z)
    torch.testing.assert_close(got_grad, grad, rtol=1e-12, atol=0)

    # a gap between the parts is filled with zeros; parts of one range are added first
    def fn(z):
        w = z.detach().requires_grad_()
        (w[:, 0].exp().sum() + w[:, 0].sin().sum() + w[:, 1:].sum() * 0).backward()
        return w.grad

    wide = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    traced = trace(fn, wide)
    assert torch.equal(traced(wide + 1), fn(wide + 1))


def test_a_clamps_gradient_mask_is_one_comparison():
    def fn(z):
        w = z.detach().requires_grad_()
        w.clamp(-0.5, 1.0).square().sum().backward()
        return w.grad

    graph_module, values = recorded(fn, Z)
    assert {"ge", "le", "logical_and"} <= set(op_names(graph_module))
    simplify(graph_module, values)
    assert {"ge", "le", "logical_and"}.isdisjoint(op_names(graph_module))
    for point in (Z, torch.tensor([[-0.5, 1.0], [float("nan"), 3.0]], dtype=torch.float64)):
        got, want = trace(fn, Z)(point), fn(point)
        assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_sums_of_one_element_and_repeated_sums_are_views():
    """A sum over a dimension of size 1 is a view; a sum repeated with `keepdim` is a view
    of the first: the squared residual of a normal likelihood is summed over the rows once."""
    model = LinearRegression(*correlated_regression())
    z = random_z(model, 4, seed=11)
    graph_module, values = recorded(lambda z: model.logdensity_and_grad(z), z)
    simplify(graph_module, values)
    values = _values(graph_module, (z,))
    sums = [n for n in graph_module.graph.nodes if _is_op(n) and op_name(n.target) == "sum"]
    assert all(values[n.args[0]].shape[1] > 1 for n in sums)
    assert len([n for n in sums if values[n.args[0]].numel() >= 5000]) == 1
    assert_traced_equals_the_model(model, z)


def test_negations_are_absorbed_into_sums_and_masks_into_one():
    """`x + (-y)` is `x - y`, `x - (-a) * b` is `x + a * b`; the product of two masks made
    numbers (`Uniform`'s support test) is one `logical_and`, made a number."""

    def fn(z):
        w = z.exp()
        inside = (DATA <= z).to(z.dtype) * (z < 2 * DATA).to(z.dtype)
        return w + (-z.sin()) - (-z.cos()) * w + inside.log()

    graph_module, values = recorded(fn, Z)
    simplify(graph_module, values)
    names = op_names(graph_module)
    assert "neg" not in names and names.count("_to_copy") == 1
    for point in (Z, torch.tensor([[1.5, 2.0], [-3.0, 0.25]], dtype=torch.float64)):
        assert torch.equal(trace(fn, Z)(point), fn(point))


def test_sums_over_all_dimensions_and_odd_clamps_are_traced_as_written():
    """`sum(dim=None)` and `sum(dim=[])` (all dimensions) share like any sum; a clamp with
    `lo > hi` (`hi` everywhere) keeps autograd's own mask."""

    def fn(z):
        w = z.detach().requires_grad_()
        total = torch.sum(w.exp(), dim=None, keepdim=True) + w.exp().sum(dim=[])
        (total.sum() + w.clamp(1.0, -1.0).sum()).backward()
        return total + w[:, :1].sum(1, keepdim=True) * w.t(), w.grad

    for point in (Z, torch.tensor([[1.0, -1.0], [0.0, 3.0]], dtype=torch.float64)):
        for got, want in zip(trace(fn, Z)(point), fn(point), strict=True):
            assert torch.equal(got, want)
