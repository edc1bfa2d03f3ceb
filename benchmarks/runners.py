"""One function per contender: `run(case, chains, warmup, draws, seed, device)` returns the
draws `{name: [chains, draws, *shape]}` as NumPy arrays. Each is timed from a fresh process
(see `one.py`), so the wall time includes imports' compilation, JIT and warmup."""

import math

import numpy as np

from .cases import data

RUNNERS = {}


def runner(name, library):
    def register(fn):
        fn.library = library
        RUNNERS[name] = fn
        return fn

    return register


# ----- bayeslib


def _bayeslib_model(case):
    """The case's bayeslib model: the seed's two (the data-heavy regression is the seed's
    linear model), or the hard posteriors of issue 17 (as in tests/test_metropolis_hard.py)."""
    from torch.distributions import HalfNormal, Normal

    import bayeslib as bl
    from bayeslib.models import Best, LinearRegression

    class KidScore(bl.Model):
        beta = bl.Param(None, shape=(4,))
        sigma = bl.Param(None, support=bl.constraints.positive)

        def __init__(self, X, y):
            super().__init__(X=X, y=y)

        def observe(self, p):
            return {"y": Normal(self.X @ p.beta, p.sigma)}

    class TemperatureTrend(bl.Model):
        a = bl.Param(Normal(0.0, 1000.0))
        b = bl.Param(Normal(0.0, 10.0))
        sigma = bl.Param(HalfNormal(10.0))

        def __init__(self, year, y):
            super().__init__(year=year, y=y)

        def observe(self, p):
            return {"y": Normal(p.a + p.b * self.year, p.sigma)}

    models = {
        "best": Best,
        "linear": LinearRegression,
        "regression": LinearRegression,
        "kidiq": KidScore,
        "trend": TemperatureTrend,
    }
    return models[case](**data(case))


def _bayeslib(sampler, case, chains, warmup, draws, seed, device, cuda_graphs=True, compile=False):
    import bayeslib as bl

    model = _bayeslib_model(case)
    post = bl.sample(
        model,
        sampler=sampler,
        chains=chains,
        warmup=warmup,
        draws=draws,
        seed=seed,
        device=device,
        progress=False,
        cuda_graphs=cuda_graphs,
        compile=compile,
    )
    return {name: value.numpy() for name, value in post.draws.items()}


for _sampler in ("metropolis", "hmc", "nuts"):
    runner(f"bayeslib-{_sampler}", "bayeslib")(lambda *args, _s=_sampler: _bayeslib(_s, *args))
# On the CPU: each NUTS leaf and HMC leapfrog step compiled with the log density; the
# library comes from the on-disk cache (the comparison runs each once first to compile it).
for _sampler in ("hmc", "nuts"):
    runner(f"bayeslib-{_sampler}-compiled", "bayeslib")(
        lambda *args, _s=_sampler: _bayeslib(_s, *args, compile=True)
    )
    RUNNERS[f"bayeslib-{_sampler}-compiled"].compiles = True
# On CUDA: every operation launched on its own, as without captured graphs.
for _sampler in ("hmc", "nuts"):
    runner(f"bayeslib-{_sampler}-launches", "bayeslib")(
        lambda *args, _s=_sampler: _bayeslib(_s, *args, cuda_graphs=False)
    )


# ----- NumPyro


def _numpyro(chain_method, case, chains, warmup, draws, seed, device):
    import jax
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    numpyro.enable_x64()
    numpyro.set_platform("cuda" if device.startswith("cuda") else "cpu")

    def best(y1, y2):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0).expand([2]))
        sigma = numpyro.sample("sigma", dist.Uniform(0.0, 100.0).expand([2]))
        numpyro.sample("y1", dist.Normal(mu[0], sigma[0]), obs=y1)
        numpyro.sample("y2", dist.Normal(mu[1], sigma[1]), obs=y2)

    def linear(X, y):
        beta = numpyro.sample("beta", dist.Uniform(-100.0, 100.0).expand([X.shape[1]]))
        sigma = numpyro.sample("sigma", dist.Uniform(0.0, 100.0))
        numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)

    mcmc = MCMC(
        NUTS(best if case == "best" else linear),
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method=chain_method,
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), **data(case))
    samples = mcmc.get_samples(group_by_chain=True)
    return {name: np.asarray(jax.block_until_ready(value)) for name, value in samples.items()}


runner("numpyro-vectorized", "numpyro")(lambda *a: _numpyro("vectorized", *a))
runner("numpyro-sequential", "numpyro")(lambda *a: _numpyro("sequential", *a))


# ----- Pyro


