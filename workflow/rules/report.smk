rule report:
    input:
        fits=analysis_files("fits.csv"),
    output:
        fits=REPORT["fits"],
        fits_html=report(
            REPORT["fits_html"],
            caption="../report/fits.rst",
            category="study",
            labels={"table": "every fit"},
        ),
        efficiency=report(
            REPORT["efficiency"],
            caption="../report/efficiency.rst",
            category="study",
            labels={"figure": "ESS per second"},
        ),
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        "../envs/bayeslib.yaml"
    script:
        "../scripts/report.py"
