"""The examples run end to end on small settings and write what they promise."""

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # runs the real pipeline / server / scripts

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SMALL = ["--chains", "2", "--warmup", "100", "--draws", "100"]


def run_example(name, out, *args):
    # pytest-xdist workers already fill the cores: one thread each keeps torch from thrashing
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--out", str(out), *SMALL, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def check_figures(out, names):
    for name in names:
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image.reshape(-1, image.shape[-1]).std(axis=0).max() > 0.05


def test_best(tmp_path):
    stdout = run_example("best.py", tmp_path, "--n", "30", "--effect-size", "1.0")
    results = json.loads((tmp_path / "best_results.json").read_text())
    check_figures(tmp_path, results["figures"])
    assert {"best_difference.png", "best_forest.png", "best_energy.png"} <= set(results["figures"])
    table = pd.read_csv(tmp_path / "best_summary.csv", index_col=0)
    assert list(table.index) == ["mu[0]", "mu[1]", "sigma[0]", "sigma[1]", "diff"]
    p, mcse = results["p_diff_below_zero"], results["p_diff_below_zero_mcse"]
    low, high = results["diff_interval_95"]
    assert f"P(mu2 - mu1 < 0) = {p:.3f} (MCSE {mcse:.3f})" in stdout
    assert f"95% interval of mu2 - mu1: [{low:.3f}, {high:.3f}]" in stdout
    # mu2 - mu1 is -1 (one sd), 30 per group: its posterior sd is about sqrt(2 / 30) = 0.26
    assert low < table.loc["diff", "mean"] < high
    assert abs(table.loc["diff", "mean"] + 1.0) < 4 * 0.26
    assert p > 0.9 and 0.0 <= mcse < 0.05


def test_linear(tmp_path):
    stdout = run_example("linear.py", tmp_path, "--n", "60")
    results = json.loads((tmp_path / "linear_results.json").read_text())
    check_figures(tmp_path, results["figures"])
    assert {"linear_forest.png", "linear_prediction.png"} <= set(results["figures"])
    table = pd.read_csv(tmp_path / "linear_summary.csv", index_col=0)
    beta = table.loc[["beta[0]", "beta[1]", "beta[2]"]]
    np.testing.assert_array_less(np.abs(beta["mean"] - results["true_beta"]), 4 * beta["sd"])
    mean, (low, high) = results["prediction_mean"], results["prediction_interval_95"]
    assert f"Predicted y: mean {mean:.4f}, 95% interval [{low:.4f}, {high:.4f}]" in stdout
    # y at x is x . beta plus Normal(0, sigma = 1) noise: the mean is near x . beta_mean and
    # the interval about 2 * 1.96 * sigma wide, a little more for beta's own uncertainty
    assert mean == pytest.approx(np.dot(results["new_x"], beta["mean"]), abs=0.3)
    assert 3.0 < high - low < 6.0


def test_eight_schools(tmp_path):
    stdout = run_example("eight_schools.py", tmp_path)
    results = json.loads((tmp_path / "eight_schools_results.json").read_text())
    check_figures(tmp_path, results["figures"])
    assert "eight_schools_funnel.png" in results["figures"]
    for label in ("centred", "non-centred"):
        table = pd.read_csv(tmp_path / f"eight_schools_{label}_summary.csv", index_col=0)
        assert {"mu", "tau", *[f"theta[{j}]" for j in range(8)]} <= set(table.index)
        assert f"Divergent transitions: {results[label]['divergences']} of 200" in stdout
    # E[mu | y] = 4.397 and E[tau | y] = 3.598, from quadrature on a grid of (mu, log tau)
    # with theta integrated out (tests/test_gallery.py); the grid's error is below 0.003
    table = pd.read_csv(tmp_path / "eight_schools_non-centred_summary.csv", index_col=0)
    for name, reference in (("mu", 4.397), ("tau", 3.598)):
        assert abs(table.loc[name, "mean"] - reference) < 4 * table.loc[name, "mcse_mean"] + 0.003


def test_gaussian_process(tmp_path):
    stdout = run_example("gaussian_process.py", tmp_path, "--n", "12")
    results = json.loads((tmp_path / "gaussian_process_results.json").read_text())
    check_figures(tmp_path, results["figures"])
    assert "gaussian_process_rate.png" in results["figures"]
    table = pd.read_csv(tmp_path / "gaussian_process_summary.csv", index_col=0)
    assert {"alpha", "rho", "f[0]", "f[11]"} <= set(table.index)
    rmse = results["log_rate_rmse"]
    assert f"Root mean square error of the posterior mean log rate: {rmse:.3f}" in stdout
    # a fit that ignored the counts (f = 0) would be off by 1.5, the true log rate's root mean
    # square; one count near 5 fixes its log rate to about 1 / sqrt(5) = 0.45 (this run: 0.41)
    assert rmse < 0.6


def test_mixture(tmp_path):
    run_example("mixture.py", tmp_path, "--n", "150")
    results = json.loads((tmp_path / "mixture_results.json").read_text())
    check_figures(tmp_path, results["figures"])
    assert "mixture_density.png" in results["figures"]
    table = pd.read_csv(tmp_path / "mixture_summary.csv", index_col=0)
    assert list(table.index) == ["w", "mu[0]", "mu[1]", "sigma[0]", "sigma[1]"]
    truth = results["truth"]
    # the simulated truths lie within 4 posterior sds of the posterior means, the labels in order
    for name, value in [("w", truth["w"]), ("mu[0]", truth["mu"][0]), ("mu[1]", truth["mu"][1])]:
        assert abs(table.loc[name, "mean"] - value) < 4 * table.loc[name, "sd"]
    assert table.loc["mu[0]", "mean"] < table.loc["mu[1]", "mean"]
