"""sample: one sampler on every replicate of a scenario, as one batch of chains
(`bl.stack`), started from each replicate's mode."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
import study  # noqa: E402
import torch  # noqa: E402

import bayeslib as bl  # noqa: E402

sm = snakemake  # noqa: F821
study.log_to(sm.log[0])
torch.set_num_threads(sm.threads)
scenario, sampler = sm.params.scenario, sm.params.sampler
data, truth, meta = study.load_dataset(sm.input.data)
stacked = study.fitted_stack(scenario, data)
seed = study.derive_seed(sm.params.seed, "sample", scenario["name"], sampler["name"])
init = study.load_modes(sm.input.map) if sm.params.init == "map" else sm.params.init
post = bl.sample(
    stacked,
    sampler=sampler["name"],
    chains=sampler["chains"],
    superchains=sampler["superchains"],
    warmup=sampler["warmup"],
    draws=sampler["draws"],
    thin=sampler["thin"],
    seed=seed,
    device=sm.params.device,
    dtype=sm.params.dtype,
    init=init,
    progress=False,
    **sampler["options"],
)
post.attrs.update(
    scenario=scenario["name"],
    bayeslib_version=bl.__version__,
    torch_version=torch.__version__,
)
study.save_posterior(sm.output[0], post)
print(post)
print(
    f"{post.datasets} data sets x {sampler['chains']} chains: warmup "
    f"{post.attrs['warmup_time']:.2f} s, sampling {post.attrs['sampling_time']:.2f} s, "
    f"{post.attrs['restarted_chains']} chains restarted in warmup, "
    f"{post.attrs['laplace_fallbacks']} data sets without curvature at the mode"
)
