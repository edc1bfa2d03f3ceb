"""What the study's scripts share: the models by config name, seeds, data files, atomic writes."""

import functools
import json
import os
import sys
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path

# The bayeslib of this checkout, which the study is run to check, even where another is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.distributions import Normal, Uniform  # noqa: E402

import bayeslib as bl  # noqa: E402
from bayeslib.diagnostics import flat_names  # noqa: E402
from bayeslib.models import Best, BestStudentT, LinearRegression  # noqa: E402

MODELS = {"best": Best, "best_student_t": BestStudentT, "linear_regression": LinearRegression}
# Keys of a scenario that are arguments of its model's simulator.
SIMULATE_KEYS = {
    "best": ("n1", "n2", "effect_size", "sigma"),
    "best_student_t": ("n1", "n2", "effect_size", "sigma", "nu"),
    "linear_regression": ("n", "beta", "sigma"),
}


def derive_seed(base, *keys):
    """A seed for one step of one data set, stable across runs and machines."""
    words = [base] + [zlib.crc32(str(k).encode()) for k in keys]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0])


def simulate(scenario, seed):
    """(model, truth) of one replicate of a scenario."""
    cls = MODELS[scenario["model"]]
    kwargs = {k: scenario[k] for k in SIMULATE_KEYS[scenario["model"]] if k in scenario}
    return cls.simulate(seed=seed, **kwargs)


def fitted_model(scenario, data):
    """The model fitted to one data set of a scenario. fit_prior_scale != 1 widens or narrows
    the prior of the location parameters: a deliberately wrong model, to show the recovery
    check can fail."""
    cls = MODELS[scenario["model"]]
    scale = scenario.get("fit_prior_scale", 1.0)
    if scale != 1.0:
        cls = _rescaled(cls, scale)
    return cls(**data)


def fitted_stack(scenario, data):
    """The model fitted to every replicate of a scenario, as one `bl.stack`; `data` holds each
    field stacked over replicates, ``[replicates, ...]``."""
    replicates = len(next(iter(data.values())))
    return bl.stack(
        [fitted_model(scenario, {k: v[r] for k, v in data.items()}) for r in range(replicates)]
    )


@functools.cache
def _rescaled(cls, s):
    if cls is Best:
        return type("BestRescaledPrior", (Best,), {"mu": bl.Param(Normal(0.0, s), shape=(2,))})
    if cls is BestStudentT:
        mu = bl.Param(lambda p: Normal(p.pooled_mean, 1000 * s * p.pooled_sd), shape=(2,))
        return type("BestStudentTRescaledPrior", (BestStudentT,), {"mu": mu})
    beta = bl.Param(Uniform(-100.0 * s, 100.0 * s), shape=lambda p: (p.X.shape[1],))
    return type("LinearRegressionRescaledPrior", (LinearRegression,), {"beta": beta})


def save_modes(path, modes):
    """The map rule's file: each replicate's `bl.MapResult`, stacked (covariance NaN where the
    mode has no usable curvature)."""
    dim = modes[0].z.shape[0]
    nan = torch.full((dim, dim), float("nan"), dtype=torch.float64)
    arrays = {
        "z": torch.stack([m.z for m in modes]),
        "covariance": torch.stack([nan if m.covariance is None else m.covariance for m in modes]),
        "log_density": torch.tensor([m.log_density for m in modes]),
        "converged": torch.tensor([m.converged for m in modes]),
        "iterations": torch.tensor([m.iterations for m in modes]),
        "grad_max": torch.tensor([m.grad_max for m in modes]),
    }
    for name in modes[0].params:
        arrays[f"params/{name}"] = torch.stack([m.params[name] for m in modes])
    arrays = {k: v.detach().cpu().numpy() for k, v in arrays.items()}
    arrays["method"] = np.array(json.dumps([m.method for m in modes]))
    with atomic(path) as f:
        np.savez(f, **arrays)


def load_modes(path):
    """The `bl.MapResult` of each replicate, from a file written by `save_modes`."""
    with np.load(path, allow_pickle=False) as npz:
        a = {k: torch.from_numpy(npz[k]) for k in npz.files if k != "method"}
        methods = json.loads(str(npz["method"]))
    params = {k.removeprefix("params/"): v for k, v in a.items() if k.startswith("params/")}
    return [
        bl.MapResult(
            params={name: value[r] for name, value in params.items()},
            z=a["z"][r],
            log_density=float(a["log_density"][r]),
            converged=bool(a["converged"][r]),
            iterations=int(a["iterations"][r]),
            grad_max=float(a["grad_max"][r]),
            method=methods[r],
            covariance=None if a["covariance"][r].isnan().any() else a["covariance"][r],
        )
        for r in range(len(methods))
    ]


def save_dataset(path, data, truth, meta):
    """Every replicate's data {field: ``[replicates, ...]``} and truths {param:
    ``[replicates, *shape]``} in one file."""
    arrays = {f"data/{k}": v.numpy() for k, v in data.items()}
    arrays.update({f"truth/{k}": v.numpy() for k, v in truth.items()})
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic(path) as f:
        np.savez(f, **arrays)


def load_dataset(path):
    """({field: tensor}, {param: tensor}, meta) of a data file: stacked over replicates."""
    data, truth = {}, {}
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            group, _, name = key.partition("/")
            if group in ("data", "truth"):
                (data if group == "data" else truth)[name] = torch.from_numpy(npz[key])
        meta = json.loads(str(npz["meta"]))
    return data, truth, meta


@contextmanager
def atomic(path, mode="wb"):
    """Write to a temporary file beside `path`, then rename: no reader sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path, obj):
    with atomic(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_plain)
        f.write("\n")


def write_csv(path, frame, index=True):
    with atomic(path, "w") as f:
        frame.to_csv(f, index=index)


def save_figure(path, fig):
    with atomic(path) as f:
        fig.savefig(f, format="png", dpi=100)


def _plain(value):
    if isinstance(value, torch.Tensor | np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def flat(values):
    """{flat name: float} of {name: tensor}: mu -> mu[0], mu[1]."""
    out = {}
    for name, value in values.items():
        value = torch.as_tensor(value)
        names = flat_names(name, value.shape)
        out.update(zip(names, value.reshape(-1).tolist(), strict=True))
    return out


def log_to(path, echo=False):
    """Send this script's output and tracebacks to the rule's log file (and, with `echo`, to the
    terminal too, for messages the user must see)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "w", buffering=1)  # open for the life of the job
    sys.stdout = sys.stderr = _Tee(stream, sys.__stderr__) if echo else stream


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self):
        for stream in self.streams:
            stream.flush()
