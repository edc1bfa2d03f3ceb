"""The track rule against a real `mlflow server` on 127.0.0.1: unreachable first (the science
is kept and the rule says how to retry), then up (the retry logs the study exactly once)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from snakemake_cli import run_snakemake

pytestmark = pytest.mark.slow  # runs the real pipeline / server / scripts

CONFIG = {
    "seed": 3,
    "replicates": 2,
    "scenarios": [{"name": "best", "model": "best"}],
    "samplers": [{"name": "metropolis", "chains": 16, "warmup": 300, "draws": 400, "thin": 5}],
    "plot_replicates": 1,
    "recovery": {"rank_draws": 15, "rank_bins": 4},
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snakemake(workdir, uri, *args):
    return run_snakemake(workdir, workdir / "config.yaml", *args, env={"MLFLOW_TRACKING_URI": uri})


@pytest.fixture
def mlflow_server(tmp_path):
    """A real tracking server with a SQLite backend; yields its URI, stopped after the test."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
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


def study_runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bayeslib-recovery")
    return client, client.search_runs([experiment.experiment_id])


def test_unreachable_server_keeps_the_science_and_a_retry_logs_once(tmp_path, mlflow_server):
    workdir = tmp_path / "study"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))

    code, output = snakemake(workdir, f"http://127.0.0.1:{free_port()}")
    assert code != 0
    assert "Error in rule track" in output
    assert "run the same snakemake command again" in output, output
    assert (workdir / "results/recovery/check.json").exists()
    assert (workdir / "results/posterior/best/metropolis.npz").exists()
    assert not (workdir / "results/mlflow/study.logged.json").exists()

    code, output = snakemake(workdir, mlflow_server)
    assert code == 0, output
    assert "rule sample" not in output  # only the track rule ran again
    client, runs = study_runs(mlflow_server)
    parents = [r for r in runs if r.data.tags.get("bayeslib.role") == "study"]
    assert len(parents) == 1 and len(runs) == 1 + 1  # the study and best/metropolis
    parent = parents[0].info.run_id
    assert "recovery/recovery.csv" in {a.path for a in client.list_artifacts(parent, "recovery")}

    code, output = snakemake(workdir, mlflow_server, "--forcerun", "track")
    assert code == 0 and "already logged" in output, output
    _, runs = study_runs(mlflow_server)
    assert len(runs) == 1 + 1
