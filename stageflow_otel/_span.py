"""Run and stage spans recorded by stageflow and handed to the SDK's own span processors.

Why not ``Tracer.start_span``: the SDK's span re-validates every attribute of every span, event and link
(``BoundedAttributes``) and takes a lock per call. A stage span's attributes are built and cleaned once per
graph (``_tracing._StageStatic``), its events once by the taxonomy (``_taxonomy.describe``), so that work is
the largest share of telemetry's cost on the event loop and buys nothing; a run span's likewise (its name,
pipeline name and version once per graph). ``StageSpans`` starts a run or stage span the way the SDK's
tracer does, through the provider's own parts:

* the tracer's **sampler** decides (``should_sample`` with the span's name, kind, attributes and links);
  a span it drops is a ``NonRecordingSpan`` with a fresh span id, so spans opened under it follow suit;
* the tracer's **id generator** gives the span id (and a root span's trace id), a parent's trace id
  is kept;
* the tracer's **span processors** get ``on_start`` when the span starts and ``on_end`` when it ends, with
  the span itself (an SDK ``ReadableSpan``), so batch processors, exporters and the user's own
  processors see what they would see from the SDK;
* the **span limits** of the tracer hold: attributes, events and links past their count limits are dropped
  oldest first and counted on the span (``dropped_attributes`` and so on, as the SDK does), values set by
  user code are cut to the attribute value length limit.

The span is a real recording span while the stage runs: code inside ``execute()`` that reads the current
span can set attributes, add events, record exceptions and set the status, and spans it opens are its
children. It is not thread-safe beyond what a stage does (a sync stage's thread uses it while the loop
does not). ``of`` returns ``None`` for a tracer that is not the SDK's: those spans go through
``start_span``.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from time import time_ns
from types import MappingProxyType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

from . import semconv
from ._content import clean_text

__all__ = ("RecordedSpan", "StageSpans")

logger = logging.getLogger("stageflow_otel")

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_RANDOM = TraceFlags.RANDOM_TRACE_ID
_SAMPLED_RANDOM = TraceFlags(TraceFlags.SAMPLED | _RANDOM)
_NOT_SAMPLED_RANDOM = TraceFlags(TraceFlags.DEFAULT | _RANDOM)
_INTERNAL = SpanKind.INTERNAL
_UNSET = Status(StatusCode.UNSET)


def _clean(value: object, limit: int | None) -> types.AttributeValue | None:
    """A value user code set, as an attribute value (``None``: not a valid one, left out)."""
    if isinstance(value, str):
        return clean_text(value, limit)
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        items = tuple(value)
        kinds = {type(v) for v in items if v is not None}
        if len(kinds) > 1 or not kinds <= {str, bool, int, float}:
            return None
        return tuple(clean_text(v, limit) if isinstance(v, str) else v for v in items)
    return None


def _cleaned(attributes: types.Attributes, limit: int | None) -> dict[str, types.AttributeValue]:
    out: dict[str, types.AttributeValue] = {}
    for key, value in (attributes or {}).items():
        cleaned = _clean(value, limit)
        if isinstance(key, str) and key and cleaned is not None:
            out[key] = cleaned
    return out


class StageSpans:
    """Starts stage spans through an SDK tracer's sampler, id generator, span processors and limits."""

    __slots__ = ("_ids", "_limits", "_processor", "_resource", "_sampler", "_scope")

    def __init__(self, tracer: SdkTracer) -> None:
        self._sampler = tracer.sampler
        self._ids = tracer.id_generator
        self._processor = tracer.span_processor
        self._resource = tracer.resource
        self._scope = tracer._instrumentation_scope
        limits = getattr(tracer, "_span_limits", None)
        self._limits: SpanLimits = limits if isinstance(limits, SpanLimits) else SpanLimits()

    @property
    def attribute_length(self) -> int | None:
        """The span attribute value length limit: clean values are cut to it."""
        return self._limits.max_span_attribute_length

    @classmethod
    def of(cls, tracer: trace.Tracer) -> StageSpans | None:
        """The stage span starter of an SDK ``tracer``; ``None`` for any other tracer."""
        if type(tracer) is not SdkTracer:
            return None
        return cls(tracer)

    def start(
        self,
        name: str,
        parent: otel_context.Context | None,
        parent_span: SpanContext | None,
        attributes: dict[str, types.AttributeValue],
        links: Sequence[Link],
        start_time: int,
    ) -> trace.Span:
        """Start a span under ``parent_span`` (whose context ``parent`` holds; ``None``: the current one).

        A stage span's parent is its run span; a run span's is the span its context holds, if valid
        (local or remote), else none: a root span with a fresh trace id, as the SDK's tracer does.
        ``attributes`` must be clean attribute values (they are kept as given); ``links`` likewise.
        """
        random: int  # the W3C random trace id flag: the id generator's for a new trace, else the parent's
        if parent_span is None or not parent_span.is_valid:
            parent_span = None
            trace_id = self._ids.generate_trace_id()
            random = self._ids.is_trace_id_random()
        else:
            trace_id = parent_span.trace_id
            random = parent_span.trace_flags & _RANDOM
        result = self._sampler.should_sample(parent, trace_id, name, _INTERNAL, attributes, links)
        decision = result.decision
        if decision.is_sampled():  # type: ignore[no-untyped-call]
            flags = _SAMPLED_RANDOM if random else _SAMPLED
        else:
            flags = _NOT_SAMPLED_RANDOM if random else _NOT_SAMPLED
        context = SpanContext(trace_id, self._ids.generate_span_id(), False, flags, result.trace_state)
        if not decision.is_recording():  # type: ignore[no-untyped-call]
            return NonRecordingSpan(context)
        sampled = result.attributes
        if sampled is not None and len(sampled) and sampled.keys() != attributes.keys():
            # the sampler changed the attributes: theirs, cleaned
            attributes = _cleaned(sampled, self._limits.max_span_attribute_length)
        span = RecordedSpan(self, name, context, parent_span, attributes, links, start_time)
        # processors are typed for the SDK's span; they use the API span and ReadableSpan this one is
        self._processor.on_start(span, parent_context=parent)  # type: ignore[arg-type]
        return span


