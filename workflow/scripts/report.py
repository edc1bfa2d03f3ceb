"""report: one table of every fit, and the samplers' efficiency (bulk ESS per second)."""

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

groups = fits.groupby(["scenario", "sampler"], sort=False)["ess_bulk_per_second"]
median, low, high = groups.median(), groups.quantile(0.1), groups.quantile(0.9)
fig = Figure(figsize=(6.0, 0.5 * len(median) + 1.5), layout="constrained")
ax = fig.subplots()
y = np.arange(len(median))[::-1]
ax.barh(y, median, xerr=[median - low, high - median], color="steelblue")
ax.set_yticks(y, [f"{scenario}/{sampler}" for scenario, sampler in median.index])
ax.set(
    title="Smallest bulk ESS per second of sampling (median, 10-90% over replicates)",
    xlabel="ess_bulk / sampling_time",
    xscale="log",
)
study.save_figure(sm.output.efficiency, fig)
