# The only rule that writes to MLflow; it runs on the submitting machine, which reaches the server.
localrules:
    track,


rule track:
    input:
        unpack(track_inputs),
    output:
        "results/mlflow/{target}.logged.json",
    wildcard_constraints:
        target="study|reproduce",
    params:
        config=config,
        analyses=analyses(),
        plot_replicates=len(PLOT_REPLICATES),
        workdir=workflow.basedir,
    log:
        "results/logs/track/{target}.log",
    conda:
        "../envs/bayeslib.yaml"
    benchmark:
        "results/benchmarks/track/{target}.tsv"
    script:
        "../scripts/track.py"
