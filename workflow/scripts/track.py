"""track: the only writer to MLflow. Logs the study as one parent run (config, git commit,
library versions, device, the verdict and recovery tables, benchmarks) with a nested run per
scenario and sampler (every replicate's fit in its tables); the reproduce target adds its
verdict to that parent run. Each run leads with a few short, sortable key figures (metrics
`verdict_passed`, `max_rhat`, `min_ess`, `coverage_95`, `wall_s`, ...), carries the same
searchable tags (`commit`, `scenario`, `sampler`, `replicate_range`, `device`, `version.*`),
and spans the time its jobs ran, not the time it took to log them.

A run is found again by the digest of the study's results, less job times
(`study.science_digest`, tag `bayeslib.results_hash`), so logging the same results twice, fits
made again with the same draws, or retrying after a failure, leave exactly one run."""

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
import study  # noqa: E402
from uris import redact  # noqa: E402

# Fail within seconds when the tracking server is unreachable, instead of retrying for minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# MLflow prints each finished run's link with the tracking URI as given, credentials included;
# main prints the study's link, redacted.
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import snakemake as snakemake_package  # noqa: E402
import torch  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

import bayeslib as bl  # noqa: E402

sm = snakemake  # noqa: F821
study.log_to(sm.log[0], echo=True)
config, target = sm.params.config, sm.wildcards.target
HASH_TAG, ROLE_TAG, COMPLETE_TAG = "bayeslib.results_hash", "bayeslib.role", "bayeslib.complete"
PARENT_TAG = "mlflow.parentRunId"
# The experiment's kind: model training, not a GenAI app (see UI_MODE for the 3.17 UI).
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
# MLflow 3.17's UI takes its mode (GenAI or model training) from this URL parameter, then
# remembers it, and ignores the kind tag while its mode switch is shown: links carry both.
UI_MODE = "workflowType=machine_learning"


def scrub(text, uri):
    """`text` with every copy of the credentials in `uri` masked, as in `redact`."""
    userinfo = urllib.parse.urlsplit(uri).netloc.rpartition("@")[0]
    secret = userinfo.partition(":")[2] or userinfo
    return text.replace(secret, "***") if secret else text


def metric_key(*parts):
    """MLflow metric names allow letters, digits and `_-. /`: mu[0] becomes mu_0."""
    name = ".".join(str(p) for p in parts)
    return name.replace("[", "_").replace("]", "").replace(",", "_")


def metrics(values, timestamp, step=0):
    return [
        Metric(metric_key(key), float(value), timestamp, step)
        for key, value in values.items()
        if isinstance(value, int | float | np.number) and np.isfinite(value)
    ]


def flat_config(value, prefix=""):
    """{"samplers.nuts.chains": "16", ...}: lists of named items are keyed by name."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        items = ((v["name"], {k: x for k, x in v.items() if k != "name"}) for v in value)
    else:
        return {prefix: json.dumps(value) if isinstance(value, list) else str(value)}
    out = {}
    for key, item in items:
        out.update(flat_config(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def git(*args):
    try:
        done = subprocess.run(
            ["git", "-C", sm.params.workdir, *args], capture_output=True, text=True, timeout=30
        )
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def benchmarks():
    """Every job's `benchmark:` record (wall time, memory), one row per job."""
    rows = []
    for path in sorted(Path("results/benchmarks").rglob("*.tsv")):
        table = pd.read_csv(path, sep="\t")
        job = path.relative_to("results/benchmarks").with_suffix("")
        table.insert(0, "rule", job.parts[0])
        table.insert(1, "job", "/".join(job.parts[1:]) or job.parts[0])
        rows.append(table)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def experiment_id(client, uri):
    name = config["tracking"]["experiment"]
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if KIND_TAG not in experiment.tags:  # created before the kind was set
            client.set_experiment_tag(experiment.experiment_id, KIND_TAG, KIND)
        return experiment.experiment_id
    # A local store keeps artifacts inside the project, not in ./mlruns of whichever folder
    # the UI or the pipeline was started from.
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    location = Path(config["tracking"]["artifact_location"]).resolve().as_uri() if local else None
    return client.create_experiment(name, artifact_location=location, tags={KIND_TAG: KIND})


