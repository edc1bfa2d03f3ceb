"""analyze: every replicate of one scenario fitted with one sampler: convergence checks per
fit, posterior summaries, the seed's questions, coverage and SBC ranks of the truths, and for
the first replicates posterior predictive checks and figures."""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import study  # noqa: E402
import torch  # noqa: E402

import bayeslib as bl  # noqa: E402
from bayeslib import calibration, plots  # noqa: E402
from bayeslib.diagnostics import eti  # noqa: E402
from bayeslib.predictive import posterior_predictive, ppc  # noqa: E402

# Posterior predictive checks use about this many draws: the statistics are computed per draw.
PPC_DRAWS = 400

sm = snakemake  # noqa: F821
study.log_to(sm.log[0])
torch.set_num_threads(1)
scenario, prob, options = sm.params.scenario, sm.params.prob, sm.params.recovery
is_regression = scenario["model"] == "linear_regression"


def difference(p):
    """mu2 - mu1, the seed's question: group 2 minus group 1."""
    return p.mu[..., 1] - p.mu[..., 0]


def difference_answers(post):
    """P(mu2 - mu1 < 0), its MCSE and the `prob` interval of mu2 - mu1, for every replicate."""
    diff = difference(bl.DrawsView(post.draws)).reshape(post.datasets, -1, post.num_draws)
    below = (diff < 0).double()
    mcse = bl.diagnostics.mcse_mean(below.movedim(0, 2))
    low, high = eti(diff.movedim(0, 2), prob).T
    return pd.DataFrame(
        {
            "p_difference_below_0": below.mean(dim=(1, 2)).numpy(),
            "p_difference_below_0_mcse": np.where(below.std(dim=(1, 2)) > 0, mcse, 0.0),
            "difference_mean": diff.mean(dim=(1, 2)).numpy(),
            "difference_low": low,
            "difference_high": high,
        }
    )


def new_x():
    return torch.tensor([sm.params.new_x], dtype=torch.float64)


def prediction(model, post, seed):
    """Posterior predictive draws of y at the config's new input `new_x`."""
    return posterior_predictive(model, post, seed=seed, X=new_x())["y"][..., 0]


