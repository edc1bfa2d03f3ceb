"""The pipeline when things go wrong: a wrong model fails the recovery check, and a sampling job
killed half-way is redone, never taken as a result."""

import json
import os
import signal
import subprocess
import time

import yaml
from snakemake_cli import run_snakemake, snakemake_command

import bayeslib as bl


def snakemake(workdir, config, *args):
    return run_snakemake(workdir, config, *args)


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
    sampler = {"name": "metropolis", "chains": 16, "warmup": 300, "draws": 200}
    config = write_config(tmp_path / "lenient.yaml", scenario, sampler, 4, strict=False)
    code, output = snakemake(tmp_path, config, "results/recovery/check.json")
    assert code == 0, output
    check = json.loads((tmp_path / "results/recovery/check.json").read_text())
    assert not check["passed"]
    assert any(
        f.startswith("wrong_prior/metropolis: 95% intervals cover mu[0] in 0/4")
        for f in check["failures"]
    )

    config = write_config(tmp_path / "strict.yaml", scenario, sampler, 4, strict=True)
    code, output = snakemake(tmp_path, config, "results/recovery/check.json")
    assert code != 0
    assert "recovery check failed: wrong_prior/metropolis" in output, output


def test_killed_sampling_job_is_redone_and_never_taken_as_a_result(tmp_path):
    scenario = {"name": "best", "model": "best"}
    # Long enough that the job is still sampling when it is killed.
    sampler = {"name": "metropolis", "chains": 8, "warmup": 6000, "draws": 2000}
    config = write_config(tmp_path / "config.yaml", scenario, sampler, 1)
    target = "results/posterior/best/0/metropolis.npz"
    log = tmp_path / "results/logs/sample/best/0/metropolis.log"
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