@runner("pyro-nuts", "pyro")
def _pyro(case, chains, warmup, draws, seed, device):
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import MCMC, NUTS

    torch.set_default_dtype(torch.float64)
    values = {k: torch.as_tensor(v) for k, v in data(case).items()}

    def best(y1, y2):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 100.0).expand([2]).to_event(1))
        pyro.sample("y1", dist.Normal(mu[0], sigma[0]).expand([len(y1)]).to_event(1), obs=y1)
        pyro.sample("y2", dist.Normal(mu[1], sigma[1]).expand([len(y2)]).to_event(1), obs=y2)

    def linear(X, y):
        beta = pyro.sample("beta", dist.Uniform(-100.0, 100.0).expand([X.shape[1]]).to_event(1))
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 100.0))
        pyro.sample("y", dist.Normal(X @ beta, sigma).to_event(1), obs=y)

    runs = []
    # One chain at a time: Pyro's num_chains > 1 forks worker processes, which is its
    # own cost and not always available; chains run back to back in one process here.
    for chain in range(chains):
        pyro.set_rng_seed(seed + chain)
        mcmc = MCMC(
            NUTS(best if case == "best" else linear),
            num_samples=draws,
            warmup_steps=warmup,
            num_chains=1,
            disable_progbar=True,
        )
        mcmc.run(**values)
        runs.append({k: v.numpy() for k, v in mcmc.get_samples().items()})
    return {name: np.stack([run[name] for run in runs]) for name in runs[0]}


# ----- the seed's algorithm


def _seed_tune(scale, acceptance):
    """The seed's tuning table (PyMC3's)."""
    if acceptance < 0.001:
        return scale * 0.1
    if acceptance < 0.05:
        return scale * 0.5
    if acceptance < 0.2:
        return scale * 0.9
    if acceptance > 0.95:
        return scale * 10.0
    if acceptance > 0.75:
        return scale * 2.0
    if acceptance > 0.5:
        return scale * 1.1
    return scale


@runner("seed-metropolis", "seed")
def _seed(case, chains, warmup, draws, seed, device, steps=10000, burn=5000, thin=5):
    """The seed's sampler as written: an eager log density that rejects at the boundary,
    Adam to the mode, then one chain at a time of a Gaussian random walk whose scale is tuned
    every 100 steps for the whole run. `warmup` and `draws` are ignored: its own settings
    (10000 steps, burn 5000, thin 5) are the baseline."""
    import torch
    from torch.distributions import Normal, Uniform

    torch.manual_seed(seed)
    values = {k: torch.as_tensor(v) for k, v in data(case).items()}
    if case == "best":
        sizes, initial_scale = {"mu": 2, "sigma": 2}, 0.1

        def logp(mu, sigma):
            if (sigma <= 0).any() or (sigma >= 100).any():
                return torch.tensor(-math.inf)
            return (
                Normal(mu[0], sigma[0]).log_prob(values["y1"]).sum()
                + Normal(mu[1], sigma[1]).log_prob(values["y2"]).sum()
                + Normal(0.0, 1.0).log_prob(mu).sum()
                + Uniform(0.0, 100.0).log_prob(sigma).sum()
            )

        start = [torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    else:
        k = values["X"].shape[1]
        sizes, initial_scale = {"beta": k, "sigma": 1}, 1.0

        def logp(beta, sigma):
            if (beta.abs() >= 100).any() or sigma <= 0 or sigma >= 100:
                return torch.tensor(-math.inf)
            return (
                Normal(values["X"] @ beta, sigma).log_prob(values["y"]).sum()
                + Uniform(-100.0, 100.0).log_prob(beta).sum()
                + Uniform(0.0, 100.0).log_prob(sigma).sum()
            )

        start = [torch.zeros(k, dtype=torch.float64), torch.ones(1, dtype=torch.float64)]

    params = [p.clone().requires_grad_(True) for p in start]
    optimizer = torch.optim.Adam(params, lr=0.003)
    for _ in range(2000):
        optimizer.zero_grad()
        loss = -logp(*params)
        loss.backward()
        optimizer.step()
    mode = torch.cat([p.detach().reshape(-1) for p in params])

    split = list(sizes.values())
    out = []
    for _ in range(chains):
        x, scale, accepted = mode.clone(), initial_scale, 0
        lp = logp(*torch.split(x, split))
        kept = []
        for step in range(1, steps + 1):
            proposal = x + scale * torch.randn_like(x)
            new_lp = logp(*torch.split(proposal, split))
            if torch.isfinite(new_lp - lp) and torch.log(torch.rand(1)) < new_lp - lp:
                x, lp = proposal, new_lp
                accepted += 1
            if step % 100 == 0:
                scale = _seed_tune(scale, accepted / step)
            kept.append(x)
        out.append(torch.stack(kept[burn::thin]))
    chain_draws = torch.stack(out).numpy()
    columns = np.split(chain_draws, np.cumsum(split)[:-1], axis=-1)
    return {
        name: column[..., 0] if sizes[name] == 1 else column
        for name, column in zip(sizes, columns, strict=True)
    }
