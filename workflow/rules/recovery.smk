rule recovery:
    input:
        fits=analysis_files("fits.csv"),
        recovery=analysis_files("recovery.csv"),
        ranks=analysis_files("ranks.csv"),
    output:
        table=report(
            RECOVERY["table"],
            caption="../report/recovery.rst",
            category="recovery",
            labels={"table": "coverage, bias, RMSE and rank uniformity"},
        ),
        verdict=report(
            RECOVERY["verdict"],
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