def find_parent(client, exp, digest):
    runs = client.search_runs(
        [exp], f"tags.`{HASH_TAG}` = '{digest}' and tags.`{ROLE_TAG}` = 'study'"
    )
    complete = [r for r in runs if r.data.tags.get(COMPLETE_TAG) == "true"]
    for run in runs:
        if run not in complete:  # left half-logged by a failed attempt
            delete_with_children(client, exp, run.info.run_id)
    return complete[0] if complete else None


def delete_with_children(client, exp, run_id):
    for child in client.search_runs([exp], f"tags.`{PARENT_TAG}` = '{run_id}'"):
        client.delete_run(child.info.run_id)
    client.delete_run(run_id)


def key_figures(fits, recovery):
    """The figures a user sorts runs by, for any set of fits (one analysis or the study)."""
    jobs = fits.groupby(["scenario", "sampler"]).first()  # a job's times repeat on its rows
    values = {
        "fits": len(fits),
        "failed_fits": int((~fits["passed"]).sum()),
        "max_rhat": fits["rhat"].max(),
        "min_ess": min(fits["ess_bulk"].min(), fits["ess_tail"].min()),
        "divergences": int(fits["divergences"].sum()),
        "wall_s": (jobs["warmup_time"] + jobs["sampling_time"]).sum(),
    }
    for column in recovery.columns:
        level = column.removeprefix("coverage_")
        if level != column and level.replace(".", "", 1).isdigit():
            # Averaged over the parameters: coverage_0.95 -> coverage_95.
            values[f"coverage_{float(level) * 100:g}"] = recovery[column].mean()
    return values


def fits_table(fits):
    """One row per fit, with its key figures: the study table the MLflow UI shows."""
    return pd.DataFrame(
        {
            "scenario": fits["scenario"],
            "sampler": fits["sampler"],
            "replicate": fits["replicate"],
            "passed": fits["passed"],
            "max_rhat": fits["rhat"],
            "min_ess": fits[["ess_bulk", "ess_tail"]].min(axis=1),
            "divergences": fits["divergences"],
            "fit_s": fits["fit_time"],
            "reason": fits["reason"].astype("string").fillna(""),
        }
    )


SNAKEFILE = str(Path(snakemake.scriptdir).resolve().parents[1] / "Snakefile")  # noqa: F821


def run_tags(fits, commit):
    """The tags every run carries, so that e.g. `tags.sampler = 'nuts'` finds its runs."""

    def joined(column):
        return ",".join(str(v) for v in fits[column].unique())

    return {
        "commit": commit,
        "mlflow.source.git.commit": commit,
        "mlflow.source.name": SNAKEFILE,  # the UI's "Source" column
        "mlflow.source.type": "LOCAL",
        "scenario": joined("scenario"),
        "sampler": joined("sampler"),
        "replicate_range": f"{fits['replicate'].min()}-{fits['replicate'].max()}",
        "device": ",".join(sorted(fits["device"].astype(str).unique())),
        "version.bayeslib": bl.__version__,
        "version.torch": torch.__version__,
        "version.python": platform.python_version(),
    }


def ms(seconds):
    return int(seconds * 1000)


def analysis_times(scenario, sampler, rows):
    """(start, end) in ms of one scenario and sampler's jobs: sampling began warmup_time +
    sampling_time before its posterior was written; the analysis ended with its last file."""
    sampled = os.stat(f"results/posterior/{scenario}/{sampler}.npz").st_mtime
    start = sampled - rows["warmup_time"].iloc[0] - rows["sampling_time"].iloc[0]
    folders = [Path(f"results/{d}/{scenario}/{sampler}") for d in ("analysis", "plots")]
    end = max(p.stat().st_mtime for d in folders for p in d.rglob("*") if p.is_file())
    return ms(start), ms(max(start, end))


def study_times(children):
    """(start, end) in ms of the study: from its first job to its last file."""
    written = [os.stat(p).st_mtime for p in sm.input.science]
    return min([ms(min(written))] + [start for start, _ in children]), ms(max(written))


