rule sample:
    input:
        data="results/data/{scenario}.npz",
        map="results/map/{scenario}.npz",
    output:
        "results/posterior/{scenario}/{sampler}.npz",
    params:
        scenario=lambda wc: SCENARIOS[wc.scenario],
        sampler=lambda wc: SAMPLERS[wc.sampler],
        seed=config["seed"],
        device=config["device"],
        dtype=config["dtype"],
        init=config["init"],
    threads: 1
    resources:
        mem_mb=4000,
        **GPU_RESOURCES,
    log:
        "results/logs/sample/{scenario}/{sampler}.log",
    benchmark:
        "results/benchmarks/sample/{scenario}/{sampler}.tsv"
    conda:
        "../envs/bayeslib.yaml"
    script:
        "../scripts/sample.py"
