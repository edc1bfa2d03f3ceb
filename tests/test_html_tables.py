"""The study's tables as the report shows them: pages small enough for a data: URL."""

import sys

import numpy as np
import pandas as pd
from snakemake_cli import ROOT

sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
import study  # noqa: E402


def table(rows):
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {"scenario": ["best"] * rows, "replicate": np.arange(rows), "rhat": rng.random(rows)}
    )


def test_a_small_table_is_shown_whole_with_its_text_columns_left(tmp_path):
    path = tmp_path / "fits.html"
    study.write_html_table(path, table(3), "Every fit", "results/report/fits.csv")
    page = path.read_text()
    assert page.count("</tr>") == 4 and "The first" not in page  # header and 3 rows
    assert "td:nth-child(1),th:nth-child(1){text-align:left}" in page
    assert f"<td>{table(3).rhat[0]:.4g}</td>" in page


def test_a_long_table_shows_its_first_rows_and_names_the_csv(tmp_path):
    path = tmp_path / "fits.html"
    study.write_html_table(path, table(60_000), "Every fit", "results/report/fits.csv")
    page = path.read_text()
    shown = page.count("</tr>") - 1
    assert len(page.encode()) <= study.MAX_HTML_BYTES
    assert 1000 < shown < 60_000
    assert f"The first {shown:,} of 60,000 rows" in page
    assert "<code>results/report/fits.csv</code>" in page