class RecordedSpan(trace.Span, ReadableSpan):
    """A run or stage span: recording until it ends, then handed to the span processors."""

    def __init__(
        self,
        owner: StageSpans,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, types.AttributeValue],
        links: Sequence[Link],
        start_time: int,
    ) -> None:
        limits = owner._limits
        max_links = limits.max_links
        max_attributes = limits.max_span_attributes
        dropped = 0
        if max_attributes is not None and len(attributes) > max_attributes:
            # as the SDK inserting them one by one: the oldest go
            dropped = len(attributes) - max_attributes
            attributes = dict(list(attributes.items())[dropped:])
        ReadableSpan.__init__(
            self,
            name=name,
            context=context,
            parent=parent,
            resource=owner._resource,
            attributes=attributes,
            events=[],
            links=(
                links
                if max_links is None or len(links) <= max_links
                else BoundedList.from_seq(max_links, links)
            ),
            kind=_INTERNAL,
            status=_UNSET,
            start_time=start_time,
            instrumentation_scope=owner._scope,
        )
        self._owner = owner
        self._dropped_attributes = dropped

    # --------------------------------------------------------------------------- ReadableSpan

    @property
    def attributes(self) -> types.Attributes:
        return MappingProxyType(self._attributes or {})

    @property
    def dropped_attributes(self) -> int:
        return self._dropped_attributes

    # ---------------------------------------------------------------------------- trace.Span

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self._end_time is not None or not isinstance(key, str) or not key:
            return
        cleaned = _clean(value, self._owner._limits.max_span_attribute_length)
        if cleaned is None:
            logger.debug("stageflow_otel: invalid value for span attribute %r left out", key)
            return
        self.put(key, cleaned)

    def put(self, key: str, value: types.AttributeValue) -> None:
        """Set an attribute whose value is clean already (stageflow's own); ignored once the span ended."""
        if self._end_time is not None:
            return
        attributes: dict[str, types.AttributeValue] = self._attributes  # type: ignore[assignment]
        if key in attributes:
            del attributes[key]  # re-inserted last, as the SDK keeps the most recent last
        else:
            limit = self._owner._limits.max_span_attributes
            if limit is not None and len(attributes) >= limit:
                if limit == 0:
                    self._dropped_attributes += 1
                    return
                del attributes[next(iter(attributes))]
                self._dropped_attributes += 1
        attributes[key] = value

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self._end_time is not None:
            return
        self.put_event(name, _cleaned(attributes, self._owner._limits.max_attribute_length), timestamp)

    def put_event(
        self, name: str, attributes: Mapping[str, types.AttributeValue], timestamp: int | None
    ) -> None:
        """Add an event whose attributes are clean already (the taxonomy's); ignored once the span ended
        (a late event, from a task that outlived its run: the exporter's thread may be reading the span)."""
        if self._end_time is not None:
            return
        events = self._events
        limit = self._owner._limits.max_events
        if limit is not None and isinstance(events, list) and len(events) >= limit:
            events = self._events = BoundedList.from_seq(limit, events)
        events.append(Event(name, attributes, timestamp))  # type: ignore[attr-defined]

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end_time is not None or not context.is_valid:
            return
        links = self._links
        limit = self._owner._limits.max_links
        if not isinstance(links, BoundedList):
            links = self._links = BoundedList.from_seq(limit, links)
        links.append(Link(context, _cleaned(attributes, self._owner._limits.max_attribute_length)))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        cls = type(exception)
        module = cls.__module__
        event: dict[str, Any] = {
            semconv.EXCEPTION_TYPE: cls.__qualname__
            if module in (None, "builtins")
            else f"{module}.{cls.__qualname__}",
            semconv.EXCEPTION_MESSAGE: str(exception),
            semconv.EXCEPTION_STACKTRACE: "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event(semconv.EXCEPTION_EVENT, event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time if end_time is not None else time_ns()
        self._owner._processor.on_end(self)

    def __repr__(self) -> str:
        return f"RecordedSpan(name={self._name!r}, context={self._context!r})"
