"""The benchmark harness runs end to end on tiny settings and its numbers are sane."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from benchmarks.__main__ import GPU_SMOKE, gpu, main
from benchmarks.cases import data

pytestmark = pytest.mark.slow  # runs the real pipeline / server / scripts


FIGURES = ["min_ess_bulk", "min_ess_tail", "min_ess_sq"]


def assert_min_ess_figures(runs):
    """Every run reports bulk, tail and squares ESS; its headline is the smallest per second."""
    ess = runs[FIGURES]
    assert (ess > 0).all().all() and (runs.min_ess == ess.min(axis=1)).all()
    assert (runs.min_ess_per_s == runs.min_ess / runs.wall_s).all()


def test_smoke_benchmark_of_bayeslib(tmp_path):
    main(
        ["--smoke", "--only", "bayeslib-metropolis,bayeslib-nuts", "--cases", "best,linear"]
        + ["--out", str(tmp_path)]
    )
    runs = pd.read_csv(tmp_path / "comparison_runs.csv")
    assert_min_ess_figures(runs)
    medians = pd.read_csv(tmp_path / "comparison.csv")
    assert set(medians.contender) == {"bayeslib-metropolis", "bayeslib-nuts"}
    assert set(medians.case) == {"best", "linear"}
    assert (medians.wall_s > 0).all()
    nuts = medians.set_index(["case", "contender"]).loc[("linear", "bayeslib-nuts")]
    # 150 warmup iterations are enough for NUTS (not for a random walk) to converge here
    assert nuts.max_r_hat < 1.1 and nuts.min_ess > 20
    # the seed's linear model recovers beta = [2, 1, -3] within a few posterior sds (~0.3)
    for i, truth in enumerate([2.0, 1.0, -3.0]):
        assert abs(nuts[f"mean beta[{i}]"] - truth) < 1.5
    scaling = pd.read_csv(tmp_path / "scaling.csv")
    assert list(scaling.chains) == [2, 8, 2, 8]
    assert_min_ess_figures(scaling)
    assert (scaling.chain_iterations_per_s > 0).all() and (scaling.peak_mib > 0).all()
    for png in ("comparison.png", "scaling.png"):
        image = imread(tmp_path / png)
        assert image.std() > 0
    ratios = pd.read_csv(tmp_path / "ratios.csv")
    assert "best bayeslib" in set(ratios.bayeslib)


def test_smoke_benchmark_of_a_compiled_contender(tmp_path):
    """A compiled contender runs once first (repeat -1: compiling, its wall kept, not in the
    medians), then its repeats, whose draws are sane."""
    main(
        ["--smoke", "--only", "bayeslib-nuts-compiled", "--cases", "best", "--skip-scaling"]
        + ["--out", str(tmp_path)]
    )
    runs = pd.read_csv(tmp_path / "comparison_runs.csv")
    assert list(runs.repeat) == [-1, 0]
    first, repeats = runs[runs.repeat < 0], runs[runs.repeat >= 0]
    assert (first.wall_s > 0).all() and first.min_ess.isna().all()
    assert_min_ess_figures(repeats)
    medians = pd.read_csv(tmp_path / "comparison.csv")
    assert medians.wall_s.tolist() == repeats.wall_s.tolist()
    assert repeats.max_r_hat.max() < 1.1


def test_smoke_benchmark_of_the_data_heavy_regression(tmp_path):
    main(
        ["--smoke", "--only", "bayeslib-nuts", "--cases", "regression", "--skip-scaling"]
        + ["--out", str(tmp_path)]
    )
    runs = pd.read_csv(tmp_path / "comparison_runs.csv")
    assert list(runs.case) == ["regression"]
    assert_min_ess_figures(runs)
    X, y = (data("regression")[k] for k in ("X", "y"))
    assert X.shape == (5000, 24)
    assert np.corrcoef(X.T)[np.triu_indices(24, 1)].min() > 0.85
    # the posterior mean is near least squares (posterior sds ~0.05 with 5000 rows)
    least_squares = np.linalg.lstsq(X, y, rcond=None)[0]
    means = runs[[f"mean beta[{i}]" for i in range(24)]].to_numpy()[0]
    assert np.abs(means - least_squares).max() < 0.5


def test_smoke_benchmark_of_the_hard_posteriors(tmp_path):
    main(["--smoke", "--hard", "--out", str(tmp_path)])
    runs = pd.read_csv(tmp_path / "hard.csv")
    assert set(zip(runs.case, runs.contender, runs.chains, strict=True)) == {
        (case, name, chains)
        for case in ("kidiq", "trend")
        for name, chains in [("bayeslib-metropolis", 64), ("bayeslib-nuts", 4)]
    }
    assert (runs.wall_s > 0).all()
    assert_min_ess_figures(runs)
    assert (runs.max_r_hat > 0.9).all()
    # nested R-hat over 4 superchains of 16 chains; undefined for 4 chains of one each
    metropolis = runs.contender == "bayeslib-metropolis"
    assert runs.max_r_hat_nested[metropolis].notna().all()
    assert runs.max_r_hat_nested[~metropolis].isna().all()


def test_gpu_study_harness(tmp_path):
    """`--device cuda`'s study, run here on the CPU at its smoke size: one row per contender
    and chain count with the min-of-three figures (a compiled contender's first run, which
    compiles, is not one); without CUDA, graphs or not give the same draws, so the same
    figures."""
    names = ["bayeslib-nuts", "bayeslib-nuts-launches", "bayeslib-nuts-compiled"]
    gpu(GPU_SMOKE, "cpu", tmp_path, names)
    runs = pd.read_csv(tmp_path / "gpu.csv")
    assert list(runs.contender) == names
    assert list(runs.chains) == GPU_SMOKE["chains"] * 3
    assert_min_ess_figures(runs)
    uncompiled = runs[runs.contender != "bayeslib-nuts-compiled"]
    assert uncompiled.min_ess_bulk.nunique() == 1 and uncompiled.min_ess_sq.nunique() == 1
