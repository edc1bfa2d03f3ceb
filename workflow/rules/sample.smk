rule sample:
    input:
        data="results/data/{scenario}/{replicate}.npz",
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
        # Declared so that a cluster executor places the job on a GPU node.
        gpu=1 if config["device"] == "cuda" else 0,
        mem_mb=2000,
    log:
        "results/logs/sample/{scenario}/{replicate}/{sampler}.log",
    benchmark:
        "results/benchmarks/sample/{scenario}/{replicate}/{sampler}.tsv"
    conda:
        "../envs/bayeslib.yaml"
    script:
        "../scripts/sample.py"
