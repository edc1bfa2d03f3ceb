"""compare: run the study again from clean in results/reproduce/run, with the same config, and
compare every number it computes with the stored results. On the same device and library
versions the numbers must be identical; otherwise each posterior mean must agree within its
Monte Carlo error."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import study  # noqa: E402
import yaml  # noqa: E402

# Posterior means from different devices must agree within this many combined MCSEs.
MCSE_TOLERANCE = 5.0

sm = snakemake  # noqa: F821
study.log_to(sm.log[0])
root = Path("results/reproduce/run")
checkout = Path(sm.params.snakefile).resolve().parent


def say(text):
    """A line for the terminal (the rule's log holds the rerun's own output) and the log."""
    print(text, file=sys.__stderr__, flush=True)
    print(text, flush=True)


def commit():
    """The checkout's commit (with "+changes" where its tracked files differ from it)."""

    def git(*args):
        done = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain", "--untracked-files=no")
    return f"{head}+changes" if head and changed else head or "unknown"


def rerun():
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config_path = (root / "config.yaml").resolve()
    config_path.write_text(yaml.safe_dump(dict(sm.params.config), sort_keys=False))
    command = [
        sys.executable, "-m", "snakemake", "science",
        "--snakefile", str(Path(sm.params.snakefile).resolve()),
        "--directory", str(root),
        "--configfile", str(config_path),
        "--cores", str(sm.threads),
    ]  # fmt: skip
    print("running:", " ".join(command), flush=True)
    done = subprocess.run(command, stdout=sys.stdout, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"compare: the study failed to run again in {root} (see {sm.log[0]})")


def leaves(value, prefix):
    """{key: number} of the numeric leaves of parsed JSON."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(leaves(item, f"{prefix}.{key}"))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(leaves(item, f"{prefix}[{i}]"))
        return out
    if isinstance(value, bool | int | float) and not study.run_dependent(prefix):
        return {prefix: np.array([float(value)])}
    return {}


def numbers(path):
    """{key: float array} of every number in a results file (figures have none)."""
    path = Path(path)
    if path.suffix == ".json":
        return leaves(json.loads(path.read_text()), "")
    if path.suffix == ".csv":
        table = pd.read_csv(path).select_dtypes(include=["number", "bool"])
        return {
            c: table[c].to_numpy(np.float64) for c in table.columns if not study.run_dependent(c)
        }
    if path.suffix == ".npz":
        out = {}
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                value = npz[key]
                if value.dtype.kind in "US":
                    try:
                        out.update(leaves(json.loads(str(value)), key))
                    except ValueError:  # a plain string, such as the format tag
                        continue
                elif not study.run_dependent(key):
                    out[key] = value.astype(np.float64).ravel()
        return out
    return {}


def attrs(base):
    """Device and library versions of every posterior under `base`."""
    found = set()
    for path in sorted(Path(base, "results/posterior").rglob("*.npz")):
        with np.load(path, allow_pickle=False) as npz:
            a = json.loads(str(npz["attrs"]))
        found.add((a["device"], a["dtype"], a["torch_version"], a["bayeslib_version"]))
    return sorted(found)


def compare_identical(paths):
    compared, differences = 0, []
    for path in paths:
        stored, again = numbers(path), numbers(root / path)
        for key in sorted(set(stored) | set(again)):
            a, b = stored.get(key), again.get(key)
            compared += 0 if a is None else a.size
            if a is None or b is None or a.shape != b.shape:
                differences.append({"file": path, "key": key, "max_abs_difference": np.inf})
            elif not np.array_equal(a, b, equal_nan=True):
                diff = np.nanmax(np.abs(a - b)) if np.isfinite(a - b).any() else np.inf
                differences.append({"file": path, "key": key, "max_abs_difference": diff})
    return compared, differences


def compare_monte_carlo(paths):
    compared, differences = 0, []
    for path in paths:
        if not path.endswith("summary.csv"):
            continue
        a, b = pd.read_csv(path), pd.read_csv(root / path)
        tolerance = MCSE_TOLERANCE * np.hypot(a["mcse_mean"], b["mcse_mean"])
        diff = (a["mean"] - b["mean"]).abs()
        compared += len(a)
        for i in np.flatnonzero(~(diff <= tolerance)):
            differences.append(
                {
                    "file": path,
                    "key": f"{a['parameter'][i]} (replicate {a['replicate'][i]}) mean",
                    "max_abs_difference": diff[i],
                    "tolerance": tolerance[i],
                }
            )
    return compared, differences


started = time.time()
tested = commit()
say(
    f"compare: running the study again from clean in {root} at commit {tested[:12]} "
    f"(its output: {sm.log[0]}); this takes as long as the study"
)
rerun()
stored, again = attrs("."), attrs(root)
same_platform = stored == again
compared, differences = (compare_identical if same_platform else compare_monte_carlo)(
    sm.params.science
)
verdict = {
    "mode": "identical" if same_platform else "monte_carlo",
    "passed": not differences,
    "identical": same_platform and not differences,
    "numbers_compared": compared,
    "numbers_different": len(differences),
    "max_abs_difference": max((d["max_abs_difference"] for d in differences), default=0.0),
    "differences": differences[:50],
    "platform": {"stored": stored, "reproduced": again},
    "commit": tested,
    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "wall_time": time.time() - started,
}
study.write_json(sm.output[0], verdict)
print(json.dumps({k: v for k, v in verdict.items() if k != "differences"}, indent=2))
how = "identical" if verdict["identical"] else f"{verdict['mode']} comparison"
say(
    f"\nReproduce verdict: {'passed' if verdict['passed'] else 'FAILED'} ({how}; "
    f"{verdict['numbers_different']} of {verdict['numbers_compared']} numbers differ, at most "
    f"{verdict['max_abs_difference']:.3g}) at commit {tested[:12]}, in "
    f"{verdict['wall_time']:.0f} s: {sm.output[0]}"
)
