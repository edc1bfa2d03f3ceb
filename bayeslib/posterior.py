"""`Posterior`: named draws from sampling, their sampler statistics, and their files."""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .diagnostics import flat_names

FORMAT = "bayeslib.posterior/1"


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
        """(chains, draws)."""
        return tuple(next(iter(self.draws.values())).shape[:2])

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
        return f"Posterior(chains={self.chains}, draws={self.num_draws}, {_shapes(self.draws)})"

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

    def save(self, path):
        """Write an .npz file (no pickle), atomically: readers never see a half-written file."""
        path = Path(path)
        arrays = {"format": np.array(FORMAT), "attrs": np.array(json.dumps(self.attrs))}
        groups = {
            "draws": self.draws,
            "stats": self.stats,
            "warmup": self.warmup,
            "warmup_stats": self.warmup_stats,
        }
        for group, values in groups.items():
            for name, value in (values or {}).items():
                arrays[f"{group}/{name}"] = value.numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as npz:
            if "format" not in npz or str(npz["format"]) != FORMAT:
                raise ValueError(f"{path} is not a bayeslib posterior file ({FORMAT}).")
            groups = {"draws": {}, "stats": {}, "warmup": {}, "warmup_stats": {}}
            for key in npz.files:
                if "/" in key:
                    group, name = key.split("/", 1)
                    groups[group][name] = torch.from_numpy(npz[key])
            attrs = json.loads(str(npz["attrs"]))
        return cls(**groups, attrs=attrs)

    def to_arviz(self):
        """ArviZ InferenceData (needs the `arviz` extra)."""
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
        )
        attrs = {
            k: v if isinstance(v, str | int | float) else json.dumps(v)
            for k, v in self.attrs.items()
        }
        for group in idata.groups():
            idata[group].attrs.update(attrs)
        return idata


def _as_tensors(values, what):
    if not isinstance(values, dict):
        raise TypeError(f"Posterior: {what} must be a dict {{name: array}}, not {type(values)}.")
    return {name: torch.as_tensor(value).detach().cpu() for name, value in values.items()}


def _shapes(values):
    return {name: tuple(value.shape) for name, value in values.items()}
