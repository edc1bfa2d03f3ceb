# `snakemake --cores 8 reproduce` runs the study again from clean in results/reproduce/run and
# compares every number with results/; `--forcerun compare` repeats it (e.g. from cron).
localrules:
    compare,


rule compare:
    input:
        science_files(),
    output:
        "results/reproduce/verdict.json",
    params:
        config=config,
        snakefile=workflow.main_snakefile,
        science=science_files(),
    threads: lambda wildcards: workflow.cores
    log:
        "results/logs/compare.log",
    conda:
        "../envs/bayeslib.yaml"
    benchmark:
        "results/benchmarks/compare.tsv"
    script:
        "../scripts/compare.py"


rule reproduce:
    input:
        "results/mlflow/reproduce.logged.json",
