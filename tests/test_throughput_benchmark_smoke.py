"""Keeps the zero-loss throughput benchmark (tests/benchmarks/throughput.py) from rotting.

One short trial per variant at a low rate, against the real receiver process; asserts the report's
structure and the loss accounting of each trial, never a rate.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from tests.benchmarks import throughput


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return throughput.run_benchmark(throughput.Settings.smallest())


def test_every_variant_is_searched(report: dict[str, Any]) -> None:
    names = [v["name"] for v in report["variants"]]
    assert names == ["bare", "telemetry", "telemetry + log records", "log records, no span events"]
    for variant in report["variants"]:
        assert len(variant["trials"]) == 1
        assert variant["cost_cpu_us_per_run"] > 0 and variant["cost_ratio_to_bare"] > 0
        assert 0 < variant["cost_loop_cpu_us_per_run"] <= variant["cost_cpu_us_per_run"]
        trial = variant["trials"][0]
        assert trial["rate"] == 25.0
        assert trial["runs"] == 5
        assert trial["cpu_us_per_run"] > 0
        assert variant["best_runs_per_s"] in (0.0, 25.0)
    json.dumps(report)


def test_the_receiver_counts_what_each_variant_exports(report: dict[str, Any]) -> None:
    bare, telemetry, records, only_records = (v["trials"][0] for v in report["variants"])
    assert (bare["spans"], bare["span_events"], bare["log_records"]) == (0, 0, 0)
    events = 5 * throughput.EVENTS_PER_RUN
    assert (telemetry["spans"], telemetry["span_events"], telemetry["log_records"]) == (30, events, 0)
    assert (records["spans"], records["span_events"], records["log_records"]) == (30, events, events)
    assert (only_records["spans"], only_records["span_events"], only_records["log_records"]) == (
        30,
        0,
        events,
    )


def test_search_doubles_then_bisects() -> None:
    search = throughput.Search(throughput.Settings(start=100.0, precision=0.1, max_trials=10))
    limit = 330.0
    while search.rate is not None:
        rate = search.rate
        search.record(throughput.Trial(rate, 1, rate, sustained=rate <= limit))
    assert [t.rate for t in search.trials] == [100.0, 200.0, 400.0, 300.0, 350.0, 325.0]
    assert search.good == 325.0


def test_format_report(report: dict[str, Any]) -> None:
    text = throughput.format_report(report)
    assert text.splitlines()[0].startswith("zero-loss throughput")
    assert "ratio to bare" in text
    cost = text.splitlines().index("CPU per run at 25 runs/s (median of the interleaved cost trials):")
    assert all(
        "(event loop thread " in line and ", other threads " in line
        for line in text.splitlines()[cost + 1 : cost + 5]
    )
