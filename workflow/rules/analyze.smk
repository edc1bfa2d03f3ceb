rule analyze:
    input:
        posterior="results/posterior/{scenario}/{sampler}.npz",
        data="results/data/{scenario}.npz",
        map="results/map/{scenario}.npz",
    output:
        summary="results/analysis/{scenario}/{sampler}/summary.csv",
        summary_html=report(
            "results/analysis/{scenario}/{sampler}/summary.html",
            caption="../report/summary.rst",
            category="{scenario}",
            subcategory="{sampler}",
            labels={"table": "posterior summary"},
        ),
        fits="results/analysis/{scenario}/{sampler}/fits.csv",
        ppc="results/analysis/{scenario}/{sampler}/ppc.csv",
        recovery="results/analysis/{scenario}/{sampler}/recovery.csv",
        ranks="results/analysis/{scenario}/{sampler}/ranks.csv",
        plots=plot_outputs(),
    params:
        scenario=lambda wc: SCENARIOS[wc.scenario],
        prob=config["prob"],
        new_x=config["new_x"],
        plot_replicates=len(PLOT_REPLICATES),
        recovery=config["recovery"],
    log:
        "results/logs/analyze/{scenario}/{sampler}.log",
    benchmark:
        "results/benchmarks/analyze/{scenario}/{sampler}.tsv"
    conda:
        "../envs/bayeslib.yaml"
    script:
        "../scripts/analyze.py"
