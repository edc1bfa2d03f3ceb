rule simulate:
    output:
        "results/data/{scenario}.npz",
    params:
        scenario=lambda wc: SCENARIOS[wc.scenario],
        replicates=REPLICATES,
        seed=config["seed"],
    log:
        "results/logs/simulate/{scenario}.log",
    benchmark:
        "results/benchmarks/simulate/{scenario}.tsv"
    conda:
        "../envs/bayeslib.yaml"
    script:
        "../scripts/simulate.py"