def figures(model, post, truth, seed):
    thin = max(1, post.chains * post.num_draws // PPC_DRAWS)
    out = {
        "trace": plots.plot_trace(post),
        "rank": plots.plot_rank(post),
        "posterior": plots.plot_posterior(post, prob=prob, truth=truth),
        "forest": plots.plot_forest(post, prob=prob, truth=truth),
        "ppc": plots.plot_ppc(model, post, seed=seed, thin=thin),
        "sampler": sampler_figure(post),
    }
    if is_regression:
        y = prediction(model, post, seed)
        # y at new_x is noisy: the line is its true mean, x . beta
        mean = {"y_new": new_x()[0] @ truth["beta"].double()}
        out["question"] = plots.plot_posterior(
            {"y_new": y}, prob=prob, kind="eti", truth=mean, truth_label="true mean"
        )
    else:
        out["question"] = plots.plot_difference(
            post, difference, prob=prob, label="mu2 - mu1", truth=truth["mu"][1] - truth["mu"][0]
        )
    return out


def sampler_figure(post):
    if "energy" in post.stats:
        return plots.plot_energy(post)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.hist(post.stats["acceptance_rate"].mean(dim=1).numpy(), bins=20, color="steelblue")
    ax.set(title="Acceptance rate by chain", xlabel="mean acceptance rate", ylabel="chains")
    ax.yaxis.get_major_locator().set_params(integer=True)
    return fig


post = study.load_posterior(sm.input.posterior)
data, truth, meta = study.load_dataset(sm.input.data)
modes = study.load_modes(sm.input.map)
sampler = post.attrs["sampler"]
replicates = post.datasets

# Convergence of every fit, judged as for many short chains (nested R-hat), with its reason.
checks = calibration.fit_checks(
    post, options["max_rhat"], options["min_ess"], options["max_divergence_share"]
)
summary = post.summary(prob).reset_index()
truths = {k: v for k, v in truth.items()}
summary["truth"] = np.concatenate(
    [v.reshape(replicates, -1).numpy() for v in truths.values()], axis=1
).ravel()
summary["map"] = np.concatenate(
    [torch.stack([m.params[k] for m in modes]).reshape(replicates, -1).numpy() for k in truths],
    axis=1,
).ravel()
summary = summary.rename(columns={"dataset": "replicate"})

fits = checks.rename(columns={"dataset": "replicate"})
fits.insert(0, "scenario", scenario["name"])
fits.insert(1, "sampler", sampler)
for key in ("chains", "superchains", "warmup", "draws", "thin", "seed", "device", "dtype"):
    fits[key] = post.attrs[key]
# One job fits every replicate: its times are shared; `fit_time` is each replicate's share.
fits["datasets"] = replicates
fits["warmup_time"] = post.attrs["warmup_time"]
fits["sampling_time"] = post.attrs["sampling_time"]
fits["fit_time"] = (post.attrs["warmup_time"] + post.attrs["sampling_time"]) / replicates
fits["restarted_chains"] = post.attrs["restarted_chains"]
fits["acceptance_rate"] = post.stats_by_dataset("acceptance_rate").mean(dim=(1, 2)).numpy()
fits["step_size"] = post.attrs["step_size"]
if "tree_depth" in post.stats:
    depth = post.stats_by_dataset("tree_depth")
    fits["max_tree_depth_hits"] = (depth >= post.max_tree_depth).sum(dim=(1, 2)).numpy()
fits["map_converged"] = [m.converged for m in modes]
if not is_regression:
    fits = pd.concat([fits, difference_answers(post)], axis=1)

# Coverage and SBC ranks of the truths; failed fits are marked and left out of the summaries.
recovery, ranks = calibration.recovery_table(
    {name: post.by_dataset(name) for name in truths},
    truths,
    ~fits["passed"].to_numpy(),
    options["levels"],
    options["alpha"],
    options["rank_draws"],
    options["rank_bins"],
)
for frame in (recovery, ranks):
    frame.insert(0, "scenario", scenario["name"])
    frame.insert(1, "sampler", sampler)
ranks = ranks.rename(columns={"dataset": "replicate"})

checks_ppc, plot_paths = [], iter(sm.output.plots)
for replicate in range(sm.params.plot_replicates):
    one = post.dataset(replicate)
    model = study.fitted_model(scenario, {k: v[replicate] for k, v in data.items()})
    seed = post.attrs["seed"] + replicate
    thin = max(1, one.chains * one.num_draws // PPC_DRAWS)
    check = ppc(model, one, seed=seed, thin=thin).reset_index()
    check.insert(0, "replicate", replicate)
    checks_ppc.append(check)
    if is_regression:
        y = prediction(model, one, seed)
        low, high = eti(y, prob)
        fits.loc[replicate, ["y_new_mean", "y_new_low", "y_new_high"]] = [
            float(y.mean()),
            low,
            high,
        ]
    truth_one = {k: v[replicate] for k, v in truths.items()}
    for kind, fig in figures(model, one, truth_one, seed).items():
        target = next(plot_paths)
        assert target.endswith(f"/{replicate}/{kind}.png"), target
        study.save_figure(target, fig)

study.write_csv(sm.output.summary, summary, index=False)
study.write_html_table(
    sm.output.summary_html,
    summary,
    f"Posterior summary: {scenario['name']}/{sampler}",
    sm.output.summary,
)
study.write_csv(sm.output.fits, fits, index=False)
study.write_csv(sm.output.ppc, pd.concat(checks_ppc) if checks_ppc else pd.DataFrame(), index=False)
study.write_csv(sm.output.recovery, recovery, index=False)
study.write_csv(sm.output.ranks, ranks, index=False)
failed = fits[~fits["passed"]]
print(f"{scenario['name']}/{sampler}: {len(failed)} of {replicates} fits failed the checks")
for row in failed.itertuples():
    print(f"failed fit: replicate {row.replicate}: {row.reason}")
