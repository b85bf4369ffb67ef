"""The event taxonomy as OpenTelemetry sees it: one description of each core event, shared by every view.

Each event of a traced run is described once (``describe``) by the run's tracing state
(``TracingInterceptor``, which receives the run's events itself): that one ``TaxonomyEvent`` becomes a
span event on its span and, handed to an ``OtlpEventSink``, one increment of ``stageflow.events.emitted``
and, when log records are switched on, an OTLP log record. So the views carry the same static name and the
same attributes, in the core's order, by construction. An ``OtlpEventSink`` of an untraced run describes
the events it is given itself.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.util.types import AttributeValue

from . import semconv
from ._content import ErrorDetails, ErrorRedactor, clean_text, redact_error_message, redacted_message

__all__ = ("TERMINAL", "TaxonomyEvent", "describe")

TERMINAL = frozenset({"completed", "failed", "skipped", "cancelled"})
"""Outcomes that end a stage (the last event of its last attempt)."""

_STAGE_ATTRIBUTES: Mapping[str, str] = {
    "stage": semconv.STAGE_NAME,
    "kind": semconv.STAGE_KIND,
    "wait": semconv.STAGE_WAIT_DURATION,
    "dependencies": semconv.STAGE_DEPENDENCIES,
    "attempts": semconv.STAGE_ATTEMPT,
    "attempt": semconv.STAGE_ATTEMPT,
    "duration": semconv.STAGE_DURATION_ATTRIBUTE,
    "delay": semconv.STAGE_RETRY_DELAY,
    "error": semconv.EXCEPTION_MESSAGE,
    "dispatch": semconv.STAGE_DISPATCH_DURATION,
    "work": semconv.STAGE_WORK,
    "chunks": semconv.STAGE_CHUNKS,
    "time_to_first_chunk": semconv.STAGE_TIME_TO_FIRST_CHUNK,
    "time_per_output_chunk": semconv.STAGE_TIME_PER_OUTPUT_CHUNK,
}
"""Event data key to span event / log record attribute, for ``stage.*`` events."""

_LOOP_BLOCKED_ATTRIBUTES: Mapping[str, str] = {
    "stage": semconv.STAGE_NAME,
    "kind": semconv.STAGE_KIND,
    "duration": semconv.STAGE_LOOP_BLOCK_DURATION,
    semconv.CODE_FILE_PATH: semconv.CODE_FILE_PATH,
    semconv.CODE_LINE_NUMBER: semconv.CODE_LINE_NUMBER,
}
"""The same for ``stage.{name}.loop_blocked``: its ``duration`` is the block's, not the stage's."""

_PIPELINE_ATTRIBUTES: Mapping[str, str] = {
    "stage": semconv.STAGE_NAME,
    "stages": semconv.PIPELINE_STAGES,
    "version": semconv.PIPELINE_VERSION,
    "duration": semconv.RUN_DURATION,
    "critical_path": semconv.RUN_CRITICAL_PATH,
    "error": semconv.EXCEPTION_MESSAGE,
}
"""Event data key to attribute, for ``pipeline.*`` and other events."""

_REASON = {
    "stage.skipped": semconv.STAGE_SKIP_REASON,
    "stage.cancelled": semconv.STAGE_CANCEL_REASON,
    "pipeline.cancelled": semconv.RUN_CANCEL_REASON,
}

_RESULTS = {
    "completed": semconv.RESULT_SUCCESS,
    "failed": semconv.RESULT_ERROR,
    "skipped": semconv.RESULT_SKIP,
    "cancelled": semconv.RESULT_CANCELLATION,
}
"""The result of a closing event that carries no ``category`` (one a caller emitted with a taxonomy type)."""
_CATEGORIES = frozenset(semconv.RESULTS)


@dataclass(slots=True, eq=False, repr=False)
class TaxonomyEvent:
    """One core event, described once for the span event, the counter and the log record."""

    type: str
    """The seed's event string (``stage.llm.completed``)."""
    kind: str
    """The taxonomy kind (``stage.completed``); the type itself outside the taxonomy."""
    name: str
    """The static event name (``stageflow.stage.completed``)."""
    outcome: str
    """The kind's last part (``completed``)."""
    stage: str | None
    """The stage of a ``stage.*`` event (also of other events that name one), else ``None``."""
    run_id: str | None
    pipeline: str | None
    timestamp: int
    """The event's own time, ns since the epoch (its ``timestamp``, else when it was described)."""
    attributes: dict[str, AttributeValue]
    """The attributes every view carries (log records add the run id and pipeline name)."""
    message: str | None = None
    """The event's ``error`` message as exported (redacted, cut, encodable); ``None`` if left out."""


def _kind(type: str) -> str:
    """``stage.{name}.completed`` -> ``stage.completed``; other types are returned unchanged."""
    if type.startswith("stage.") and type.count(".") >= 2:
        return "stage." + type.rsplit(".", 1)[1]
    return type


_NAMES: dict[tuple[tuple[str, ...], int | None], tuple[str, ...]] = {}
"""Lists of names (a stage's dependencies) as attribute values, by value: the same ones recur each run."""
_MAX_NAMES = 4096


