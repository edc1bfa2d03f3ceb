"""Prior and posterior predictive draws, and posterior predictive checks.

Predictive draws come from the model's own `observe` (through `Model.sample_data`), so every
model gets them with no extra code, for its data or for new inputs:

```python
y_new = posterior_predictive(model, post, X=x_new)["y"]   # [chains, draws, len(x_new)]
```
"""

import numpy as np
import pandas as pd
import torch

from . import diagnostics
from .threads import chooses_threads, work

STATISTICS = {
    "mean": torch.mean,
    "sd": torch.std,
    "min": torch.min,
    "max": torch.max,
}


def _predictive_model(model, new_data):
    """`model` on `new_data`; when new data is given, observed fields not in it are predicted."""
    if not new_data:
        return model
    predicted = {field: None for field in model.observed if field not in new_data}
    return model.replace(**predicted, **new_data)


def _seeds(seed, n):
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint64) >> 1]


@chooses_threads(lambda a: work(a["model"], new_data=a["new_data"]))
def posterior_predictive(model, post, seed=0, thin=1, threads=None, **new_data):
    """Draws of the data from the posterior predictive distribution: {field: `[chains, draws,
    *data_shape]`}, one simulated data set per posterior draw (every `thin`-th per chain).

    With `new_data` (e.g. `X=x_new`), the model is rebuilt on those fields and the observed
    fields left out of it are unobserved, so their draws predict the outcome at the new inputs.
    threads: intra-op CPU threads, as for `bl.sample` (None: chosen from the work).
    """
    if not (isinstance(thin, int) and thin >= 1):
        raise ValueError(f"posterior_predictive: thin must be an integer >= 1, not {thin!r}.")
    model = _predictive_model(model, new_data)
    missing = [name for name in model.param_shapes if name not in post]
    if missing:
        raise ValueError(
            f"posterior_predictive: the posterior has no draws of {missing}; is it a posterior "
            f"of {model.name}?"
        )
    params = {name: post[name][:, ::thin] for name in model.param_shapes}
    chains, draws = next(iter(params.values())).shape[:2]
    flat = {name: value.reshape(chains * draws, *value.shape[2:]) for name, value in params.items()}
    data = model.sample_data(flat, seed=seed)
    return {
        field: value.cpu().reshape(chains, draws, *value.shape[1:]) for field, value in data.items()
    }


@chooses_threads(lambda a: work(a["model"], new_data=a["new_data"]))
def prior_predictive(model, draws, seed=0, threads=None, **new_data):
    """Draws of the data from the prior predictive distribution: {field: `[draws,
    *data_shape]`}, each simulated from its own draw of the parameters from the prior.
    threads: intra-op CPU threads, as for `bl.sample` (None: chosen from the work)."""
    model = _predictive_model(model, new_data)
    prior_seed, data_seed = _seeds(seed, 2)
    data = model.sample_data(model.sample_prior(draws, seed=prior_seed), seed=data_seed)
    return {field: value.cpu() for field, value in data.items()}


@chooses_threads(lambda a: work(a["model"]))
def replicate_statistics(model, post, statistics=None, seed=0, thin=1, threads=None):
    """Test statistics of the observed data and of data replicated from the posterior.

    statistics: {name: function of one data set -> scalar}, added to the defaults `STATISTICS`
    (mean, sd, min, max). Returns (observed, replicated), both keyed by (field, statistic):
    observed values are floats, replicated ones `[chains, draws]` arrays.
    threads: intra-op CPU threads, as for `bl.sample` (None: chosen from the work).
    """
    statistics = {**STATISTICS, **(statistics or {})}
    replicated_data = posterior_predictive(
        model, post, seed=seed, thin=thin, threads=torch.get_num_threads()
    )
    observed, replicated = {}, {}
    for field in model.observed:
        y = model.data[field].cpu()
        y_rep = replicated_data[field]
        chains, draws = y_rep.shape[:2]
        for name, fn in statistics.items():
            observed[field, name] = float(fn(y))
            values = [float(fn(one)) for one in y_rep.reshape(chains * draws, *y.shape)]
            replicated[field, name] = np.array(values).reshape(chains, draws)
    return observed, replicated


def ppc(model, post, statistics=None, seed=0, thin=1, threads=None):
    """Posterior predictive checks of every observed field: one row per (field, statistic)
    with the observed statistic, the replicated statistic's mean and sd, and the Bayesian
    p-value P(T(y_rep) >= T(y)) with its Monte Carlo standard error.

    A p-value near 0 or 1 says the model does not reproduce that feature of the data.
    statistics: as for `replicate_statistics` (added to mean, sd, min and max).
    threads: intra-op CPU threads, as for `bl.sample` (None: chosen from the work).
    """
    observed, replicated = replicate_statistics(model, post, statistics, seed, thin, threads)
    rows = []
    for key, value in observed.items():
        t_rep = replicated[key]
        exceeds = (t_rep >= value).astype(np.float64)
        mcse = diagnostics.mcse_mean(exceeds) if exceeds.std() > 0 else 0.0
        rows.append(
            {
                "field": key[0],
                "statistic": key[1],
                "observed": value,
                "replicated_mean": t_rep.mean(),
                "replicated_sd": t_rep.std(ddof=1),
                "p_value": exceeds.mean(),
                "p_value_mcse": mcse,
            }
        )
    return pd.DataFrame(rows).set_index(["field", "statistic"])


__all__ = [
    "STATISTICS",
    "posterior_predictive",
    "ppc",
    "prior_predictive",
    "replicate_statistics",
]
