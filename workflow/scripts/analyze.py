"""analyze: diagnostics, intervals, the seed's questions, posterior predictive checks and figures
for every replicate of one scenario fitted with one sampler."""

import json
import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import study  # noqa: E402
import torch  # noqa: E402

import bayeslib as bl  # noqa: E402
from bayeslib import plots  # noqa: E402
from bayeslib.predictive import posterior_predictive, ppc  # noqa: E402

# Posterior predictive checks use about this many draws: the statistics are computed per draw.
PPC_DRAWS = 400

sm = snakemake  # noqa: F821
study.log_to(sm.log[0])
scenario, prob = sm.params.scenario, sm.params.prob
is_regression = scenario["model"] == "linear_regression"


def difference(p):
    """mu2 - mu1, the seed's question: group 2 minus group 1."""
    return p.mu[..., 1] - p.mu[..., 0]


def questions(model, post, seed):
    """The seed's questions: P(mu2 - mu1 < 0) with its interval, or the outcome at a new x."""
    if is_regression:
        x = torch.tensor([sm.params.new_x], dtype=torch.float64)
        y = posterior_predictive(model, post, seed=seed, X=x)["y"][..., 0]
        low, high = bl.diagnostics.eti(y, prob)
        return {"y_new_mean": float(y.mean()), "y_new_low": low, "y_new_high": high}, y
    below = post.prob(lambda p: difference(p) < 0)
    low, high = post.interval(difference, prob)
    return {
        "p_difference_below_0": below.value,
        "p_difference_below_0_mcse": below.mcse,
        "difference_mean": float(post.derive(difference=difference)["difference"].mean()),
        "difference_low": low,
        "difference_high": high,
    }, None


def figures(model, post, truth, y_new, seed):
    thin = max(1, post.chains * post.num_draws // PPC_DRAWS)
    out = {
        "trace": plots.plot_trace(post),
        "rank": plots.plot_rank(post),
        "posterior": plots.plot_posterior(post, prob=prob),
        "forest": plots.plot_forest(post, prob=prob, truth=truth),
        "ppc": plots.plot_ppc(model, post, seed=seed, thin=thin),
        "sampler": sampler_figure(post),
    }
    if is_regression:
        out["question"] = plots.plot_posterior({"y_new": y_new}, prob=prob, kind="eti")
    else:
        out["question"] = plots.plot_difference(post, difference, prob=prob, label="mu2 - mu1")
    return out


def sampler_figure(post):
    if "energy" in post.stats:
        return plots.plot_energy(post)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.hist(post.stats["acceptance_rate"].mean(dim=1).numpy(), bins=20, color="steelblue")
    ax.set(title="Acceptance rate by chain", xlabel="mean acceptance rate", ylabel="chains")
    return fig


summaries, rows, checks = [], [], []
plot_paths = iter(sm.output.plots)
for path, data_path, map_path in zip(sm.input.posteriors, sm.input.data, sm.input.map, strict=True):
    post = bl.Posterior.load(path)
    data, truth, meta = study.load_dataset(data_path)
    with open(map_path) as f:
        mode = json.load(f)["params"]
    model = study.fitted_model(scenario, data)
    replicate = meta["replicate"]
    seed = post.attrs["seed"]

    table = post.summary(prob)
    table["eti_width"] = table["eti_high"] - table["eti_low"]
    table["truth"] = pd.Series(study.flat(truth))
    table["map"] = pd.Series(mode)
    table.insert(0, "replicate", replicate)
    summaries.append(table.rename_axis("parameter").reset_index())

    answers, y_new = questions(model, post, seed)
    stats = post.sampler_summary()
    warnings = post.warnings()
    row = {
        "scenario": scenario["name"],
        "sampler": post.attrs["sampler"],
        "replicate": replicate,
        "seed": seed,
        "chains": post.chains,
        "draws": post.num_draws,
        "warmup": post.attrs["warmup"],
        "thin": post.attrs["thin"],
        "device": post.attrs["device"],
        "dtype": post.attrs["dtype"],
        "warmup_time": post.attrs["warmup_time"],
        "sampling_time": post.attrs["sampling_time"],
        "r_hat_max": table["r_hat"].max(),
        "ess_bulk_min": table["ess_bulk"].min(),
        "ess_tail_min": table["ess_tail"].min(),
        "mcse_mean_max": table["mcse_mean"].max(),
        "ess_bulk_per_second": table["ess_bulk"].min() / post.attrs["sampling_time"],
        "acceptance_rate": stats.get("acceptance_rate"),
        "step_size": stats.get("step_size"),
        "divergences": stats.get("divergences", 0),
        "max_tree_depth_hits": stats.get("max_tree_depth_hits", 0),
        "e_bfmi_min": min(stats["e_bfmi"]) if "e_bfmi" in stats else np.nan,
        "warnings": len(warnings),
        **answers,
    }
    rows.append(row)
    thin = max(1, post.chains * post.num_draws // PPC_DRAWS)
    check = ppc(model, post, seed=seed, thin=thin).reset_index()
    check.insert(0, "replicate", replicate)
    checks.append(check)
    print(f"replicate {replicate}: {answers}")
    for warning in warnings:
        print("warning:", warning)

    if replicate < sm.params.plot_replicates:
        for kind, fig in figures(model, post, truth, y_new, seed).items():
            target = next(plot_paths)
            assert target.endswith(f"/{replicate}/{kind}.png"), target
            study.save_figure(target, fig)

study.write_csv(sm.output.summary, pd.concat(summaries), index=False)
study.write_csv(sm.output.fits, pd.DataFrame(rows), index=False)
study.write_csv(sm.output.ppc, pd.concat(checks), index=False)
