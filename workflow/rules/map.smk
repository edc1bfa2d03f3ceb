rule map:
    input:
        expand("results/data/{{scenario}}/{replicate}.npz", replicate=REPLICATES),
    output:
        expand("results/map/{{scenario}}/{replicate}.json", replicate=REPLICATES),
    params:
        scenario=lambda wc: SCENARIOS[wc.scenario],
        seed=config["seed"],
    log:
        "results/logs/map/{scenario}.log",
    benchmark:
        "results/benchmarks/map/{scenario}.tsv"
    conda:
        "../envs/bayeslib.yaml"
    script:
        "../scripts/map.py"
