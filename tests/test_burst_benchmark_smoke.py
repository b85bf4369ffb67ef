"""Keeps the burst benchmark (tests/benchmarks/burst.py) from rotting.

Tiny bursts in fresh processes against the real receiver process; asserts the report's structure and
the loss accounting of each burst, never a duration or a memory figure.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from tests.benchmarks import burst


@pytest.fixture(name="report", scope="module")
def _report() -> dict[str, Any]:
    return burst.run_benchmark(burst.Settings.smallest())


def test_the_smallest_burst_is_delivered_whole(report: dict[str, Any]) -> None:
    """Twenty concurrent runs arrive whole: 6 spans and 13 event records each, nothing counted lost."""
    assert (report["largest_lossless_burst"], report["smallest_lossy_burst"]) == (20, None)
    [trial] = report["trials"]
    bounded = trial["bounded"]
    assert (bounded["runs"], bounded["spans"], bounded["lossless"], bounded["exact"]) == (20, 120, True, True)
    assert (bounded["span_events"], bounded["log_records"]) == (
        bounded["expected_span_events"],
        bounded["expected_log_records"],
    )
    assert bounded["expected_span_events"] + bounded["expected_log_records"] >= 20 * burst.EVENTS_PER_RUN
    assert trial["bare"]["spans"] == 0
    json.dumps(report)


def test_complete_mode_is_compared_with_bounded_and_bare(report: dict[str, Any]) -> None:
    """The complete-mode trial reports all three variants at the same size, complete lossless."""
    complete = report["complete"]
    assert [complete[v]["runs"] for v in ("bare", "bounded", "complete")] == [40, 40, 40]
    assert (complete["complete"]["lossless"], complete["complete"]["spans"]) == (True, 240)
    assert complete["complete_over_bounded"] > 0


def test_format_report(report: dict[str, Any]) -> None:
    """The text report names the largest lossless burst and the complete-mode ratios."""
    text = burst.format_report(report)
    assert text.splitlines()[1] == "  largest lossless burst: 20 runs"
    assert "complete / bounded:" in text


def test_a_tiny_burst_reaches_jaeger_through_the_shipped_collector() -> None:
    """Twenty runs over each protocol: 11 spans a run (run, 5 stages, 5 of the stages' own) all in Jaeger."""
    from tests.stack._stack import stack_binary

    stack_binary("otelcol"), stack_binary("jaeger")  # skips (fails in CI) when the stack is not built
    report = burst.run_jaeger(20)
    rows = [
        (b["protocol"], b["produced"], b["in_jaeger"], b["spans_lost"], b["lossless"])
        for b in report["bursts"]
    ]
    assert rows == [("grpc", 220, 220, 0, True), ("http/protobuf", 220, 220, 0, True)]
    assert burst.JAEGER_SPANS_PER_RUN == 11
    memory = report["span_memory"]
    assert (memory["spans"], memory["queue_spans"]) == (11_000, 16_384 + 512)
    assert memory["queue_mib"] == memory["bytes_per_span"] * memory["queue_spans"] / 2**20 > 0
    text = burst.format_jaeger(report).splitlines()
    assert text[1].split(";")[:2] == ["  grpc           220 of 220 spans in Jaeger", " nothing lost"]
    assert text[3].startswith("  a queued span of this burst holds ")
    json.dumps(report)