def _attribute(value: object, limit: int | None) -> AttributeValue | None:
    if isinstance(value, str):
        if value.isascii() and (limit is None or len(value) <= limit):
            return value
        return clean_text(value, limit)
    if isinstance(value, float):  # durations, waits, delays: seconds, rounded to the microsecond
        return round(value, 6)
    if isinstance(value, int):  # bool too
        return value
    if isinstance(value, (list, tuple)):
        items = tuple(value)
        if not all(isinstance(v, str) for v in items):
            return None
        key = (items, limit)
        names = _NAMES.get(key)
        if names is not None:
            return names
        names = tuple(clean_text(v, limit) for v in items)
        if len(_NAMES) < _MAX_NAMES:
            _NAMES[key] = names
        return names
    return None


def _result(outcome: str, category: object) -> str | None:
    """A closing event's result: the core's ``category`` it carries, never re-derived."""
    result = _RESULTS.get(outcome)
    if result is not None and isinstance(category, str) and category in _CATEGORIES:
        return category
    return result


_Shape = tuple[str, str, str, bool, Mapping[str, str], "str | None", bool, str]
"""What an event's type alone decides: kind, static name, outcome, is it a stage event, its attribute
table, its reason attribute, is it in the taxonomy, and the type as exported."""

_SHAPES: dict[tuple[str, int | None], _Shape] = {}
_MAX_SHAPES = 4096


def _table(kind: str, is_stage: bool) -> Mapping[str, str]:
    if kind == "stage.loop_blocked":
        return _LOOP_BLOCKED_ATTRIBUTES
    return _STAGE_ATTRIBUTES if is_stage else _PIPELINE_ATTRIBUTES


def _shape(type: str, limit: int | None) -> _Shape:
    kind = _kind(type)
    known = kind in semconv.EVENTS
    is_stage = known and kind.startswith("stage.")
    shape: _Shape = (
        kind,
        semconv.EVENTS.get(kind, semconv.EVENT_OTHER),
        kind.rsplit(".", 1)[-1],
        is_stage,
        _table(kind, is_stage),
        _REASON.get(kind),
        known,
        clean_text(type, limit),
    )
    if len(_SHAPES) < _MAX_SHAPES:  # bounded: event types past the limit are worked out each time
        _SHAPES[type, limit] = shape
    return shape


def describe(
    type: str,
    data: Mapping[str, Any] | None,
    limit: int | None = None,
    redact: ErrorRedactor = redact_error_message,
) -> TaxonomyEvent:
    """Describe one event: its static name, its attributes and its own timestamp.

    Every string is cut to ``limit`` characters and made encodable; the ``error`` message passes through
    ``redact`` first (left out when it returns ``None``).
    """
    data = data or {}
    shape = _SHAPES.get((type, limit))
    if shape is None:
        shape = _shape(type, limit)
    kind, name, outcome, is_stage, table, reason_attribute, known, cleaned_type = shape
    attributes: dict[str, AttributeValue] = {semconv.EVENT_TYPE: cleaned_type}
    message: str | None = None
    error_type = data.get("error_type")
    for key, value in data.items():
        attribute = table.get(key)
        if attribute is None:
            continue
        # the common types inline (a call per value is most of an event's cost), the rest in _attribute
        cls = value.__class__
        if cls is float:
            attributes[attribute] = round(value, 6)
            continue
        if cls is str and key != "error":
            attributes[attribute] = (
                value
                if value.isascii() and (limit is None or len(value) <= limit)
                else clean_text(value, limit)
            )
            continue
        if cls is int:
            attributes[attribute] = value
            continue
        if key == "error":
            if not isinstance(value, str) or not value:
                continue
            pipeline, stage = data.get("pipeline"), data.get("stage")
            details = ErrorDetails(
                error_type if isinstance(error_type, str) and error_type else semconv.OTHER,
                value,
                pipeline if isinstance(pipeline, str) else None,
                stage if isinstance(stage, str) else None,
            )
            message = redacted_message(redact, details, limit)
            if message is not None:
                attributes[attribute] = message
        elif (converted := _attribute(value, limit)) is not None:
            attributes[attribute] = converted
    if reason_attribute is not None and isinstance(reason := data.get("reason"), str):
        attributes[reason_attribute] = clean_text(reason, limit)
    if isinstance(error_type, str) and error_type:
        attributes[semconv.ERROR_TYPE] = clean_text(error_type, limit)
    result = _result(outcome, data.get("category")) if known else None
    if result is not None:
        attributes[semconv.STAGE_RESULT if is_stage else semconv.RUN_RESULT] = result
    stage = data.get("stage")
    run_id = data.get("run_id")
    pipeline = data.get("pipeline")
    timestamp = data.get("timestamp")
    return TaxonomyEvent(
        type,
        kind,
        name,
        outcome,
        stage if isinstance(stage, str) else None,
        run_id if isinstance(run_id, str) else None,
        pipeline if isinstance(pipeline, str) else None,
        int(timestamp * 1e9) if isinstance(timestamp, int | float) else time.time_ns(),
        attributes,
        message,
    )
