"""What the study's scripts share: the models by config name, seeds, data files, atomic writes
with checksums, and the study's identity."""

import csv
import functools
import hashlib
import html
import io
import json
import os
import re
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path

# The bayeslib of this checkout, which the study is run to check, even where another is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import checksums  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.distributions import Normal, Uniform  # noqa: E402

import bayeslib as bl  # noqa: E402
from bayeslib.diagnostics import flat_names  # noqa: E402
from bayeslib.models import Best, BestStudentT, LinearRegression  # noqa: E402
from bayeslib.posterior import new_file_beside  # noqa: E402

MODELS = {"best": Best, "best_student_t": BestStudentT, "linear_regression": LinearRegression}
# Values that differ from run to run of the same fits (job times, rates per second): never part
# of a study's identity (`science_digest`).
RUN_DEPENDENT = ("time", "per_second")
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
    with np.load(verified(path), allow_pickle=False) as npz:
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
    with np.load(verified(path), allow_pickle=False) as npz:
        for key in npz.files:
            group, _, name = key.partition("/")
            if group in ("data", "truth"):
                (data if group == "data" else truth)[name] = torch.from_numpy(npz[key])
        meta = json.loads(str(npz["meta"]))
    return data, truth, meta


def save_posterior(path, post):
    """The sample rule's file: the draws and statistics, without the warmup."""
    with atomic_path(path) as tmp:
        post.save(tmp, warmup=False)


def load_posterior(path):
    return bl.Posterior.load(verified(path))


def verified(path):
    """`path`, once its content is found to match the checksum written with it."""
    if not checksums.matches(path):
        raise ValueError(
            f"{path} does not match its checksum ({checksums.sidecar(path)}): it was truncated "
            "or changed after it was written. Run snakemake again: it removes the file and "
            "makes it again."
        )
    return path


@contextmanager
def atomic_path(path):
    """A new file beside `path` to write to; then it is renamed to `path` and its checksum
    written beside it (`checksums`): no reader sees half a file, and one changed later is found.
    Files are made with the user's umask (tempfile.mkstemp's are 0600 whatever the umask)."""
    path = Path(path)
    tmp, side = new_file_beside(path), new_file_beside(checksums.sidecar(path))
    try:
        yield tmp
        side.write_text(checksums.line(path, checksums.digest(tmp)))
        os.replace(tmp, path)
        os.replace(side, checksums.sidecar(path))
    except BaseException:
        tmp.unlink(missing_ok=True)
        side.unlink(missing_ok=True)
        raise


@contextmanager
def atomic(path, mode="wb"):
    """`atomic_path`, opened."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def science_digest(paths):
    """The identity of a study's results: a SHA-256 of every number and text of `paths`, less
    the run-dependent values (`RUN_DEPENDENT`: job times), so that fits made again with the same
    draws are the same study. Figures are left out: they are drawn from the tables hashed here
    (and efficiency.png from the times)."""
    sha = hashlib.sha256()
    for path in paths:
        sha.update(str(path).encode() + b"\0" + _science(Path(verified(path))) + b"\0")
    return sha.hexdigest()


def _science(path):
    """The bytes of `path` that say what the study found."""
    if path.suffix in (".png", ".html"):  # drawn from the tables hashed here
        return b""
    if path.suffix == ".json":
        return _canonical(json.loads(path.read_text())).encode()
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(path.read_text())))
        keep = [i for i, name in enumerate(rows[0] if rows else []) if not run_dependent(name)]
        return "\n".join(",".join(row[i] for i in keep) for row in rows).encode()
    if path.suffix == ".npz":
        sha = hashlib.sha256()
        with np.load(path, allow_pickle=False) as npz:
            for key in sorted(npz.files):
                value = npz[key]
                if value.dtype.kind == "U":  # JSON (attrs, meta) or a plain tag
                    try:
                        text = _canonical(json.loads(str(value)))
                    except ValueError:
                        text = str(value)
                    sha.update(f"{key}\0{text}\0".encode())
                else:
                    sha.update(f"{key}\0{value.dtype.str}{value.shape}\0".encode())
                    sha.update(np.ascontiguousarray(value).tobytes())
        return sha.hexdigest().encode()
    return path.read_bytes()


def _canonical(value):
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if not run_dependent(k)}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return json.dumps(strip(value), sort_keys=True)


def run_dependent(key):
    """Whether `key` names a value that differs between runs of the same fits."""
    return any(word in key for word in RUN_DEPENDENT)


def write_json(path, obj):
    with atomic(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_plain)
        f.write("\n")


def write_csv(path, frame, index=True):
    with atomic(path, "w") as f:
        frame.to_csv(f, index=index)


TABLE_STYLE = (
    "body{font:13px system-ui,sans-serif;margin:12px;color:#222}"
    "table{border-collapse:collapse}"
    "th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}"
    "th{position:sticky;top:0;background:#f2f2f2}"
)


# The report opens a table as a data: URL, which Chromium refuses past 2 MB (base64 adds a
# third): longer tables show their first rows and name the CSV that holds them all.
MAX_HTML_BYTES = 1_400_000


def write_html_table(path, frame, title, csv_path):
    """`frame` as a page of its own, which the report shows in place; numbers are rounded for
    reading, and `csv_path` holds every row and digit."""
    text_columns = [i + 1 for i, kind in enumerate(frame.dtypes) if kind.kind in "OSUb"]
    style = TABLE_STYLE + "".join(
        f"td:nth-child({i}),th:nth-child({i}){{text-align:left}}" for i in text_columns
    )
    rows = len(frame)
    while True:
        page = _html_page(frame.head(rows), title, style, rows < len(frame), len(frame), csv_path)
        if len(page.encode()) <= MAX_HTML_BYTES or rows <= 1:
            break
        rows = int(rows * MAX_HTML_BYTES / len(page.encode()) * 0.95)
    with atomic(path, "w") as f:
        f.write(page)


def _html_page(frame, title, style, cut, total, csv_path):
    table = frame.to_html(
        index=False, float_format=lambda v: f"{v:.4g}", na_rep="-", border=0, escape=True
    )
    table = re.sub(r">\s+<", "><", table)  # pandas indents every cell
    note = (
        f"<p>The first {len(frame):,} of {total:,} rows; all of them: "
        f"<code>{html.escape(str(csv_path))}</code></p>"
        if cut
        else ""
    )
    title = html.escape(title)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body><h3>{title}</h3>{note}{table}</body></html>\n"
    )


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
