"""The Snakemake pipeline, run for real through its command line on the tiny test config."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from browser import chromium, wait_for
from filelock import FileLock
from snakemake_cli import ROOT, run_snakemake

import bayeslib as bl

pytestmark = pytest.mark.slow  # runs the real pipeline / server / scripts

TEST_CONFIG = ROOT / ".test" / "config" / "config.yaml"
# The test config's jobs: best with both samplers, linear with Metropolis only; each job fits
# every one of the 24 replicates.
ANALYSES = [("best", "metropolis"), ("best", "nuts"), ("linear", "metropolis")]
REPLICATES = 24
PLANNED_JOBS = {
    "simulate": 2,
    "map": 2,
    "sample": 3,
    "analyze": 3,
    "recovery": 1,
    "report": 1,
    "track": 1,
    "gate": 1,
    "all": 1,
}


def snakemake(workdir, *args, config=TEST_CONFIG, env=None, timeout=600):
    return run_snakemake(workdir, config, *args, env=env, timeout=timeout)


def planned_jobs(output):
    """{rule: count} from the job table snakemake prints for a run or dry run."""
    lines = output[output.index("Job stats:") :].splitlines()[3:]
    jobs = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


def mlflow_runs(workdir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/results/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name("bayeslib-recovery")
    return client, client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """One tiny study, run once for all pytest-xdist workers; tests that change it copy it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return run_study(tmp_path_factory.mktemp("study"))
    shared = tmp_path_factory.getbasetemp().parent  # this session's, common to its workers
    workdir = shared / "pipeline-study"
    with FileLock(str(shared / "pipeline-study.lock")):
        if not (shared / "pipeline-study.done").exists():
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir()
            run_study(workdir)
            (shared / "pipeline-study.done").touch()
    return workdir


def run_study(workdir):
    code, output = snakemake(workdir)
    assert code == 0, output
    assert planned_jobs(output) == PLANNED_JOBS
    (workdir / "output.txt").write_text(output)
    return workdir


def copy_of(study, tmp_path):
    workdir = tmp_path / "study"
    shutil.copytree(study, workdir, symlinks=True)
    return workdir


def test_every_output_exists_and_is_valid(study):
    code, output = snakemake(study, "--summary")
    assert code == 0, output
    rows = [line.split("\t") for line in output.splitlines() if line.startswith("results/")]
    outputs = [Path(study, row[0]) for row in rows]
    assert len(outputs) > 40
    for path in outputs:
        assert path.is_file() and path.stat().st_size > 0, path
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            assert len(pd.read_csv(path)) > 0, path
    for scenario, sampler in ANALYSES:
        post = bl.Posterior.load(study / f"results/posterior/{scenario}/{sampler}.npz")
        assert post.attrs["scenario"] == scenario and post.attrs["device"] == "cpu"
        assert post.datasets == REPLICATES and post.attrs["superchains"] == 4
        assert post.warmup is None  # the study keeps the draws only
    fits = pd.read_csv(study / "results/report/fits.csv")
    assert len(fits) == len(ANALYSES) * REPLICATES
    assert fits["passed"].all() and (fits["rhat_kind"] == "nested").all()
    best = fits[fits.scenario == "best"]
    assert best["p_difference_below_0"].between(0, 1).all()
    assert (best["difference_low"] < best["difference_high"]).all()
    # The prediction at new_x is made for the plotted replicates (plot_replicates: 1).
    linear = fits[fits.scenario == "linear"].dropna(subset=["y_new_mean"])
    assert len(linear) == 1
    assert (linear["y_new_low"] < linear["y_new_mean"]).all()
    assert (linear["y_new_mean"] < linear["y_new_high"]).all()
    recovery = pd.read_csv(study / "results/recovery/recovery.csv")
    assert len(recovery) == 2 * 4 + 4  # best: 2 samplers x 4 parameters; linear: 4 parameters
    assert (recovery["replicates"] == REPLICATES).all()
    check = json.loads((study / "results/recovery/check.json").read_text())
    assert check["passed"] is True and check["failed_fits"] == []
    assert check["replicates"] == {"best": REPLICATES, "linear": REPLICATES}
    assert set(check["power"]) == {"best", "linear"}
    assert set(check["power"]["best"]) == {"metropolis", "nuts"}
    assert 0 < check["power"]["linear"]["metropolis"] < 1
    verdict = pd.read_csv(study / "results/recovery/verdict.csv")
    assert len(verdict) == len(ANALYSES) and verdict["passed"].all()
    assert {"s", "max_rss"} <= set(
        pd.read_csv(study / "results/benchmarks/sample/best/nuts.tsv", sep="\t").columns
    )


