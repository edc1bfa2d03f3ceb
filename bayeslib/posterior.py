"""`Posterior`: named draws from sampling, their sampler statistics, and their files."""

import json
import os
import secrets
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from . import diagnostics
from .diagnostics import flat_names

FORMAT = "bayeslib.posterior/1"

# What `Posterior.warnings` flags, after Vehtari et al. (2021), Margossian et al. (2024) and
# Betancourt (2016): R-hat (nested R-hat for superchains of many short chains) above 1.01,
# bulk or tail ESS of all chains together below 400, E-BFMI below 0.3.
MAX_R_HAT = 1.01
MIN_ESS = 400
MIN_E_BFMI = 0.3
# NUTS's max_tree_depth when a run's attrs do not record it (the sampler's default).
DEFAULT_MAX_TREE_DEPTH = 10
# The attrs that hold one entry per data set.
PER_DATASET_ATTRS = ("step_size", "adapted_variances")
# Draws unconstrained and evaluated at once by `Posterior.log_likelihood`.
CHUNK_SIZE = 4096


class Probability(NamedTuple):
    """A posterior probability estimated from draws, with its Monte Carlo standard error (the
    MCSE of the mean of the 0/1 indicator draws, from their effective sample size)."""

    value: float | np.ndarray
    mcse: float | np.ndarray


class DrawsView:
    """What a function given to `derive`, `prob` or `interval` sees as `p`: each parameter's
    draws `[chains, draws, *shape]` by attribute (`p.mu[..., 1]`)."""

    def __init__(self, draws):
        self.__dict__["_draws"] = draws

    def __getattr__(self, name):
        draws = self.__dict__["_draws"]
        try:
            return draws[name]
        except KeyError:
            raise AttributeError(
                f"no parameter '{name}'; the posterior has {list(draws)}"
            ) from None

    def __setattr__(self, name, value):
        raise AttributeError("p is read-only; return the derived quantity instead")


