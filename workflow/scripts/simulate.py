"""simulate: the scenario's replicate data sets, each with the true parameters that made it,
stacked into one file."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
import study  # noqa: E402
import torch  # noqa: E402

sm = snakemake  # noqa: F821
study.log_to(sm.log[0])
scenario, replicates = sm.params.scenario, sm.params.replicates
seeds = [
    study.derive_seed(sm.params.seed, "simulate", scenario["name"], r) for r in range(replicates)
]
simulated = [study.simulate(scenario, seed) for seed in seeds]
data = {k: torch.stack([m.data[k] for m, _ in simulated]) for k in simulated[0][0].data}
truth = {k: torch.stack([t[k] for _, t in simulated]) for k in simulated[0][1]}
meta = {"scenario": scenario["name"], "replicates": replicates, "seeds": seeds, **scenario}
study.save_dataset(sm.output[0], data, truth, meta)
print(
    f"{sm.output[0]}: {replicates} replicates, truth of replicate 0 {study.flat(simulated[0][1])}"
)
