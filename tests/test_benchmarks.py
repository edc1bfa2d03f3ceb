"""The benchmark harness runs end to end on tiny settings and its numbers are sane."""

import pandas as pd
from matplotlib.image import imread

from benchmarks.__main__ import main


def test_smoke_benchmark_of_bayeslib(tmp_path):
    main(["--smoke", "--only", "bayeslib-metropolis,bayeslib-nuts", "--out", str(tmp_path)])
    medians = pd.read_csv(tmp_path / "comparison.csv")
    assert set(medians.contender) == {"bayeslib-metropolis", "bayeslib-nuts"}
    assert set(medians.case) == {"best", "linear"}
    assert (medians.wall_s > 0).all() and (medians.min_ess_bulk > 0).all()
    assert (medians.ess_per_s == medians.min_ess_bulk / medians.wall_s).all()
    nuts = medians.set_index(["case", "contender"]).loc[("linear", "bayeslib-nuts")]
    # 150 warmup iterations are enough for NUTS (not for a random walk) to converge here
    assert nuts.max_r_hat < 1.1 and nuts.min_ess_bulk > 20
    # the seed's linear model recovers beta = [2, 1, -3] within a few posterior sds (~0.3)
    for i, truth in enumerate([2.0, 1.0, -3.0]):
        assert abs(nuts[f"mean beta[{i}]"] - truth) < 1.5
    scaling = pd.read_csv(tmp_path / "scaling.csv")
    assert list(scaling.chains) == [2, 8, 2, 8]
    assert (scaling.chain_iterations_per_s > 0).all() and (scaling.peak_mib > 0).all()
    for png in ("comparison.png", "scaling.png"):
        image = imread(tmp_path / png)
        assert image.std() > 0
    ratios = pd.read_csv(tmp_path / "ratios.csv")
    assert "best bayeslib" in set(ratios.bayeslib)
