rule recovery:
    input:
        posteriors=posterior_files(),
        data=data_files(),
    output:
        table=report(
            RECOVERY["table"],
            caption="../report/recovery.rst",
            category="recovery",
            labels={"table": "coverage, bias, RMSE and rank uniformity"},
        ),
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
        fits=fits(),
        recovery=config["recovery"],
    log:
        "results/logs/recovery.log",
    benchmark:
        "results/benchmarks/recovery.tsv"
    conda:
        "../envs/bayeslib.yaml"
    script:
        "../scripts/recovery.py"
