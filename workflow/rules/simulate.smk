rule simulate:
    output:
        expand("results/data/{{scenario}}/{replicate}.npz", replicate=REPLICATES),
    params:
        scenario=lambda wc: SCENARIOS[wc.scenario],
        seed=config["seed"],
    log:
        "results/logs/simulate/{scenario}.log",
    benchmark:
        "results/benchmarks/simulate/{scenario}.tsv"
    conda:
        "../envs/bayeslib.yaml"
    script:
        "../scripts/simulate.py"
