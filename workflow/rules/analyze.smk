rule analyze:
    input:
        posteriors=lambda wc: posterior_files(wc.scenario, wc.sampler),
        data=lambda wc: data_files(wc.scenario),
        map=lambda wc: map_files(wc.scenario),
    output:
        summary=report(
            "results/analysis/{scenario}/{sampler}/summary.csv",
            caption="../report/summary.rst",
            category="{scenario}",
            subcategory="{sampler}",
            labels={"table": "posterior summary"},
        ),
        fits="results/analysis/{scenario}/{sampler}/fits.csv",
        ppc="results/analysis/{scenario}/{sampler}/ppc.csv",
        plots=plot_outputs(),
    params:
        scenario=lambda wc: SCENARIOS[wc.scenario],
        prob=config["prob"],
        new_x=config["new_x"],
        plot_replicates=len(PLOT_REPLICATES),
    log:
        "results/logs/analyze/{scenario}/{sampler}.log",
    benchmark:
        "results/benchmarks/analyze/{scenario}/{sampler}.tsv"
    conda:
        "../envs/bayeslib.yaml"
    script:
        "../scripts/analyze.py"
