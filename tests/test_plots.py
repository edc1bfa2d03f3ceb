"""Figures: each renders real draws, labels its axes and saves a non-blank PNG."""

import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from bayeslib import plots
from bayeslib.models import Best
from bayeslib.predictive import posterior_predictive
from bayeslib.sampling import sample


@pytest.fixture(scope="module")
def run():
    model, truth = Best.simulate(seed=1)
    post = sample(model, chains=4, warmup=150, draws=150, seed=0, init="map", progress=False)
    return model, truth, post


def check(fig, path):
    """Every visible axes is titled and labelled; the saved PNG is not one flat colour."""
    assert isinstance(fig, Figure)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert visible
    for ax in visible:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    fig.savefig(path, dpi=60)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    assert image.reshape(-1, image.shape[-1]).std(axis=0).max() > 0.05
    return visible


def test_trace_and_rank(run, tmp_path):
    _, _, post = run
    axes = check(plots.plot_trace(post), tmp_path / "trace.png")
    assert len(axes) == 8  # 4 flat parameters, density and trace each
    assert len(axes[1].get_lines()) == 4  # one trace per chain
    axes = check(plots.plot_rank(post, names="mu"), tmp_path / "rank.png")
    assert [ax.get_title() for ax in axes] == ["mu[0]", "mu[1]"]


def test_posterior_marks_the_interval(run, tmp_path):
    _, _, post = run
    axes = check(plots.plot_posterior(post, prob=0.9), tmp_path / "posterior.png")
    assert [ax.get_title() for ax in axes] == ["mu[0]", "mu[1]", "sigma[0]", "sigma[1]"]
    low, high = post.interval("sigma", prob=0.9, kind="hdi")[1]
    bar = axes[3].collections[0].get_segments()[0]
    np.testing.assert_allclose(bar[:, 0], [low, high])
    legend = [t.get_text() for t in axes[3].get_legend().get_texts()]
    assert f"90% HDI [{low:.3g}, {high:.3g}]" in legend


def test_posterior_and_difference_draw_the_truth(run, tmp_path):
    _, truth, post = run
    axes = check(plots.plot_posterior(post, truth=truth), tmp_path / "posterior.png")
    for ax, value in zip(axes, [0.3, 0.0, 1.0, 1.0], strict=True):
        (line,) = [line for line in ax.get_lines() if line.get_label().startswith("true value")]
        assert line.get_xdata()[0] == pytest.approx(value)
    fig = plots.plot_difference(post, lambda p: p.mu[..., 1] - p.mu[..., 0], truth=-0.3)
    (ax,) = check(fig, tmp_path / "difference.png")
    assert "true value -0.3" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_rank_plot_pools_many_chains_and_shows_a_stuck_one(tmp_path):
    """64 chains are drawn as 8 groups of 8; a stuck chain lifts its group out of the band."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 400))
    x[13] = 2.5  # chain 13 stuck far in the upper tail
    (ax,) = check(plots.plot_rank({"x": x}, bins=10), tmp_path / "rank.png")
    legend = [t.get_text() for t in ax.figure.legends[0].get_texts()]
    assert legend[1:] == [f"chains {g}-{g + 7}" for g in range(0, 64, 8)]
    (band,) = ax.patches[:1]
    top = band.get_y() + band.get_height()
    heights = [max(step.get_data().values) for step in ax.patches[1:]]
    assert heights[1] > top  # chains 8-15, with the stuck chain
    assert max(heights[:1] + heights[2:]) < top


def test_posterior_of_predictive_draws(run, tmp_path):
    model, _, post = run
    draws = posterior_predictive(model, post, thin=4, y1=model.y1[:3])
    axes = check(plots.plot_posterior(draws, names="y2", kind="eti"), tmp_path / "y2.png")
    assert [ax.get_title() for ax in axes] == ["y2"]


def test_difference_shows_the_probability_and_interval(run, tmp_path):
    _, _, post = run
    diff = lambda p: p.mu[..., 1] - p.mu[..., 0]  # noqa: E731
    fig = plots.plot_difference(post, diff, label="mu2 - mu1")
    (ax,) = check(fig, tmp_path / "difference.png")
    below = post.prob(lambda p: diff(p) < 0)
    assert ax.get_title() == f"P(mu2 - mu1 < 0) = {below.value:.3f} (MCSE {below.mcse:.3f})"
    low, high = post.interval(diff)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"95% interval [{low:.3g}, {high:.3g}]" in legend
    named = plots.plot_difference(post.derive(d=diff), "d")
    assert named.axes[0].get_title() == ax.get_title().replace("mu2 - mu1", "d")
    relabelled = plots.plot_difference(post.derive(d=diff), "d", label="mu2 - mu1")
    assert relabelled.axes[0].get_title() == ax.get_title()
    with pytest.raises(ValueError, match="scalar quantity"):
        plots.plot_difference(post, "mu")


def test_forest_overlays_the_truth(run, tmp_path):
    _, truth, post = run
    (ax,) = check(plots.plot_forest(post, truth=truth), tmp_path / "forest.png")
    rows = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True)}
    assert rows == {"mu[0]": 3, "mu[1]": 2, "sigma[0]": 1, "sigma[1]": 0}  # first on top
    (marks,) = [line for line in ax.get_lines() if line.get_label() == "true value"]
    np.testing.assert_allclose(marks.get_xdata(), [0.3, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(marks.get_ydata(), [3, 2, 1, 0])
    # only the parameters drawn get their truth
    (ax,) = plots.plot_forest(post, names=["sigma"], truth=truth).axes
    (marks,) = [line for line in ax.get_lines() if line.get_label() == "true value"]
    np.testing.assert_allclose(marks.get_xdata(), [1.0, 1.0])


def test_ppc_figure(run, tmp_path):
    model, _, post = run
    statistics = {"range": lambda y: y.max() - y.min()}
    axes = check(plots.plot_ppc(model, post, statistics, thin=2), tmp_path / "ppc.png")
    assert len(axes) == 10  # 2 fields x 5 statistics
    observed = float(model.y2.max() - model.y2.min())
    (line,) = [ax for ax in axes if ax.get_xlabel() == "range(y2)"][0].get_lines()
    assert line.get_xdata()[0] == pytest.approx(observed)


def test_energy(run, tmp_path):
    _, _, post = run
    (ax,) = check(plots.plot_energy(post), tmp_path / "energy.png")
    assert ax.get_title() == "E-BFMI by chain: " + ", ".join(f"{v:.2f}" for v in post.e_bfmi())
    model, _ = Best.simulate(seed=1)
    rwm = sample(model, "metropolis", chains=2, warmup=10, draws=10, seed=0, progress=False)
    with pytest.raises(ValueError, match="needs the 'energy' statistic"):
        plots.plot_energy(rwm)


def test_the_library_imports_without_matplotlib():
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import bayeslib, bayeslib.plots, bayeslib.predictive, torch\n"
        "post = bayeslib.Posterior({'x': torch.zeros(2, 10)})\n"
        "try:\n"
        "    bayeslib.plots.plot_trace(post)\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'bayeslib[plots]'" in out.stdout


def test_figures_are_not_left_open(run):
    import matplotlib.pyplot as plt

    _, _, post = run
    before = plt.get_fignums()
    plots.plot_rank(post, names="sigma")
    assert plt.get_fignums() == before