def log_study(client, exp, digest):
    now = int(time.time() * 1000)
    fits = pd.read_csv("results/report/fits.csv")
    recovery = pd.read_csv("results/recovery/recovery.csv")
    verdict = pd.read_csv("results/recovery/verdict.csv")
    with open("results/recovery/check.json") as f:
        check = json.load(f)
    bench = benchmarks()
    commit = git("rev-parse", "HEAD")
    children = {
        (scenario, sampler): analysis_times(
            scenario, sampler, fits[(fits.scenario == scenario) & (fits.sampler == sampler)]
        )
        for scenario, sampler in sm.params.analyses
    }
    start, end = study_times(children.values())
    tags = run_tags(fits, commit) | {
        HASH_TAG: digest,
        ROLE_TAG: "study",
        "mlflow.runName": f"study {digest[:10]}",
        "git.dirty": str(bool(git("status", "--porcelain"))).lower(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else "",
        "host": platform.node(),
        "version.numpy": np.__version__,
        "version.snakemake": snakemake_package.__version__,
        "version.mlflow": mlflow.__version__,
    }
    parent = client.create_run(exp, start_time=start, tags=tags).info.run_id
    params = [Param(k, v[:6000]) for k, v in flat_config(config).items()]
    values = key_figures(fits, recovery) | {
        "verdict_passed": int(check["passed"]),
        "failures": len(check["failures"]),
        "min_power": verdict["power"].min(),
    }
    for row in verdict.to_dict("records"):
        for key, value in row.items():
            if key not in ("scenario", "sampler"):
                values[metric_key("verdict", row["scenario"], row["sampler"], key)] = value
    for row in recovery.to_dict("records"):
        prefix = ("recovery", row["scenario"], row["sampler"], row["parameter"])
        for key, value in row.items():
            if key not in ("scenario", "sampler", "parameter", "passed"):
                values[metric_key(*prefix, key)] = value
    if not bench.empty:
        values["benchmark.total_s"] = bench["s"].sum()
        for rule, rows in bench.groupby("rule"):
            values[f"benchmark.{rule}.s"] = rows["s"].sum()
            values[f"benchmark.{rule}.cpu_s"] = rows["cpu_time"].sum()
            values[f"benchmark.{rule}.max_rss_mb"] = rows["max_rss"].max()
    batch = metrics(values, now)
    for i in range(0, len(params), 100):
        client.log_batch(parent, params=params[i : i + 100])
    for i in range(0, len(batch), 1000):
        client.log_batch(parent, metrics=batch[i : i + 1000])
    client.log_dict(parent, config, "config.yaml")
    client.log_table(parent, verdict, "verdict_table.json")
    client.log_table(parent, recovery, "recovery_table.json")
    client.log_table(parent, fits_table(fits), "fits_table.json")
    names = ("verdict.csv", "verdict.txt", "recovery.csv", "check.json", "ranks.csv")
    for path in ["results/recovery/" + n for n in names]:
        client.log_artifact(parent, path, "recovery")
    for path in ["results/recovery/coverage.png", "results/recovery/ranks.png"]:
        client.log_artifact(parent, path, "recovery")
    client.log_artifact(parent, "results/report/fits.csv", "report")
    client.log_artifact(parent, "results/report/efficiency.png", "report")
    if not bench.empty:
        client.log_text(parent, bench.to_csv(index=False), "benchmarks.csv")

    for (scenario, sampler), times in children.items():
        rows = fits[(fits.scenario == scenario) & (fits.sampler == sampler)]
        tags = run_tags(rows, commit) | {PARENT_TAG: parent}
        log_analysis(client, exp, tags, times, rows, verdict, bench, now)
    client.set_tag(parent, COMPLETE_TAG, "true")
    client.set_terminated(parent, end_time=end)
    return parent


def log_analysis(client, exp, tags, times, rows, verdict, bench, now):
    """One nested run per scenario and sampler (the fits in `rows`): every replicate's fit, in
    its tables; it spans `times`, (start, end) in ms, of the sample and analyze jobs."""
    scenario, sampler = rows["scenario"].iloc[0], rows["sampler"].iloc[0]
    name = f"{scenario}/{sampler}"
    tags = tags | {"mlflow.runName": name}
    run = client.create_run(exp, start_time=times[0], tags=tags).info.run_id
    folder = f"results/analysis/{scenario}/{sampler}"
    first = rows.iloc[0].to_dict()
    recovery = pd.read_csv(f"{folder}/recovery.csv")
    scenario_config = next(s for s in config["scenarios"] if s["name"] == scenario)
    params = {"scenario": scenario, "sampler": sampler, "replicates": len(rows)}
    keys = ("chains", "superchains", "draws", "warmup", "thin", "seed", "device", "dtype")
    params.update({k: first[k] for k in keys})
    params.update({f"data.{k}": v for k, v in flat_config(scenario_config).items()})
    values = key_figures(rows, recovery) | {
        "ess_bulk_min": rows["ess_bulk"].min(),
        "ess_bulk_median": rows["ess_bulk"].median(),
        "ess_tail_min": rows["ess_tail"].min(),
        "ess_squares_min": rows["ess_squares"].min(),
        "warmup_time": first["warmup_time"],
        "sampling_time": first["sampling_time"],
        "restarted_chains": first["restarted_chains"],
        "acceptance_rate": rows["acceptance_rate"].mean(),
    }
    row = verdict[(verdict.scenario == scenario) & (verdict.sampler == sampler)]
    if not row.empty:
        values["passed"] = int(row["passed"].iloc[0])
        values["power"] = row["power"].iloc[0]
    for record in recovery.to_dict("records"):
        for key, value in record.items():
            if key.startswith(("coverage_", "bias", "rmse", "rank_p_value")):
                values[metric_key(record["parameter"], key)] = value
    job = bench[(bench.rule == "sample") & (bench.job == name)] if not bench.empty else bench
    if not job.empty:
        values["benchmark.sample.s"] = job["s"].iloc[0]
        values["benchmark.sample.max_rss_mb"] = job["max_rss"].iloc[0]
    client.log_batch(
        run,
        metrics=metrics(values, now),
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    for table in ("fits.csv", "summary.csv", "ppc.csv", "recovery.csv"):
        client.log_artifact(run, f"{folder}/{table}", "tables")
    for replicate in range(sm.params.plot_replicates):
        plots = Path(f"results/plots/{scenario}/{sampler}/{replicate}")
        for figure in sorted(plots.glob("*.png")):  # not their .sha256 files
            client.log_artifact(run, str(figure), f"plots/{replicate}")
    client.set_terminated(run, end_time=times[1])


def log_reproduce(client, exp, parent):
    """The verdict of one reproduction, as a new point of the parent run's reproduce metrics."""
    with open(sm.input.verdict, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    run = client.get_run(parent)
    tag = f"bayeslib.reproduce.{digest}"
    if tag in run.data.tags:
        return False
    with open(sm.input.verdict) as f:
        verdict = json.load(f)
    step = len(client.get_metric_history(parent, "reproduce.passed"))
    values = {
        "reproduce.passed": int(verdict["passed"]),
        "reproduce.identical": int(verdict["identical"]),
        "reproduce.numbers_compared": verdict["numbers_compared"],
        "reproduce.numbers_different": verdict["numbers_different"],
        "reproduce.max_abs_difference": verdict["max_abs_difference"],
    }
    client.log_artifact(parent, sm.input.verdict, f"reproduce/{digest}")
    now = int(time.time() * 1000)
    client.log_batch(parent, metrics=metrics(values, now, step), tags=[RunTag(tag, "logged")])
    return True


def main():
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config["tracking"]["uri"]
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    digest = study.science_digest(sm.input.science)
    try:
        exp = experiment_id(client, uri)
        found = find_parent(client, exp, digest)
        if found is None:
            parent, logged = log_study(client, exp, digest), True
        else:
            parent, logged = found.info.run_id, False
        if target == "reproduce":
            logged = log_reproduce(client, exp, parent)
    except Exception as error:
        sys.exit(
            f"track: logging to the MLflow tracking store {redact(uri)} failed: "
            f"{type(error).__name__}: {scrub(str(error), uri)}\n"
            "The study's results are kept under results/. Make the tracking server reachable "
            "(or point MLFLOW_TRACKING_URI at one that is), then run the same snakemake command "
            "again: only the track rule runs, and the run is logged once."
        )
    print(f"track: {'logged' if logged else 'already logged'}: run {parent} in {redact(uri)}")
    if uri.startswith(("http://", "https://")):
        link = f"{redact(uri).rstrip('/')}/#/experiments/{exp}/runs/{parent}?{UI_MODE}"
        print(f"track: view it at {link}")
    study.write_json(
        sm.output[0],
        {
            "tracking_uri": redact(uri),
            "experiment_id": exp,
            "run_id": parent,
            "results_hash": digest,
        },
    )


main()
