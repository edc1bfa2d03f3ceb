# The recovery study: `snakemake --cores 8` runs it on config/config.yaml (see workflow/README.md).

import os

from snakemake.utils import min_version

min_version("9.0")

# Sampling jobs allocate and free tensors of megabytes thousands of times a second; glibc's
# defaults hand that memory back to the system each time and fault it in again, which took
# half of a job's time (sys time 50 s of 100 s for NUTS on 200 linear data sets; 0.4 s with
# these). Jobs inherit them; a value set by the user wins.
for _setting in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
    os.environ.setdefault(_setting, str(2**30))


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


report: report_description("workflow/report/workflow.rst")

include: "workflow/rules/simulate.smk"
include: "workflow/rules/map.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/analyze.smk"
include: "workflow/rules/recovery.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/reproduce.smk"


rule all:
    default_target: True
    input:
        science_files(),
        "results/mlflow/study.logged.json",
        "results/recovery/gate.json",


rule science:
    input:
        science_files(),


def print_verdict():
    """The study's verdict table and where to look next, as the last lines of the run."""
    import json
    from pathlib import Path

    from uris import redact

    verdict = Path(RECOVERY["text"])
    if not verdict.exists():
        return
    print("\nRecovery verdict (results/recovery/check.json):\n" + verdict.read_text())
    print(
        "Next: snakemake --report results/report.html   (the report, verdict first)\n"
        f"      mlflow ui --backend-store-uri {redact(config['tracking']['uri'])}"
    )
    logged = Path("results/mlflow/study.logged.json")
    if logged.exists():
        experiment = json.loads(logged.read_text())["experiment_id"]
        print(
            "      then open http://127.0.0.1:5000/#/experiments/"
            f"{experiment}?workflowType=machine_learning   (the study's runs)"
        )
    print("Results: results/recovery (verdict, coverage), results/analysis, results/plots")


onstart:
    check_device()


onsuccess:
    print_verdict()


onerror:
    print_verdict()