def test_console_ends_with_the_verdict_and_where_to_look_next(study):
    output = (study / "output.txt").read_text()
    tail = output[output.rindex("Recovery verdict") :]
    for scenario, sampler in ANALYSES:
        assert f"{scenario}/{sampler}" in tail
    assert "passed" in tail and "FAILED" not in tail
    assert "snakemake --report results/report.html" in tail and "mlflow ui" in tail
    # Healthy fits: nothing flagged.
    assert "failed fit" not in output and "recovery check failed" not in output


def test_mlflow_holds_one_parent_run_with_a_nested_run_per_scenario_and_sampler(study):
    client, runs = mlflow_runs(study)
    parents = [r for r in runs if r.data.tags.get("bayeslib.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == len(ANALYSES)
    parent = parents[0]
    assert parent.data.tags["bayeslib.complete"] == "true"
    assert parent.data.tags["device"] == "cpu"
    assert parent.data.tags["version.torch"]
    assert parent.data.params["samplers.nuts.chains"] == "8"
    assert parent.data.metrics["verdict_passed"] == 1
    assert parent.data.metrics["failed_fits"] == 0
    assert "recovery.best.nuts.mu_0.coverage_0.95" in parent.data.metrics
    assert 0 < parent.data.metrics["verdict.best.nuts.power"] < 1
    assert parent.data.metrics["benchmark.sample.s"] > 0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "recovery")}
    assert {"recovery/recovery.csv", "recovery/ranks.png", "recovery/verdict.csv"} <= artifacts
    assert "verdict_table.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    # Artifacts live inside the project, not in ./mlruns of the working directory.
    assert parent.info.artifact_uri.startswith((study / "results/mlflow/artifacts").as_uri())
    assert not (study / "mlruns").exists()
    names = {r.data.tags["mlflow.runName"]: r for r in children}
    assert set(names) == {f"{s}/{m}" for s, m in ANALYSES}
    child = names["best/nuts"]
    assert child.data.params["sampler"] == "nuts"
    assert child.data.params["replicates"] == str(REPLICATES)
    assert child.data.metrics["fits"] == REPLICATES and child.data.metrics["failed_fits"] == 0
    assert {"max_rhat", "ess_bulk_min", "ess_tail_min", "mu_0.coverage_0.95"} <= set(
        child.data.metrics
    )
    tables = {a.path for a in client.list_artifacts(child.info.run_id, "tables")}
    assert "tables/fits.csv" in tables
    plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots/0")}
    assert "plots/0/forest.png" in plots


def test_second_invocation_does_nothing_and_tracking_never_duplicates(study, tmp_path):
    study = copy_of(study, tmp_path)
    code, output = snakemake(study, "-n")
    assert code == 0 and "Nothing to be done" in output, output
    code, output = snakemake(study, "--forcerun", "track")
    assert code == 0 and "already logged" in output, output
    _, runs = mlflow_runs(study)
    assert len(runs) == 1 + len(ANALYSES)


