"""The pipeline when things go wrong: a wrong model fails the recovery check, fits that did not
converge are named and fail the verdict, and a sampling job killed half-way is redone, never
taken as a result."""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml
from snakemake_cli import run_snakemake, snakemake_command

import bayeslib as bl

pytestmark = pytest.mark.slow  # runs the real pipeline / server / scripts


def snakemake(workdir, config, *args):
    return run_snakemake(workdir, config, *args)


# As the default study: a total ESS near 2,000 per fit, so that every fit passes its checks
# (at an ESS of 1,000, nested R-hat passes 1.01 by chance in about one parameter in 500).
METROPOLIS = {"name": "metropolis", "chains": 16, "warmup": 300, "draws": 500, "thin": 5}


def write_config(path, scenario, sampler, replicates, strict=True):
    config = {
        "seed": 7,
        "replicates": replicates,
        "scenarios": [scenario],
        "samplers": [sampler],
        "plot_replicates": 0,
        "recovery": {"strict": strict, "rank_draws": 15, "rank_bins": 4},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_recovery_check_fails_when_the_fitted_model_is_wrong(tmp_path):
    # The data come from mu = (0.3, 0); the fitted prior mu ~ Normal(0, 0.01) pins mu near 0,
    # so the intervals of mu[0] miss its truth in every replicate.
    scenario = {"name": "wrong_prior", "model": "best", "fit_prior_scale": 0.01}
    config = write_config(tmp_path / "lenient.yaml", scenario, METROPOLIS, 8, strict=False)
    code, output = snakemake(tmp_path, config, "results/recovery/check.json")
    assert code == 0, output
    check = json.loads((tmp_path / "results/recovery/check.json").read_text())
    assert check["passed"] is False and check["failed_fits"] == []
    assert any(
        f.startswith("wrong_prior/metropolis: 95% intervals cover mu[0] in 0.0% of 8 replicates")
        for f in check["failures"]
    )

    # The whole study, as a user runs it: non-zero exit, the verdict table last.
    config = write_config(tmp_path / "strict.yaml", scenario, METROPOLIS, 8, strict=True)
    code, output = snakemake(tmp_path, config)
    assert code != 0
    assert "recovery check failed: wrong_prior/metropolis" in output, output
    assert json.loads((tmp_path / "results/recovery/check.json").read_text())["passed"] is False
    tail = output[output.rindex("Recovery verdict") :]
    assert "wrong_prior/metropolis" in tail and "FAILED" in tail


def test_fits_that_did_not_converge_are_named_and_fail_the_verdict(tmp_path):
    # Far too few iterations for 16 chains to reach 400 effective draws: every fit fails its
    # checks, is named with its reason, and is left out of coverage.
    scenario = {"name": "short", "model": "best"}
    sampler = {"name": "metropolis", "chains": 16, "warmup": 50, "draws": 20}
    config = write_config(tmp_path / "config.yaml", scenario, sampler, 3, strict=False)
    code, output = snakemake(tmp_path, config)
    assert code == 0, output
    check = json.loads((tmp_path / "results/recovery/check.json").read_text())
    assert check["passed"] is False
    assert [(f["scenario"], f["replicate"], f["sampler"]) for f in check["failed_fits"]] == [
        ("short", r, "metropolis") for r in range(3)
    ]
    assert all("ess_bulk" in f["reason"] for f in check["failed_fits"])
    assert any("3 of 3 fits failed their convergence checks" in f for f in check["failures"])
    assert "failed fit: short/0/metropolis" in output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name("bayeslib-recovery")
    parent = next(
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("bayeslib.role") == "study"
    )
    assert parent.data.metrics["recovery.passed"] == 0
    assert parent.data.metrics["recovery.failed_fits"] == 3


def test_killed_sampling_job_is_redone_and_never_taken_as_a_result(tmp_path):
    scenario = {"name": "best", "model": "best"}
    # Long enough that the job is still sampling when it is killed.
    sampler = {"name": "metropolis", "chains": 8, "warmup": 6000, "draws": 2000}
    config = write_config(tmp_path / "config.yaml", scenario, sampler, 1)
    target = "results/posterior/best/metropolis.npz"
    log = tmp_path / "results/logs/sample/best/metropolis.log"
    process = subprocess.Popen(
        snakemake_command(tmp_path, config, target),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while not log.exists() and process.poll() is None:
            time.sleep(0.2)
        assert process.poll() is None, "snakemake ended before the sample job started"
        time.sleep(1.0)  # let the job get into its sampling loop
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    posterior = tmp_path / target
    # Snakemake itself was killed too, so its lock on the folder is stale.
    code, output = snakemake(tmp_path, config, "--unlock")
    assert code == 0, output
    if posterior.exists():
        # Snakemake only keeps a file it has not seen finished as incomplete: it is redone.
        code, output = snakemake(tmp_path, config, target, "-n", "--rerun-incomplete")
        assert "incomplete" in output.lower(), output

    code, output = snakemake(tmp_path, config, target)
    assert code == 0, output
    post = bl.Posterior.load(posterior)
    assert post.shape == (8, 2000)
    assert not list(posterior.parent.glob(".*.tmp"))