class Posterior:
    """Draws in the constrained space, as CPU tensors.

    draws: {name: `[chains, draws, *shape]`}; stats: sampler statistics {name: `[chains, draws]`}
    named as ArviZ names them (`lp`, `acceptance_rate`, `step_size`, `diverging`, `tree_depth`,
    `n_steps`, `energy`); warmup / warmup_stats: the same for the discarded warmup draws, when
    kept; attrs: JSON-serialisable facts about the run (sampler, seed, timings, ...).
    """

    def __init__(self, draws, stats=None, warmup=None, warmup_stats=None, attrs=None):
        self.draws = _as_tensors(draws, "draws")
        if not self.draws:
            raise ValueError("Posterior: draws is empty; give at least one parameter.")
        leading = {tuple(v.shape[:2]) for v in self.draws.values()}
        if len(leading) != 1 or any(v.ndim < 2 for v in self.draws.values()):
            raise ValueError(
                "Posterior: every entry of draws must be shaped [chains, draws, *shape] with the "
                f"same chains and draws; got {_shapes(self.draws)}."
            )
        self.stats = _as_tensors(stats or {}, "stats")
        for name, value in self.stats.items():
            if tuple(value.shape) != self.shape:
                raise ValueError(
                    f"Posterior: stats['{name}'] has shape {tuple(value.shape)}; it must be "
                    f"[chains, draws] = {self.shape}."
                )
        self.warmup = _as_tensors(warmup, "warmup") if warmup else None
        self.warmup_stats = _as_tensors(warmup_stats, "warmup_stats") if warmup_stats else None
        self.attrs = dict(attrs or {})
        json.dumps(self.attrs)  # fail now, not at save time

    @property
    def shape(self):
        """(chains, draws): every data set's chains together for a stack."""
        return tuple(next(iter(self.draws.values())).shape[:2])

    @property
    def datasets(self):
        """How many data sets the chains belong to (`bl.stack`); 1 for one model."""
        return int(self.attrs.get("datasets", 1))

    @property
    def superchains(self):
        """Starting points per data set; chains sharing one form a superchain."""
        return int(self.attrs.get("superchains", self.chains // self.datasets))

    def by_dataset(self, name):
        """A parameter's draws ``[datasets, chains, draws, *shape]`` (chains per data set)."""
        value = self[name]
        return value.reshape(self.datasets, -1, *value.shape[1:])

    def stats_by_dataset(self, name):
        """A sampler statistic ``[datasets, chains, draws]``."""
        value = self.stats[name]
        return value.reshape(self.datasets, -1, *value.shape[1:])

    def dataset(self, index):
        """The Posterior of data set `index` alone (its chains, statistics and warmup)."""
        if not 0 <= index < self.datasets:
            raise IndexError(f"data set {index} is not in 0..{self.datasets - 1}")
        chains = self.chains // self.datasets
        part = slice(index * chains, (index + 1) * chains)

        def pick(values):
            return {name: value[part] for name, value in values.items()} if values else None

        attrs = {**self.attrs, "datasets": 1, "dataset": index}
        for key in PER_DATASET_ATTRS:
            if isinstance(self.attrs.get(key), list) and self.datasets > 1:
                attrs[key] = [self.attrs[key][index]]
        return Posterior(
            pick(self.draws), pick(self.stats), pick(self.warmup), pick(self.warmup_stats), attrs
        )

    def _single(self, what):
        if self.datasets > 1:
            raise ValueError(
                f"{what}: this posterior holds {self.datasets} data sets; use "
                f"post.dataset(r).{what}() for one, or bayeslib.calibration.fit_checks(post) "
                "for every data set's convergence checks."
            )

    @property
    def chains(self):
        return self.shape[0]

    @property
    def num_draws(self):
        return self.shape[1]

    @property
    def names(self):
        return list(self.draws)

    def __getitem__(self, name):
        try:
            return self.draws[name]
        except KeyError:
            raise KeyError(f"no parameter '{name}' in the posterior; it has {self.names}") from None

    def __contains__(self, name):
        return name in self.draws

    def __repr__(self):
        if self.datasets > 1:
            return (
                f"Posterior(datasets={self.datasets}, chains={self.chains // self.datasets} "
                f"each, draws={self.num_draws}, {_shapes(self.draws)})"
            )
        return f"Posterior(chains={self.chains}, draws={self.num_draws}, {_shapes(self.draws)})"

    # ----- summaries, derived quantities, probabilities, intervals

    def summary(self, prob=0.95):
        """One row per flat parameter name (`mu[0]`): mean, sd, median, `prob` equal-tailed
        (eti_low, eti_high) and highest-density (hdi_low, hdi_high) intervals, mcse_mean,
        mcse_sd, ess_bulk, ess_tail, r_hat, and r_hat_nested where superchains hold several
        chains each. Sampler statistics: `sampler_summary()`. With several data sets, the
        rows are indexed by (dataset, parameter), each data set's chains judged apart."""
        blocks = []
        for name in self.draws:
            x = self.by_dataset(name).movedim(0, 2)  # [chains, draws, datasets, *shape]
            table = diagnostics.summary({name: x}, prob)
            if self._nested:
                table["r_hat_nested"] = np.ravel(diagnostics.rhat_nested(x, self.superchains))
            names = flat_names(name, x.shape[3:])
            if self.datasets == 1:
                table.index = names
            else:
                table.index = pd.MultiIndex.from_product(
                    [range(self.datasets), names], names=["dataset", "parameter"]
                )
            blocks.append(table)
        table = pd.concat(blocks)
        if self.datasets > 1:
            table = table.sort_index(level="dataset", sort_remaining=False, kind="stable")
        return table

    @property
    def _nested(self):
        """Whether nested R-hat applies: two or more superchains of two or more chains each."""
        return 2 <= self.superchains < self.chains // self.datasets

    def sampler_summary(self):
        """What the sampler reports over all draws: divergences, mean acceptance rate, mean
        step size, draws at the maximum tree depth and E-BFMI per chain, where recorded."""
        out = {"sampler": self.attrs.get("sampler"), "chains": self.chains, "draws": self.num_draws}
        if "diverging" in self.stats:
            out["divergences"] = int(self.stats["diverging"].sum())
        if "acceptance_rate" in self.stats:
            out["acceptance_rate"] = float(self.stats["acceptance_rate"].mean())
        if "step_size" in self.stats:
            out["step_size"] = float(self.stats["step_size"].mean())
        if "tree_depth" in self.stats:
            out["max_tree_depth"] = self.max_tree_depth
            out["max_tree_depth_hits"] = int(
                (self.stats["tree_depth"] >= self.max_tree_depth).sum()
            )
        if "energy" in self.stats:
            out["e_bfmi"] = self.e_bfmi().tolist()
        return out

    @property
    def max_tree_depth(self):
        return int(self.attrs.get("max_tree_depth", DEFAULT_MAX_TREE_DEPTH))

    def e_bfmi(self):
        """Energy Bayesian fraction of missing information per chain (Betancourt 2016), as
        ArviZ computes it: mean squared energy transition over the energy's variance. Values
        below 0.3 say the momentum resampling explores the energy distribution poorly."""
        if "energy" not in self.stats:
            raise ValueError("E-BFMI needs the 'energy' statistic, which HMC and NUTS record.")
        energy = self.stats["energy"].numpy()
        return np.square(np.diff(energy, axis=1)).mean(axis=1) / np.var(energy, axis=1, ddof=1)

    def warnings(self):
        """What a user must not ignore, one message each: R-hat above 1.01 (nested R-hat where
        superchains hold several chains: the split R-hat of many short chains sits above 1.01
        even when they have converged), bulk or tail ESS of all chains below 400, any
        divergence, draws that hit the maximum tree depth, E-BFMI below 0.3."""
        self._single("warnings")
        table = self.summary()
        out = []
        column = "r_hat_nested" if self._nested else "r_hat"
        high = table.index[~(table[column] <= MAX_R_HAT)]
        if len(high):
            out.append(
                f"{column} > {MAX_R_HAT} (or undefined) for "
                f"{_listing(table.loc[high, column])}: the chains disagree; run longer or "
                "reparameterise."
            )
        for kind in ("ess_bulk", "ess_tail"):
            low = table.index[~(table[kind] >= MIN_ESS)]
            if len(low):
                out.append(
                    f"{kind} < {MIN_ESS} for {_listing(table.loc[low, kind], '.0f')}: draw more."
                )
        draws = self.chains * self.num_draws
        if "diverging" in self.stats and self.stats["diverging"].any():
            n = int(self.stats["diverging"].sum())
            out.append(
                f"{n} divergent transitions ({n / draws:.1%} of draws): the draws may be biased; "
                "raise target_accept or reparameterise."
            )
        if "tree_depth" in self.stats:
            n = int((self.stats["tree_depth"] >= self.max_tree_depth).sum())
            if n:
                out.append(
                    f"{n} draws ({n / draws:.1%}) hit max_tree_depth={self.max_tree_depth}: "
                    "trajectories were cut short; raise max_tree_depth or reparameterise."
                )
        if "energy" in self.stats:
            low = [(c, v) for c, v in enumerate(self.e_bfmi()) if v < MIN_E_BFMI]
            if low:
                chains = ", ".join(f"chain {c}: {v:.2f}" for c, v in low)
                out.append(f"E-BFMI < {MIN_E_BFMI} ({chains}): the posterior may have heavy tails.")
        return out

    def derive(self, **quantities):
        """A Posterior with the draws of derived quantities added: `post.derive(diff=lambda p:
        p.mu[..., 1] - p.mu[..., 0])`; each function gets `p` (draws `[chains, draws, *shape]` by
        attribute) and returns draws `[chains, draws, *shape]`."""
        draws = dict(self.draws)
        for name, fn in quantities.items():
            if name in draws:
                raise ValueError(
                    f"derive: '{name}' is already in the posterior; pick another name."
                )
            draws[name] = self._evaluate(fn, name)
        return Posterior(draws, self.stats, self.warmup, self.warmup_stats, self.attrs)

    def prob(self, event):
        """P(event) with its Monte Carlo standard error: `post.prob(lambda p: p.mu[..., 1] <
        p.mu[..., 0])`. The event returns booleans `[chains, draws, *shape]`."""
        indicator = self._evaluate(event, "event").to(torch.float64)
        flat = indicator.reshape(self.chains, self.num_draws, -1)
        value = flat.mean(dim=(0, 1)).numpy()
        # A constant indicator has no detectable Monte Carlo error; the MCSE formula gives 0/0.
        mcse = np.where(flat.std(dim=(0, 1)).numpy() > 0, diagnostics.mcse_mean(flat), 0.0)
        if indicator.ndim == 2:
            return Probability(float(value[0]), float(mcse[0]))
        shape = indicator.shape[2:]
        return Probability(value.reshape(shape), mcse.reshape(shape))

    def interval(self, quantity, prob=0.95, kind="eti"):
        """Credible interval of a parameter (by name) or of a derived quantity (a function of
        `p`): `kind` "eti" (equal-tailed) or "hdi" (highest density). Returns `[*shape, 2]`."""
        functions = {"eti": diagnostics.eti, "hdi": diagnostics.hdi}
        if kind not in functions:
            raise ValueError(f"interval: kind={kind!r} is unknown; use 'eti' or 'hdi'.")
        draws = (
            self[quantity] if isinstance(quantity, str) else self._evaluate(quantity, "quantity")
        )
        return functions[kind](draws, prob)

    def _evaluate(self, fn, name):
        value = torch.as_tensor(fn(DrawsView(self.draws)))
        if tuple(value.shape[:2]) != self.shape:
            raise ValueError(
                f"'{name}' returned shape {tuple(value.shape)}; it must keep the leading "
                f"[chains, draws] = {list(self.shape)} dimensions (index with p.mu[..., 0])."
            )
        return value.detach().cpu()

    # ----- the data's pointwise log-likelihood

    def log_likelihood(self, model, chunk_size=CHUNK_SIZE):
        """Pointwise log-likelihood of `model`'s observed data at every draw:
        {field: `[chains, draws, *data_shape]`}, for LOO and WAIC."""
        missing = [name for name in model.param_shapes if name not in self.draws]
        if missing:
            raise ValueError(
                f"log_likelihood: the posterior has no draws of {missing}; is it a posterior of "
                f"{model.name}?"
            )
        chains, draws = self.shape
        flat = {
            name: self.draws[name].reshape(chains * draws, *shape)
            for name, shape in model.param_shapes.items()
        }
        chunks = {}
        for start in range(0, chains * draws, chunk_size):
            values = {name: value[start : start + chunk_size] for name, value in flat.items()}
            with torch.no_grad():
                for field, value in model.log_likelihood(model.unconstrain(values)).items():
                    chunks.setdefault(field, []).append(value.cpu().to(torch.float64))
        return {
            field: torch.cat(values).reshape(chains, draws, *values[0].shape[1:])
            for field, values in chunks.items()
        }

    # ----- tables and files

    def to_dataframe(self):
        """Tidy table: columns chain, draw, then one column per flat name (`mu[0]`, `mu[1]`)."""
        chains, draws = self.shape
        columns = {
            "chain": np.repeat(np.arange(chains), draws),
            "draw": np.tile(np.arange(draws), chains),
        }
        for name, value in self.draws.items():
            flat = value.reshape(chains * draws, -1).numpy()
            for i, column in enumerate(flat_names(name, value.shape[2:])):
                columns[column] = flat[:, i]
        return pd.DataFrame(columns)

    def save(self, path, warmup=True):
        """Write an .npz file (no pickle), atomically: readers never see a half-written file.
        It is made with the user's umask, as `open` makes files. `warmup=False` leaves out the
        warmup draws and statistics."""
        path = Path(path)
        arrays = {"format": np.array(FORMAT), "attrs": np.array(json.dumps(self.attrs))}
        groups = {"draws": self.draws, "stats": self.stats}
        if warmup:
            groups |= {"warmup": self.warmup, "warmup_stats": self.warmup_stats}
        for group, values in groups.items():
            for name, value in (values or {}).items():
                arrays[f"{group}/{name}"] = value.numpy()
        tmp = new_file_beside(path)
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path):
        """The Posterior in a file written by `save`."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "format" not in npz or str(npz["format"]) != FORMAT:
                    raise ValueError(f"no {FORMAT} format tag")
                groups = {"draws": {}, "stats": {}, "warmup": {}, "warmup_stats": {}}
                for key in npz.files:
                    if "/" in key:
                        group, name = key.split("/", 1)
                        groups[group][name] = torch.from_numpy(npz[key])
                attrs = json.loads(str(npz["attrs"]))
        except (zipfile.BadZipFile, EOFError, ValueError, KeyError) as error:
            raise ValueError(
                f"{path} is truncated or not a bayeslib posterior file ({FORMAT}: "
                f"{type(error).__name__}: {error}); delete it and rerun what wrote it."
            ) from error
        return cls(**groups, attrs=attrs)

    def to_arviz(self, model=None):
        """ArviZ InferenceData (needs the `arviz` extra). With the `model` these draws came
        from, it has log_likelihood and observed_data groups too, for `az.loo` and `az.waic`
        (with several observed fields, name one: `az.loo(idata, var_name="y1")`)."""
        try:
            import arviz as az
        except ImportError:
            raise ImportError(
                "Posterior.to_arviz needs ArviZ: pip install 'bayeslib[arviz]'"
            ) from None

        def numpy(values):
            return {name: value.numpy() for name, value in (values or {}).items()}

        idata = az.from_dict(
            posterior=numpy(self.draws),
            sample_stats=numpy(self.stats) or None,
            warmup_posterior=numpy(self.warmup) or None,
            warmup_sample_stats=numpy(self.warmup_stats) or None,
            save_warmup=self.warmup is not None,
            log_likelihood=numpy(self.log_likelihood(model)) if model is not None else None,
            observed_data=(
                {field: model.data[field].cpu().numpy() for field in model.observed}
                if model is not None
                else None
            ),
        )
        attrs = {
            k: v if isinstance(v, str | int | float) else json.dumps(v)
            for k, v in self.attrs.items()
        }
        for group in idata.groups():
            idata[group].attrs.update(attrs)
        return idata


def new_file_beside(path):
    """An empty new file in `path`'s folder, made with the user's umask (those of
    tempfile.mkstemp are 0600 whatever the umask, and stay so when renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _as_tensors(values, what):
    if not isinstance(values, dict):
        raise TypeError(f"Posterior: {what} must be a dict {{name: array}}, not {type(values)}.")
    return {name: torch.as_tensor(value).detach().cpu() for name, value in values.items()}


def _listing(values, fmt=".3f"):
    return ", ".join(f"{name} ({value:{fmt}})" for name, value in values.items())


def _shapes(values):
    return {name: tuple(value.shape) for name, value in values.items()}
