"""Helpers for testing pipelines.

Example::

    from stageflow.testing import make_context, run_graph

    results = await run_graph(pipeline.build(), input_text="hi", data={"authenticated": True})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._context import StageContext
from ._entry import entry_context
from ._events import EventSink, InMemoryEventSink, RecordedEvent
from ._graph import StageGraph
from ._results import RunResult
from ._snapshot import RunIdentity
from ._store import InMemoryRunStore

__all__ = (
    "InMemoryEventSink",
    "InMemoryRunStore",
    "RecordedEvent",
    "make_context",
    "run_graph",
)


def make_context(
    *,
    input_text: str | None = None,
    data: Mapping[str, Any] | None = None,
    event_sink: EventSink | None = None,
    metadata: Mapping[str, Any] | None = None,
    run_id: RunIdentity | None = None,
) -> StageContext:
    """An entry ``StageContext`` for ``StageGraph.run()`` with a fresh ``RunIdentity``.

    Args:
        input_text: the snapshot's ``input_text``.
        data: the initial ``ctx.data`` of the run.
        event_sink: the run's sink (``None``: the process sink).
        metadata: the snapshot's metadata (e.g. a ``traceparent``).
        run_id: the run identity (default: a fresh one).
    """
    return entry_context(
        input_text=input_text, data=data, metadata=metadata, event_sink=event_sink, run_id=run_id
    )


async def run_graph(
    graph: StageGraph,
    *,
    input_text: str | None = None,
    data: Mapping[str, Any] | None = None,
    event_sink: EventSink | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> RunResult:
    """Run ``graph`` once with a context from ``make_context(...)``."""
    return await graph.run(input_text=input_text, data=data, event_sink=event_sink, metadata=metadata)
