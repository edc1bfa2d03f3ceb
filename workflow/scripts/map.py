"""map: the posterior mode of each of the scenario's data sets, and the Laplace approximation's
covariance there, found for all replicates at once."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
import study  # noqa: E402
import torch  # noqa: E402

import bayeslib as bl  # noqa: E402

sm = snakemake  # noqa: F821
study.log_to(sm.log[0])
torch.set_num_threads(1)
scenario = sm.params.scenario
data, truth, meta = study.load_dataset(sm.input[0])
stacked = study.fitted_stack(scenario, data)
seed = study.derive_seed(sm.params.seed, "map", scenario["name"])
modes = bl.find_map(stacked, seed=seed)
study.save_modes(sm.output[0], modes)
converged = sum(m.converged for m in modes)
curvature = sum(m.covariance is not None for m in modes)
print(
    f"{sm.output[0]}: {converged}/{len(modes)} modes converged, {curvature} with usable curvature"
)
first_truth = study.flat({k: v[0] for k, v in truth.items()})
print(f"replicate 0: {study.flat(modes[0].params)} (truth {first_truth})")
