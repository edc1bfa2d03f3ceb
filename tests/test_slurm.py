"""The study on a real one-node SLURM cluster (scripts/slurm), run through profiles/slurm."""

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import chdir

import pytest
import yaml
from filelock import FileLock
from snakemake_cli import ROOT, run_snakemake
from test_pipeline import ANALYSES, PLANNED_JOBS, TEST_CONFIG, mlflow_runs, study  # noqa: F401

pytestmark = pytest.mark.slow  # starts SLURM's daemons and runs the study on them

SLURM = ROOT / "scripts" / "slurm"
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
import checksums  # noqa: E402
import study as study_script  # noqa: E402

# The profile as a user runs it, told to ask for job states often (the tiny study's jobs take
# seconds; the plugin waits 40 s by default) and from slurmctld (this cluster has no accounting
# database for sacct; it keeps ended jobs for an hour, MinJobAge).
PROFILE = (
    "--profile",
    str(ROOT / "profiles" / "slurm"),
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "1",
)
LOCAL_RULES = {"track", "gate", "all"}
GPU = {"device": "cuda"}
# The sample job the tests cancel, and send to the GPU partition: its SLURM comment, its log.
SAMPLE = "rule_sample_wildcards_best_nuts"
SAMPLE_LOG = "results/logs/sample/best/nuts.log"


def slurm_jobs():
    """{job id: {field: value}} of every job slurmctld knows of, ended ones included
    (`scontrol show job`: JobName, Comment, JobState, Partition, TresPerJob, ...)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True, check=True
    ).stdout
    jobs = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines()]
    return {job["JobId"]: job for job in jobs if "JobId" in job}


def run_uuid(output):
    """The SLURM run ID snakemake printed: the name of every job it submitted."""
    return output.split("SLURM run ID: ", 1)[1].split()[0]


def jobs_of(output):
    """The scheduler's records of the jobs one snakemake run submitted."""
    name = run_uuid(output)
    return {i: job for i, job in slurm_jobs().items() if job["JobName"] == name}


def cancel_mid_sample(workdir):
    """[job id] of the study's sample job (SAMPLE, run in `workdir`) cancelled with scancel
    once it runs and its script has opened its log (so mid-sample, not queued). The GPU run's
    sample job has the same name and runs beside it, in another folder: it is left alone."""
    log = workdir / SAMPLE_LOG
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        running = [
            i
            for i, job in slurm_jobs().items()
            if job.get("Comment") == SAMPLE
            and job.get("WorkDir") == str(workdir)
            and job["JobState"] == "RUNNING"
        ]
        if running and log.exists():
            subprocess.run(["scancel", running[0]], check=True)
            return running[:1]
        time.sleep(0.2)
    return []


def run_on_cluster(workdir, *args, config=TEST_CONFIG):
    """What a snakemake run on the cluster printed and took, and the jobs it submitted."""
    start = time.monotonic()
    code, output = run_snakemake(workdir, config, *PROFILE, *args, timeout=900)
    seconds = time.monotonic() - start
    jobs = jobs_of(output) if "SLURM run ID: " in output else {}
    return {"code": code, "output": output, "seconds": seconds, "jobs": jobs}


def science(workdir):
    """{science file: its identity}: study.science_digest, every number and text of the file
    but job times, for each checksummed file under results/ (MLflow's store left out)."""
    paths = sorted(
        str(side.relative_to(workdir)).removesuffix(checksums.SUFFIX)
        for side in (workdir / "results").rglob(f"*{checksums.SUFFIX}")
        if "mlflow" not in side.parts
    )
    with chdir(workdir):
        return {path: study_script.science_digest([path]) for path in paths}


