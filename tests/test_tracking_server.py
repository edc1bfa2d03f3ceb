"""The track rule against a real `mlflow server` on 127.0.0.1, through a tracking URI with
credentials: unreachable first (the science is kept, the rule says how to retry), then up (the
retry logs the study exactly once). Then what a user sees of it: the experiment's kind, the key
figures, the tags a filter finds runs by, the runs' times, and never the secret."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from browser import chromium, wait_for
from snakemake_cli import ROOT, run_snakemake

pytestmark = pytest.mark.slow  # runs the real pipeline / server / scripts

REPLICATES = 2
CONFIG = {
    "seed": 3,
    "replicates": REPLICATES,
    "scenarios": [{"name": "best", "model": "best"}],
    "samplers": [
        {"name": "metropolis", "chains": 16, "warmup": 300, "draws": 400, "thin": 5},
        {"name": "nuts", "chains": 8, "warmup": 100, "draws": 150},
    ],
    "plot_replicates": 1,
    "recovery": {"rank_draws": 15, "rank_bins": 4},
}
SAMPLERS = ("metropolis", "nuts")
SECRET = "s3cr3t-pw"  # MLflow sends it as basic auth; the server ignores it


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snakemake(workdir, uri, *args):
    return run_snakemake(workdir, workdir / "config.yaml", *args, env={"MLFLOW_TRACKING_URI": uri})


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server with a SQLite backend; yields its URI, stopped after the tests."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder}/server.db",
            "--artifacts-destination",
            str(folder / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert server.poll() is None, "mlflow server exited"
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("mlflow server did not become healthy")
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def with_credentials(uri):
    return uri.replace("http://", f"http://user:{SECRET}@")


@pytest.fixture(scope="module")
def study(tmp_path_factory, mlflow_server):
    """The study, tracked to an unreachable server, then to the real one; both outputs."""
    workdir = tmp_path_factory.mktemp("study")
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    unreachable = with_credentials(f"http://127.0.0.1:{free_port()}")
    failed = snakemake(workdir, unreachable)
    failed_log = (workdir / "results/logs/track/study.log").read_text()
    logged = snakemake(workdir, with_credentials(mlflow_server))
    return SimpleNamespace(
        workdir=workdir, uri=mlflow_server, failed=failed, failed_log=failed_log, logged=logged
    )


def study_runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bayeslib-recovery")
    return client, experiment, client.search_runs([experiment.experiment_id])


def test_unreachable_server_keeps_the_science_and_a_retry_logs_once(study):
    code, output = study.failed
    assert code != 0
    assert "Error in rule track" in output
    assert "run the same snakemake command again" in output, output
    assert "user:***@127.0.0.1" in output, output

    code, output = study.logged
    assert code == 0, output
    assert "rule sample" not in output  # only the track rule ran again
    client, experiment, runs = study_runs(study.uri)
    parents = [r for r in runs if r.data.tags.get("bayeslib.role") == "study"]
    assert len(parents) == 1 and len(runs) == 1 + len(SAMPLERS)
    parent = parents[0].info.run_id
    assert "recovery/recovery.csv" in {a.path for a in client.list_artifacts(parent, "recovery")}

    # An experiment made before its kind was set gets it on the next logging.
    client.delete_experiment_tag(experiment.experiment_id, "mlflow.experimentKind")
    code, output = snakemake(study.workdir, with_credentials(study.uri), "--forcerun", "track")
    assert code == 0 and "already logged" in output, output
    _, experiment, runs = study_runs(study.uri)
    assert len(runs) == 1 + len(SAMPLERS)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_credentials_in_the_tracking_uri_are_never_shown(study):
    shown = {
        "failed run's console": study.failed[1],
        "failed run's track log": study.failed_log,
        "console": study.logged[1],
    }
    for folder in ("results/logs", "results/mlflow", ".snakemake/log"):
        for path in (study.workdir / folder).rglob("*"):
            if path.is_file() and path.suffix in (".log", ".json", ".txt", ""):
                shown[str(path)] = path.read_text(errors="replace")
    assert shown["failed run's track log"] and "user:***@" in shown["failed run's track log"]
    assert "user:***@" in (study.workdir / "results/mlflow/study.logged.json").read_text()
    leaks = [name for name, text in shown.items() if SECRET in text]
    assert not leaks, leaks


def test_experiment_opens_on_its_runs(study):
    _, experiment, _ = study_runs(study.uri)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_runs_lead_with_key_figures_and_a_table_of_every_fit(study, monkeypatch):
    client, _, runs = study_runs(study.uri)
    parent = next(r for r in runs if r.data.tags.get("bayeslib.role") == "study")
    child = next(r for r in runs if r.data.tags.get("mlflow.runName") == "best/nuts")
    fits = pd.read_csv(study.workdir / "results/analysis/best/nuts/fits.csv")
    metrics = child.data.metrics
    assert metrics["max_rhat"] == pytest.approx(fits["rhat"].max())
    assert metrics["min_ess"] == pytest.approx(fits[["ess_bulk", "ess_tail"]].min().min())
    assert metrics["wall_s"] == pytest.approx(fits["warmup_time"][0] + fits["sampling_time"][0])
    assert metrics["divergences"] == fits["divergences"].sum()
    assert 0 <= metrics["coverage_95"] <= 1 and "coverage_50" in metrics
    check = json.loads((study.workdir / "results/recovery/check.json").read_text())
    verdict = pd.read_csv(study.workdir / "results/recovery/verdict.csv")
    assert parent.data.metrics["verdict_passed"] == int(check["passed"])
    assert parent.data.metrics["min_power"] == pytest.approx(verdict["power"].min())
    assert parent.data.metrics["fits"] == REPLICATES * len(SAMPLERS)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", study.uri)  # where load_table searches runs
    table = client.load_table(
        parent.info.experiment_id, "fits_table.json", run_ids=[parent.info.run_id]
    )
    assert len(table) == REPLICATES * len(SAMPLERS)
    assert {"scenario", "sampler", "replicate", "max_rhat", "min_ess", "passed"} <= set(table)
    nuts = table[table.sampler == "nuts"].sort_values("replicate")
    assert list(nuts["max_rhat"]) == pytest.approx(list(fits["rhat"]))


def test_every_run_is_tagged_so_a_filter_finds_it(study, monkeypatch):
    import mlflow

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    _, experiment, runs = study_runs(study.uri)
    for run in runs:
        tags = run.data.tags
        assert tags["commit"] == tags["mlflow.source.git.commit"] == commit
        assert tags["scenario"] == "best" and tags["device"] == "cpu"
        assert tags["replicate_range"] == f"0-{REPLICATES - 1}"
        assert tags["version.bayeslib"] and tags["version.torch"] and tags["version.python"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", study.uri)
    found = mlflow.search_runs([experiment.experiment_id], "tags.sampler = 'nuts'")
    assert list(found["tags.mlflow.runName"]) == ["best/nuts"]
    parent = mlflow.search_runs([experiment.experiment_id], "tags.sampler = 'metropolis,nuts'")
    assert list(parent["tags.bayeslib.role"]) == ["study"]


def test_runs_span_the_jobs_that_made_them(study):
    _, _, runs = study_runs(study.uri)
    parent = next(r for r in runs if r.data.tags.get("bayeslib.role") == "study").info
    for sampler in SAMPLERS:
        child = next(r for r in runs if r.data.tags.get("mlflow.runName") == f"best/{sampler}")
        fits = pd.read_csv(study.workdir / f"results/analysis/best/{sampler}/fits.csv")
        sampled = (study.workdir / f"results/posterior/best/{sampler}.npz").stat().st_mtime
        sampling_s = fits["warmup_time"][0] + fits["sampling_time"][0]
        start, end = child.info.start_time, child.info.end_time
        assert abs(start - (sampled - sampling_s) * 1000) <= 1
        # Sampling, then a separate analyze job (start-up, tables, figures): seconds, not the
        # milliseconds it takes to log the run.
        assert end - start >= sampling_s * 1000 + 1000
        assert parent.start_time <= start and end <= parent.end_time
    analyzed = (study.workdir / "results/analysis/best/nuts/fits.csv").stat().st_mtime
    assert child.info.end_time >= int(analyzed * 1000)


def test_the_experiment_page_shows_the_study_and_its_fits_in_a_browser(study):
    """The link the run prints, opened in Chromium: the study's run with its source and real
    duration, and, expanded, one nested run per scenario and sampler."""
    from selenium.webdriver.common.by import By

    _, experiment, runs = study_runs(study.uri)
    parent = next(r for r in runs if r.data.tags.get("bayeslib.role") == "study")
    children = sorted(r.info.run_name for r in runs if r is not parent)
    with chromium() as page:
        page.get(
            f"{study.uri}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
        )
        name = wait_for(
            page, lambda d: d.find_element(By.XPATH, f"//*[text()='{parent.info.run_name}']")
        )
        name.find_element(By.XPATH, "./ancestor::*[@role='gridcell'][1]//button").click()
        wait_for(page, lambda d: d.find_element(By.XPATH, f"//*[text()='{children[0]}']"))
        cells = [row.text.split("\n") for row in page.find_elements(By.CSS_SELECTOR, "[row-id]")]
        shown = sorted(cell for row in cells for cell in row if cell in children)
        assert shown == children
        assert sum("Snakefile" in row for row in cells) == len(runs)  # the Source column
