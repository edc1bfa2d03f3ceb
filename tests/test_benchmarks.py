"""The benchmark harness runs end to end on tiny settings and its numbers are sane."""

import pandas as pd
from matplotlib.image import imread

from benchmarks.__main__ import main


def test_quick_benchmark_of_bayeslib(tmp_path):
    main(["--quick", "--only", "bayeslib-metropolis,bayeslib-nuts", "--out", str(tmp_path)])
    medians = pd.read_csv(tmp_path / "comparison.csv")
    assert set(medians.contender) == {"bayeslib-metropolis", "bayeslib-nuts"}
    assert set(medians.case) == {"best", "linear"}
    assert (medians.wall_s > 0).all() and (medians.min_ess_bulk > 10).all()
    assert (medians.max_r_hat < 1.1).all()
    nuts = medians.set_index(["case", "contender"]).loc[("linear", "bayeslib-nuts")]
    # the seed's linear model recovers beta = [2, 1, -3] within a few posterior sds (~0.3)
    for i, truth in enumerate([2.0, 1.0, -3.0]):
        assert abs(nuts[f"mean beta[{i}]"] - truth) < 1.5
    scaling = pd.read_csv(tmp_path / "scaling.csv")
    assert list(scaling.chains) == [1, 4, 64, 1, 4, 64]
    assert (scaling.chain_iterations_per_s > 0).all() and (scaling.peak_mib > 0).all()
    for png in ("comparison.png", "scaling.png"):
        image = imread(tmp_path / png)
        assert image.std() > 0
    ratios = pd.read_csv(tmp_path / "ratios.csv")
    assert "best bayeslib" in set(ratios.bayeslib)