def half_written(workdir):
    """Files under results/ that are not whole: checksum mismatches and leftover temp files."""
    temps = [p for p in (workdir / "results").rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    return checksums.mismatched(workdir / "results") + temps


def cluster_runs(workdir, local_study):
    """The runs the tests check, side by side on one cluster started and stopped here: the
    study, one of its sample jobs cancelled by the scheduler mid-sample; and, on a copy of the
    local study with device: cuda, a sample job that asks for a GPU and fails on the GPU-less
    node every time."""
    state = workdir / "slurm"
    subprocess.run(["bash", SLURM / "install.sh"], check=True)
    subprocess.run(["bash", SLURM / "start.sh", state], check=True)
    try:
        study_dir = workdir / "study"
        study_dir.mkdir()
        gpu = workdir / "gpu"
        shutil.copytree(local_study, gpu, symlinks=True)
        config = gpu / "config.yaml"
        config.write_text(
            yaml.safe_dump(yaml.safe_load(TEST_CONFIG.read_text()) | GPU, sort_keys=False)
        )
        with ThreadPoolExecutor() as pool:
            cancelled = pool.submit(cancel_mid_sample, study_dir)
            study_run = pool.submit(run_on_cluster, study_dir)
            gpu_run = pool.submit(
                run_on_cluster,
                gpu,
                "results/posterior/best/nuts.npz",
                "--set-resources",
                "sample:slurm_partition=gpu",
                config=config,
            )
        return {
            "study": study_run.result() | {"cancelled": cancelled.result()},
            "gpu": gpu_run.result(),
        }
    finally:
        subprocess.run(["bash", SLURM / "stop.sh", state], check=True)
        # Without cgroups (a container), the step of a cancelled job can outlive the job, as
        # a waiting Snakemake: end whatever the jobs left running in this folder.
        subprocess.run(["pkill", "-KILL", "-f", str(workdir)], check=False)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, study):  # noqa: F811
    """(folder of the runs, the runs) of `cluster_runs`, made once for all pytest-xdist
    workers: there is one cluster a machine (its daemons take fixed ports)."""
    if os.geteuid() != 0:
        pytest.skip("starting SLURM's daemons needs root (CI runs the tests as root)")
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this session's, common to its workers
    workdir = shared / "slurm-study"
    done = shared / "slurm-study.json"
    with FileLock(str(shared / "slurm-study.lock")):
        if not done.exists():
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir()
            done.write_text(json.dumps(cluster_runs(workdir, study)))
    return workdir, json.loads(done.read_text())


def test_every_job_but_the_local_ones_is_submitted_with_sbatch(cluster):
    _, runs = cluster
    run = runs["study"]
    assert run["code"] == 0, run["output"]
    completed = Counter(
        job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        for job in run["jobs"].values()
        if job["JobState"] == "COMPLETED"
    )
    assert completed == {r: n for r, n in PLANNED_JOBS.items() if r not in LOCAL_RULES}
    assert {job["Partition"] for job in run["jobs"].values()} == {"cpu"}
    for rule in LOCAL_RULES - {"all"}:
        assert f"localrule {rule}:" in run["output"]
    print(f"the tiny study on the test cluster: {run['seconds']:.0f} s")


def test_sample_job_cancelled_by_the_scheduler_is_retried_with_nothing_half_written(cluster):
    workdir, runs = cluster
    run = runs["study"]
    [cancelled] = run["cancelled"]
    sample = {i: job for i, job in run["jobs"].items() if job["Comment"] == SAMPLE}
    assert sample[cancelled]["JobState"] == "CANCELLED"
    assert sorted(job["JobState"] for job in sample.values()) == ["CANCELLED", "COMPLETED"]
    assert f"SLURM-job '{cancelled}' failed, SLURM status is: 'CANCELLED'" in run["output"]
    assert "Trying to restart job" in run["output"]
    assert half_written(workdir / "study") == []


def test_study_on_slurm_equals_the_local_study(cluster, study):  # noqa: F811
    workdir, _ = cluster
    on_cluster = science(workdir / "study")
    assert len(on_cluster) > 40 and any(path.endswith(".npz") for path in on_cluster)
    assert on_cluster == science(study)


def test_mlflow_holds_one_study(cluster):
    workdir, _ = cluster
    _, logged = mlflow_runs(workdir / "study")
    parents = [r for r in logged if r.data.tags.get("bayeslib.role") == "study"]
    assert len(parents) == 1 and len(logged) == 1 + len(ANALYSES)
    assert parents[0].data.tags["bayeslib.complete"] == "true"


def test_gpu_job_asks_slurm_for_a_gpu_and_a_job_failing_every_time_stops_the_study(cluster):
    workdir, runs = cluster
    run = runs["gpu"]
    # Submitted to the GPU partition asking for one GPU; the node has none, so the job fails,
    # its retry fails too, and the study stops, naming the job's logs.
    assert len(run["jobs"]) == 2
    assert {
        (job["Comment"], job["Partition"], job["TresPerJob"], job["JobState"])
        for job in run["jobs"].values()
    } == {(SAMPLE, "gpu", "gres:gpu:1", "FAILED")}
    assert run["code"] != 0
    output = run["output"]
    assert "CUDA is not available" in output
    assert SAMPLE_LOG in output
    for job_id in run["jobs"]:
        assert f"slurm_logs/rule_sample/best_nuts/{job_id}.log" in output
    gpu = workdir / "gpu"
    assert not (gpu / "results/posterior/best/nuts.npz").exists()
    assert half_written(gpu) == []
