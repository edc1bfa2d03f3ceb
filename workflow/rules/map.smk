rule map:
    input:
        "results/data/{scenario}.npz",
    output:
        "results/map/{scenario}.npz",
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
