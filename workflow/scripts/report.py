"""report: one table of every fit, and the samplers' efficiency: the smallest of bulk ESS, tail
ESS and the ESS of the centred squares, per second of the whole job, warmup included."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import study  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

sm = snakemake  # noqa: F821
study.log_to(sm.log[0])
fits = pd.concat([pd.read_csv(path) for path in sm.input.fits], ignore_index=True)
study.write_csv(sm.output.fits, fits, index=False)
study.write_html_table(sm.output.fits_html, fits, "Every fit", sm.output.fits)

# Bulk ESS alone flatters antithetic samplers (static HMC): a fit counts its weakest estimate.
fits["ess_min"] = fits[["ess_bulk", "ess_tail", "ess_squares"]].min(axis=1)
fits["total_time"] = fits["warmup_time"] + fits["sampling_time"]
groups = fits.groupby(["scenario", "sampler"], sort=False)
# One job fits every replicate: ESS summed over replicates per second of that job.
rate = groups["ess_min"].sum() / groups["total_time"].first()
labels = [
    f"{scenario}/{sampler}\n{groups.get_group((scenario, sampler))['chains'].iloc[0]} chains x "
    f"{len(groups.get_group((scenario, sampler)))} data sets"
    for scenario, sampler in rate.index
]
fig = Figure(figsize=(7.0, 0.7 * len(rate) + 1.5), layout="constrained")
ax = fig.subplots()
y = np.arange(len(rate))[::-1]
ax.barh(y, rate, color="steelblue")
for yi, value in zip(y, rate, strict=True):
    ax.annotate(f"{value:,.0f}", (value, yi), xytext=(3, 0), textcoords="offset points",
                va="center", fontsize=8)  # fmt: skip
ax.set_yticks(y, labels)
ax.set(
    title="Effective draws per second of each job (warmup included)",
    xlabel="sum over data sets of min(bulk, tail, squares ESS) / job time",
    xlim=(0, 1.15 * rate.max()),
)
study.save_figure(sm.output.efficiency, fig)
