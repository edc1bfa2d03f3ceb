rule sample:
    input:
        data="results/data/{scenario}/{replicate}.npz",
        map="results/map/{scenario}/{replicate}.json",
    output:
        "results/posterior/{scenario}/{replicate}/{sampler}.npz",
    params:
        scenario=lambda wc: SCENARIOS[wc.scenario],
        sampler=lambda wc: SAMPLERS[wc.sampler],
        seed=config["seed"],
        device=config["device"],
        dtype=config["dtype"],
        init=config["init"],
    threads: 1
    resources:
        mem_mb=2000,
        **GPU_RESOURCES,
    log:
        "results/logs/sample/{scenario}/{replicate}/{sampler}.log",
    benchmark:
        "results/benchmarks/sample/{scenario}/{replicate}/{sampler}.tsv"
    conda:
        "../envs/bayeslib.yaml"
    script:
        "../scripts/sample.py"
