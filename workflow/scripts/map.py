"""map: the posterior mode of each of the scenario's data sets."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
import study  # noqa: E402

import bayeslib as bl  # noqa: E402

sm = snakemake  # noqa: F821
study.log_to(sm.log[0])
scenario = sm.params.scenario
for data_path, path in zip(sm.input, sm.output, strict=True):
    data, truth, meta = study.load_dataset(data_path)
    model = study.fitted_model(scenario, data)
    seed = study.derive_seed(sm.params.seed, "map", scenario["name"], meta["replicate"])
    result = bl.find_map(model, seed=seed)
    out = {
        "params": study.flat(result.params),
        "values": {name: value.tolist() for name, value in result.params.items()},
        "truth": study.flat(truth),
        "log_density": result.log_density,
        "converged": result.converged,
        "iterations": result.iterations,
        "grad_max": result.grad_max,
        "method": result.method,
        "seed": seed,
    }
    study.write_json(path, out)
    print(f"{path}: {out['params']} (converged: {result.converged})")