def test_report_leads_with_the_verdict_and_shows_its_tables_in_the_page(study, tmp_path):
    """The report in a real browser: its first page leads with the verdict table, beside (not
    under) the workflow graph, and a table result opens in the page."""
    from selenium.webdriver.common.by import By

    study = copy_of(study, tmp_path)
    code, output = snakemake(study, "--report", "results/report.html")
    assert code == 0, output
    report = study / "results/report.html"
    assert report.read_text().lstrip().lower().startswith("<!doctype html")
    with chromium() as page:
        page.get(report.as_uri())
        heading = wait_for(page, lambda d: d.find_element(By.CSS_SELECTOR, ".prose h1"))
        assert heading.text == "Recovery verdict: passed"
        rows = [
            r.text.split() for r in page.find_elements(By.CSS_SELECTOR, "table.verdict tbody tr")
        ]
        assert [r[:2] for r in rows] == [[f"{s}/{m}", "passed"] for s, m in ANALYSES]
        graph = wait_for(page, lambda d: d.find_element(By.CSS_SELECTOR, "#rulegraph canvas"))
        table = page.find_element(By.CSS_SELECTOR, "table.verdict").rect
        assert table["x"] + table["width"] <= graph.rect["x"]

        page.find_element(By.XPATH, "//*[normalize-space(text())='recovery']").click()
        row = wait_for(page, lambda d: d.find_element(By.XPATH, "//td[.='verdict']/.."))
        row.find_element(By.CSS_SELECTOR, "a[iconname='eye']").click()
        page.switch_to.frame(wait_for(page, lambda d: d.find_element(By.TAG_NAME, "iframe")))
        samplers = page.find_elements(By.CSS_SELECTOR, "tbody td:nth-child(2)")
        assert [cell.text for cell in samplers] == [sampler for _, sampler in ANALYSES]


def test_reproduce_reruns_from_clean_and_finds_identical_numbers(study, tmp_path):
    workdir = copy_of(study, tmp_path)
    code, output = snakemake(workdir, "reproduce")
    assert code == 0, output
    verdict = json.loads((workdir / "results/reproduce/verdict.json").read_text())
    assert verdict["mode"] == "identical" and verdict["identical"] and verdict["passed"]
    assert verdict["numbers_compared"] > 1000 and verdict["numbers_different"] == 0
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert verdict["commit"].removesuffix("+changes") == head
    assert f"Reproduce verdict: passed (identical; 0 of {verdict['numbers_compared']}" in output
    code, output = snakemake(workdir, "--report", "results/report.html")
    assert code == 0, output
    first_page = (workdir / "results/report.html").read_text()
    assert "Reproduce verdict: <strong>passed</strong> (identical;" in first_page
    client, runs = mlflow_runs(workdir)
    parent = next(r for r in runs if r.data.tags.get("bayeslib.role") == "study")
    assert parent.data.metrics["reproduce.passed"] == 1
    assert len(runs) == 1 + len(ANALYSES)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"samplers": [{"name": "gibbs", "chains": 4, "warmup": 10, "draws": 10}]}, "gibbs"),
        ({"samplers": [{"name": "nuts", "chains": 0, "warmup": 10, "draws": 10}]}, "chains"),
        ({"scenarios": [{"name": "best", "model": "best", "n1": -5}]}, "n1"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_invalid_config_fails_before_any_job_naming_the_key(tmp_path, change, key):
    config = yaml.safe_load(TEST_CONFIG.read_text()) | change
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, output = snakemake(tmp_path, config=path)
    assert code != 0
    assert "Error validating config file" in output and key in output, output
    assert not (tmp_path / "results").exists()


def test_profiles_parse_and_plan_the_study(tmp_path):
    for name in ("default", "slurm"):
        profile = yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())
        assert isinstance(profile, dict) and profile
    slurm = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert slurm["executor"] == "slurm" and "slurm_partition" in slurm["default-resources"]
    code, output = snakemake(tmp_path, "-n")
    assert code == 0, output
    assert planned_jobs(output) == PLANNED_JOBS
    # With the SLURM profile (its executor plugin is in the workflow extra), the same plan.
    code, output = snakemake(tmp_path, "-n", "--profile", str(ROOT / "profiles/slurm"))
    assert code == 0, output
    assert planned_jobs(output) == PLANNED_JOBS


def test_default_study_plans_every_fit():
    code, output = snakemake(ROOT, "-n", "--forceall", config=ROOT / "config/config.yaml")
    assert code == 0, output
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    scenarios = len(config["scenarios"])
    assert config["replicates"] >= 500
    jobs = planned_jobs(output)
    assert jobs["sample"] == scenarios * len(config["samplers"])
    assert jobs["simulate"] == jobs["map"] == scenarios
    assert jobs["analyze"] == scenarios * len(config["samplers"])
