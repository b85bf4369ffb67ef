"""The entry context of a run, built from plain values (``StageGraph.run(input_text=...)``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._context import PipelineTimer, StageContext, StageInputs
from ._snapshot import ContextSnapshot, RunIdentity

if TYPE_CHECKING:
    from ._events import EventSink

__all__ = ("ENTRY_STAGE_NAME", "entry_context", "not_a_context_error")

ENTRY_STAGE_NAME = "pipeline_entry"
"""The ``stage_name`` of an entry context built by stageflow."""


def entry_context(
    *,
    input_text: str | None = None,
    data: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    event_sink: EventSink | None = None,
    run_id: RunIdentity | None = None,
) -> StageContext:
    """A fresh entry ``StageContext``: a new snapshot, empty inputs, a timer started now."""
    snapshot = ContextSnapshot(
        run_id=RunIdentity() if run_id is None else run_id,
        input_text=input_text,
        metadata=dict(metadata or {}),
    )
    return StageContext(
        snapshot=snapshot,
        inputs=StageInputs(snapshot=snapshot),
        stage_name=ENTRY_STAGE_NAME,
        timer=PipelineTimer(),
        event_sink=event_sink,
        data=data,
    )


def not_a_context_error(value: object) -> TypeError:
    """The error for ``graph.run(value)`` when ``value`` is not a ``StageContext``."""
    hint = (
        f"graph.run(input_text={value!r})"
        if isinstance(value, str)
        else "graph.run(input_text=..., data=..., metadata=..., event_sink=...)"
    )
    return TypeError(
        f"graph.run() takes a StageContext or keyword arguments, not {type(value).__name__} {value!r:.80}; "
        f"use {hint}, or pass an entry StageContext"
    )
