# The recovery study: `snakemake --cores 8` runs it on config/config.yaml (see workflow/README.md).

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
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


rule science:
    input:
        science_files(),
