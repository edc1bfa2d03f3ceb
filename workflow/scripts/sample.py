"""sample: many chains of one sampler, as one vectorised job, on one data set."""

import json
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
import study  # noqa: E402
import torch  # noqa: E402

import bayeslib as bl  # noqa: E402

sm = snakemake  # noqa: F821
study.log_to(sm.log[0])
torch.set_num_threads(sm.threads)
scenario, sampler = sm.params.scenario, sm.params.sampler
data, truth, meta = study.load_dataset(sm.input.data)
model = study.fitted_model(scenario, data)
seed = study.derive_seed(
    sm.params.seed, "sample", scenario["name"], meta["replicate"], sampler["name"]
)
init = sm.params.init
if init == "map":
    mode = json.loads(Path(sm.input.map).read_text())["values"]
    init = study.around_mode(model, mode, sampler["chains"], seed)
post = bl.sample(
    model,
    sampler=sampler["name"],
    chains=sampler["chains"],
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
    replicate=meta["replicate"],
    bayeslib_version=bl.__version__,
    torch_version=torch.__version__,
)
post.save(sm.output[0])
print(post)
print(f"warmup {post.attrs['warmup_time']:.2f} s, sampling {post.attrs['sampling_time']:.2f} s")
for warning in post.warnings():
    print("warning:", warning)
