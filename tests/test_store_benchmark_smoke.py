"""Keeps the run-store benchmark (tests/benchmarks/store.py) from rotting: its smallest run, both stores.

Asserts the report's structure and that nothing was lost, never a latency or a rate.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests._postgres import MISSING_BINARIES, find_binaries


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    if find_binaries() is None:
        pytest.skip(MISSING_BINARIES)
    from tests.benchmarks import store

    return store.run_benchmark(store.Settings.smallest())


def test_both_stores_are_measured_and_nothing_is_lost(report: dict[str, Any]) -> None:
    """SQLite and PostgreSQL each report every figure; every run and event written was stored."""
    assert [r["store"] for r in report["results"]] == ["sqlite", "postgresql"]
    for result in report["results"]:
        # the latency runs, the warm-up write and the runs of the writing processes
        assert result["runs_stored"] == 20 + 1 + 2 * 10
        assert (result["events_stored"], result["events_dropped"]) == (
            200,
            {"queue_full": 0, "error": 0, "closed": 0},
        )
        for key in (
            "record_p50_ms",
            "record_p99_ms",
            "runs_per_s_8_processes",
            "events_per_s",
            "bytes_per_run",
        ):
            assert result[key] > 0, key
    json.dumps(report)
