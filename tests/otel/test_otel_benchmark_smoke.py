"""Keeps the instrumentation-cost benchmark (tests/benchmarks/otel.py) from rotting: its smallest run.

Asserts the report's structure only, never a figure.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from tests.benchmarks import otel


async def test_every_variant_is_measured_and_reported() -> None:
    figures = await otel.run(stages=4, runs=2, reps=1)
    variants = [
        "bare",
        "empty x2",
        "no-sdk",
        "dropped",
        "t+m",
        "full",
        "floor",
        "t+m+events",
        "t+m+records",
        "floor+events",
    ]
    assert sorted(figures) == sorted([*variants, *(f"{v} (min)" for v in variants)])
    assert all(value > 0 for value in figures.values())
    text = otel.report(figures, 4)
    assert "events as span events / as log records (cost over t+m):" in text
    assert "ratio t+m+events overhead / SDK floor with events:" in text
    assert "ratio default telemetry (t+m, events as span events) overhead / SDK floor with events:" in text
    assert "tracing, head sampling drops the run" in text
