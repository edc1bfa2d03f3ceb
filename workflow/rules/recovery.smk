rule recovery:
    input:
        fits=analysis_files("fits.csv"),
        recovery=analysis_files("recovery.csv"),
        ranks=analysis_files("ranks.csv"),
    output:
        table=RECOVERY["table"],
        table_html=report(
            RECOVERY["table_html"],
            caption="../report/recovery.rst",
            category="recovery",
            labels={"table": "coverage, bias, RMSE and rank uniformity"},
        ),
        verdict=RECOVERY["verdict"],
        verdict_html=report(
            RECOVERY["verdict_html"],
            caption="../report/verdict.rst",
            category="recovery",
            labels={"table": "verdict"},
        ),
        text=RECOVERY["text"],
        ranks=RECOVERY["ranks"],
        check=RECOVERY["check"],
        coverage_plot=report(
            RECOVERY["coverage_plot"],
            caption="../report/coverage.rst",
            category="recovery",
            labels={"figure": "coverage"},
        ),
        rank_plot=report(
            RECOVERY["rank_plot"],
            caption="../report/ranks.rst",
            category="recovery",
            labels={"figure": "rank histograms"},
        ),
    params:
        recovery=config["recovery"],
    log:
        "results/logs/recovery.log",
    benchmark:
        "results/benchmarks/recovery.tsv"
    conda:
        "../envs/bayeslib.yaml"
    script:
        "../scripts/recovery.py"


# The verdict as the run's exit status: after the study is tracked (so MLflow records a failed
# verdict too), fail the run when the verdict failed and recovery.strict is set.
localrules:
    gate,


rule gate:
    input:
        check=RECOVERY["check"],
        tracked="results/mlflow/study.logged.json",
    output:
        "results/recovery/gate.json",
    run:
        import json

        check = json.loads(Path(input.check).read_text())
        if check["strict"] and not check["passed"]:
            raise WorkflowError(
                f"recovery: {len(check['failures'])} check(s) failed, "
                f"{len(check['failed_fits'])} fit(s) failed their convergence checks (listed "
                "above and in results/recovery/check.json); set recovery.strict: false to "
                "record a failed verdict without failing the run"
            )
        Path(output[0]).write_text(json.dumps({"passed": check["passed"]}) + "\n")
