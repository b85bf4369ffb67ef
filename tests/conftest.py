"""Fixtures shared by the whole test suite (keep generic; append new fixtures at the end)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from stageflow import InMemoryEventSink, set_event_sink

# The shared helper modules assert too: have pytest rewrite their asserts (to show the compared values on
# failure) before anything imports them. Add a new helper module here when it starts to assert.
pytest.register_assert_rewrite(
    "tests._support",
    "tests._stages",
    "tests._cluster_cases",
    "tests._cluster_stages",
    "tests._offload_stages",
    "tests.benchmarks._common",
    "tests.otel.otlp_receiver",
    "tests.otel._worker_stages",
    "tests.stack.dashboards",
    "tests.stack._live",
    "tests.stack._stack",
)

from ._support import FakeClock  # noqa: E402 (after the rewrite registration above)


@pytest.fixture(name="sink")
def _sink() -> InMemoryEventSink:
    """A fresh in-memory event sink."""
    return InMemoryEventSink()


@pytest.fixture(name="process_sink")
def _process_sink() -> Iterator[InMemoryEventSink]:
    """An in-memory sink installed as the process sink, reset afterwards."""
    sink = InMemoryEventSink()
    set_event_sink(sink)
    try:
        yield sink
    finally:
        set_event_sink(None)


@pytest.fixture(autouse=True)
def _no_loop_monitor_left_behind() -> Iterator[None]:
    """Every test starts and ends without a process-wide loop monitor (``setup()`` installs one): a
    monitor left on by one test would add ``loop_blocked`` events to the exact counts of the next."""
    from stageflow import get_loop_monitor, set_loop_monitor

    set_loop_monitor(None)
    yield
    if get_loop_monitor() is not None:
        set_loop_monitor(None)


@pytest.fixture(name="clock")
def _clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The engine's ``perf_counter`` (stage timings and stream measurements), moved only by the test."""
    import stageflow._scheduler
    import stageflow._streams

    fake = FakeClock()
    monkeypatch.setattr(stageflow._scheduler, "_perf", fake)
    monkeypatch.setattr(stageflow._streams, "_perf", fake)
    return fake


@pytest.fixture(name="utc")
def _utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC while the test runs (``TZ=UTC``, then ``time.tzset()``); restored afterwards."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
