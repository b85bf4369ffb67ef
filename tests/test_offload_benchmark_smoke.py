"""Keeps the executor-hop benchmark (tests/benchmarks/offload.py) from rotting: its smallest settings.

Real thread pool, process pool and Dask cluster; asserts the report's structure, never a duration.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("distributed", reason="needs the dask extra: pip install 'stageflow-core[dask]'")

from tests.benchmarks import offload


@pytest.fixture(name="report", scope="module")
def _report() -> dict[str, Any]:
    return offload.run_benchmark(offload.Settings.smallest())


def test_every_hop_is_paired_with_its_bare_form(report: dict[str, Any]) -> None:
    """The thread, process and Dask hops each report graph, bare and async-graph figures and their ratios."""
    assert [row["name"] for row in report["hops"]] == ["thread hop", "process hop", "Dask hop"]
    assert [row["hops_per_sample"] for row in report["hops"]] == [4, 1, 1]
    for row in report["hops"]:
        assert set(row["us_per_hop"]) == {"graph", "bare", "async graph"}
        assert set(row["best_us_per_hop"]) == {"graph", "bare", "async graph"}
        assert all(value > 0 for value in row["us_per_hop"].values())
        assert row["ratio"] > 0
        assert row["target"] == offload.TARGET
        assert row["meets_target"] is (row["ratio"] <= offload.TARGET)
    json.dumps(report)


def test_many_sync_stages(report: dict[str, Any]) -> None:
    """The many-stages run reports its size, its threads, its wall time and its rate."""
    many = report["many"]
    assert (many["stages"], many["threads"]) == (20, 4)
    assert many["wall_s"] > 0
    assert many["stages_per_s"] == pytest.approx(20 / many["wall_s"])


def test_format_report(report: dict[str, Any]) -> None:
    """The text report has one line per hop and the many-stages line."""
    lines = offload.format_report(report).splitlines()
    assert [line.split("  ")[0] for line in lines[3:6]] == ["thread hop", "process hop", "Dask hop"]
    assert lines[-1].startswith("20 sync stages on 4 threads: ")
