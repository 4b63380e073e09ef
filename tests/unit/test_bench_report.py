"""The harness's table of several runs: each figure is its median run's."""

from __future__ import annotations

import pytest

from benchmarks.report import Row, median_rows


def _run(ratio: float | None, note: str) -> list[Row]:
    return [
        Row("POST /stats req/s", ratio, "direct", note, "≥ 1.0", ratio is not None and ratio >= 1),
        Row("context only", None, "bare", note),
    ]


def test_each_figure_is_its_median_run_with_the_range():
    merged = median_rows([_run(0.8, "first"), _run(1.1, "second"), _run(0.9, "third")])

    assert merged[0] == Row(
        "POST /stats req/s", 0.9, "direct", "third [0.80 to 1.10 over 3 runs]", "≥ 1.0", False
    )
    assert merged[1] == Row("context only", None, "bare", "first")


def test_a_single_run_is_its_own_table():
    table = _run(0.8, "only")

    assert median_rows([table]) == table


def test_runs_listing_different_figures_are_refused():
    other = [Row("p99 latency", 1.0, "direct", ""), Row("context only", None, "bare", "")]

    with pytest.raises(ValueError, match="differ"):
        median_rows([_run(0.8, "a"), other, _run(0.9, "b")])
