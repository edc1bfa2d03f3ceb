"""simulate: the scenario's replicate data sets, each with the true parameters that made it."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
import study  # noqa: E402

sm = snakemake  # noqa: F821
study.log_to(sm.log[0])
scenario = sm.params.scenario
for path in sm.output:
    replicate = int(path.rsplit("/", 1)[1].removesuffix(".npz"))
    seed = study.derive_seed(sm.params.seed, "simulate", scenario["name"], replicate)
    model, truth = study.simulate(scenario, seed)
    meta = {"scenario": scenario["name"], "replicate": replicate, "seed": seed, **scenario}
    study.save_dataset(path, model, truth, meta)
    print(f"{path}: seed {seed}, truth {study.flat(truth)}")
