"""The pipeline when things go wrong: a wrong model fails the recovery check, fits that did not
converge are named and fail the verdict, a sampling job killed half-way is redone, never taken
as a result, a file changed after it was written is made again, and config mistakes stop the
run before its first job."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from snakemake_cli import ROOT, run_snakemake, snakemake_command

import bayeslib as bl

sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
import study  # noqa: E402

TEST_CONFIG = ROOT / ".test" / "config" / "config.yaml"


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


@pytest.mark.slow  # runs the real pipeline
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


@pytest.mark.slow  # runs the real pipeline
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
    assert parent.data.metrics["verdict_passed"] == 0
    assert parent.data.metrics["failed_fits"] == 3


@pytest.mark.slow  # runs the real pipeline
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


@pytest.mark.slow  # runs the real pipeline
def test_truncated_posterior_is_made_again_and_the_results_equal_the_first_run(tmp_path):
    scenario = {"name": "best", "model": "best"}
    sampler = {"name": "metropolis", "chains": 8, "warmup": 100, "draws": 100}
    config = write_config(tmp_path / "config.yaml", scenario, sampler, 4, strict=False)
    posterior = tmp_path / "results/posterior/best/metropolis.npz"
    fits = tmp_path / "results/analysis/best/metropolis/fits.csv"
    old_umask = os.umask(0o022)
    try:
        code, output = snakemake(tmp_path, config)
        assert code == 0, output
        # Every output is made with the user's umask (022 here), not mkstemp's 0600.
        for path in (posterior, fits, tmp_path / "results/recovery/check.json"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        first_draws, first_tables = bl.Posterior.load(posterior).draws, science_tables(tmp_path)
        first_digest = study.science_digest(science_files(tmp_path))

        # Half the file gone, its time kept: Snakemake alone would see nothing to do.
        times = posterior.stat()
        posterior.write_bytes(posterior.read_bytes()[: times.st_size // 2])
        os.utime(posterior, ns=(times.st_atime_ns, times.st_mtime_ns))
        code, output = snakemake(tmp_path, config)
    finally:
        os.umask(old_umask)
    assert code == 0, output
    assert f"{posterior.relative_to(tmp_path)} does not match its checksum" in output, output
    draws = bl.Posterior.load(posterior).draws
    assert all(torch.equal(draws[name], first_draws[name]) for name in first_draws)
    tables = science_tables(tmp_path)
    assert tables.keys() == first_tables.keys()
    for name, table in tables.items():
        pd.testing.assert_frame_equal(table, first_tables[name], obj=name)
    # Same draws, other job times: the same study (the identity MLflow finds its run by).
    assert study.science_digest(science_files(tmp_path)) == first_digest


def science_files(workdir):
    folders = ("data", "map", "posterior", "analysis", "recovery", "report", "plots")
    return sorted(
        path
        for folder in folders
        for path in (workdir / "results" / folder).rglob("*")
        if path.is_file() and path.suffix != ".sha256"
    )


SHORT = {"chains": 8, "warmup": 10, "draws": 10}


def science_tables(workdir):
    """Every table the analyze and recovery rules write, less the job times."""
    out = {}
    for path in sorted((workdir / "results").glob("[ar]*/**/*.csv")):
        if path.stat().st_size <= 1:  # ppc.csv without plot_replicates
            continue
        table = pd.read_csv(path)
        out[str(path.relative_to(workdir))] = table.drop(columns=table.filter(like="time").columns)
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"samplers": [METROPOLIS, {**SHORT, "name": "nuts",
                                       "options": {"target_acept": 0.9}}]},
            "samplers[nuts].options has ['target_acept'], which the nuts sampler does not take; "
            "its options are ['step_size', 'target_accept',",
        ),
        (
            {"samplers": [METROPOLIS, {**SHORT, "name": "hmc",
                                       "options": {"target_accept": 1.5}}]},
            "samplers[hmc].options: target_accept must lie in (0, 1), got 1.5",
        ),
        (
            {"new_x": [1.0, 0.5]},
            "new_x has 2 values ([1.0, 0.5]), but scenarios[linear] has 3 coefficients",
        ),
        pytest.param(
            {"device": "cuda"},
            "config: device: device='cuda' was asked for, but CUDA is not available",
            marks=pytest.mark.skipif(
                torch.cuda.is_available(), reason="checks the error on a machine without CUDA"
            ),
        ),
    ],
)  # fmt: skip
def test_config_mistakes_fail_before_the_first_job_naming_the_key(tmp_path, change, message):
    config = yaml.safe_load(TEST_CONFIG.read_text()) | change
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, output = snakemake(tmp_path, path)
    assert code != 0
    assert message in output, output
    assert not (tmp_path / "results").exists()


def test_science_digest_leaves_out_times_and_nothing_else(tmp_path, monkeypatch):
    def digest(name, shift=0.0, seed=1, ess=400.5, seconds=1.0):
        draws = {"mu": torch.arange(24.0, dtype=torch.float64).reshape(2, 6, 2) + shift}
        post = bl.Posterior(draws, attrs={"seed": seed, "sampling_time": seconds})
        fits = pd.DataFrame({"ess": [ess], "fit_time": [2 * seconds]})
        # The study's paths, relative to its folder, as the track rule hashes them.
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        study.save_posterior("posterior.npz", post)
        study.write_csv("fits.csv", fits, index=False)
        study.write_json("check.json", {"passed": True, "wall_time": 3 * seconds})
        return study.science_digest(["posterior.npz", "fits.csv", "check.json"])

    first = digest("first")
    assert digest("slower", seconds=5.0) == first
    others = [digest("draw", shift=1e-9), digest("seed", seed=2), digest("ess", ess=400.6)]
    assert len({first, *others}) == 4


def test_outputs_carry_a_checksum_that_their_readers_check(tmp_path):
    path = tmp_path / "results/posterior/best/nuts.npz"
    study.save_posterior(path, bl.Posterior({"mu": np.zeros((2, 5))}))
    # sha256sum's own format: `sha256sum -c nuts.npz.sha256` checks it in its folder.
    done = subprocess.run(
        ["sha256sum", "-c", "nuts.npz.sha256"], cwd=path.parent, capture_output=True, text=True
    )
    assert done.returncode == 0 and "nuts.npz: OK" in done.stdout, done
    assert study.load_posterior(path).shape == (2, 5)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="does not match its checksum") as error:
        study.load_posterior(path)
    assert str(path) in str(error.value) and "Run snakemake again" in str(error.value)


@pytest.mark.slow  # runs the real pipeline
def test_a_fit_made_again_with_the_same_draws_is_the_same_mlflow_run(tmp_path):
    scenario = {"name": "best", "model": "best"}
    sampler = {"name": "metropolis", "chains": 8, "warmup": 100, "draws": 100}
    config = write_config(tmp_path / "config.yaml", scenario, sampler, 4, strict=False)
    code, output = snakemake(tmp_path, config)
    assert code == 0, output
    target = "results/posterior/best/metropolis.npz"
    code, output = snakemake(tmp_path, config, "--forcerun", "sample", "--", target)
    assert code == 0, output
    code, output = snakemake(tmp_path, config)  # analyze ... track again, on the same draws
    assert code == 0 and "already logged" in output, output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name("bayeslib-recovery")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.data.tags.get("bayeslib.role") for r in runs].count("study") == 1
