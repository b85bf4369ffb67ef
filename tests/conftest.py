"""Fixtures shared by the whole test suite (keep generic; append new fixtures at the end)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from stageflow import InMemoryEventSink, StageContext, set_event_sink

from ._support import make_ctx


@pytest.fixture(name="sink")
def _sink() -> InMemoryEventSink:
    """A fresh in-memory event sink."""
    return InMemoryEventSink()


@pytest.fixture(name="make_ctx")
def _make_ctx() -> Callable[..., StageContext]:
    """The ``make_ctx(sink=..., data=..., text=...)`` entry-context factory."""
    return make_ctx


@pytest.fixture(name="process_sink")
def _process_sink() -> Iterator[InMemoryEventSink]:
    """An in-memory sink installed as the process sink, reset afterwards."""
    sink = InMemoryEventSink()
    set_event_sink(sink)
    try:
        yield sink
    finally:
        set_event_sink(None)
