"""``TracingInterceptor``: one span per run and per stage attempt, with dependency links.

It runs past 500 lines because a run's span tree, its span events and the W3C context rules are one owner's
job: splitting them would bring back a second owner of the same spans.

Span tree of a run::

    pipeline {name}            INTERNAL; parent = ambient span, else snapshot.metadata["traceparent"],
      stage {a}                           else the TRACEPARENT environment variable
      stage {b}  --link-->  a  INTERNAL; parent = the run span, always; one link per dependency

Spans are started with ``Tracer.start_span`` and an explicit parent context; a span is made current only
around ``call_next``, inside one coroutine frame, so ``execute()`` sees its stage span as the current span
and spans it opens become that span's children, also when stages run concurrently.

Span events: the tracing side receives every event of a traced run itself (``run_sink``: the run span
starts before the run's first event, and each event goes on its span, then on to the sink the run was
given, whatever sink that is),
and puts it on the span it belongs to as a span event, with the event's own timestamp, in the stream's
order: ``pipeline.*`` on the run span, ``stage.{name}.*`` on that stage's span (the run span for a stage
that never had one, such as a conditional stage the executor skipped). Each stage span starts with its
``started`` event, and ends at its closing event
(``completed|failed|skipped|cancelled``, or ``retrying`` between two attempts) at the later of that
event's time and the attempt's return: one owner opens, annotates and ends every span. A closing event
whose result differs from how the attempt ended (an interceptor outside the span fell back: ``skipped``)
decides the span's result. A sync stage's closing event also puts its dispatch time
(``stageflow.stage.dispatch.duration``) and, after a cancelled hop, what became of its work
(``stageflow.stage.work``: ``stopped`` or ``abandoned``) on its span. A streaming stage's span gets one
``stageflow.stage.first_chunk`` span event at its first chunk (never one per chunk), with
``stageflow.stage.time_to_first_chunk``, which its span carries from then on; its closing event adds
``stageflow.stage.chunks`` and ``stageflow.stage.time_per_output_chunk``. The run span of a pipeline with a
streaming stage carries the run's ``stageflow.run.time_to_first_output``. When the run's sink is an
``OtlpEventSink``, it is handed each event as described here (counted, and a log record if switched on);
``OtlpEventSink(span_events=False)`` keeps its runs' events off the spans.

Example::

    from stageflow_otel import TracingInterceptor

    graph = pipeline.build(interceptors=[TracingInterceptor(tracer_provider=provider)])
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any, TypeAlias

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from stageflow import (
    EventSink,
    PipelineContext,
    RunResult,
    StageContext,
    StageGraph,
    StageInfo,
    StageOutput,
    reset_run_trace_id,
    set_run_trace_id,
)
from stageflow import __version__ as _stageflow_version
from stageflow.interceptors import CallNext, Interceptor, RunNext

from . import semconv
from ._content import (
    ErrorDetails,
    ErrorRedactor,
    clean_text,
    redact_error_message,
    redacted_message,
    redacted_stacktrace,
    value_length_limit,
)
from ._export import Backpressure, backpressure_of
from ._once import LogOnce
from ._outcome import Outcome, is_api_only, observe_run, observe_stage
from ._sink import OtlpEventSink
from ._span import RecordedSpan, StageSpans
from ._taxonomy import TERMINAL, TaxonomyEvent, describe

__all__ = ("ContentHook", "TracingInterceptor", "inject_context")

logger = logging.getLogger("stageflow_otel")

ContentHook: TypeAlias = Callable[[StageInfo, StageOutput], Mapping[str, AttributeValue] | None]
"""A redaction hook: given a stage and its output, the attributes to record (``None`` or ``{}`` for none).

Each returned key ``k`` becomes the stage span attribute ``stageflow.stage.output.{k}``. Return only
values that are safe to export: nothing of the output is captured unless the hook returns it.
"""

_W3C = TraceContextTextMapPropagator()
_INTERNAL = SpanKind.INTERNAL
_LINK_ATTRS: Mapping[str, AttributeValue] = {semconv.LINK_TYPE: semconv.LINK_TYPE_DEPENDENCY}


def inject_context(carrier: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Write the current trace context into ``carrier`` (W3C ``traceparent``/``tracestate`` by default).

    Use it on outgoing requests and messages so the receiver continues the stage's trace, and to fill
    ``ContextSnapshot(metadata=...)`` for a run started elsewhere. The globally configured propagator is
    used (``OTEL_PROPAGATORS``; W3C trace context and baggage unless changed).

    Args:
        carrier: the headers or metadata to write into; a new dict when omitted.

    Returns:
        The carrier.

    .. versionadded:: 0.10
    """
    if carrier is None:
        carrier = {}
    propagate.inject(carrier)
    return carrier


class _StageStatic:
    """What a stage's spans share across runs: computed once per graph."""

    __slots__ = ("attributes", "dependencies", "span_name")

    def __init__(self, info: StageInfo, limit: int | None = None) -> None:
        self.span_name = clean_text(semconv.SPAN_STAGE_PREFIX + info.name, limit)
        self.dependencies = tuple(dict.fromkeys(info.dependencies))
        # clean once here: spans are recorded with these values as they are (``_span``)
        attributes: dict[str, AttributeValue] = {
            semconv.PIPELINE_NAME: clean_text(info.pipeline, limit),
            semconv.STAGE_NAME: clean_text(info.name, limit),
            semconv.STAGE_KIND: clean_text(info.kind.value, limit),
        }
        if self.dependencies:
            attributes[semconv.STAGE_DEPENDENCIES] = tuple(clean_text(d, limit) for d in self.dependencies)
        function = _function_name(info.runner)
        if function:
            attributes[semconv.CODE_FUNCTION_NAME] = clean_text(function, limit)
        self.attributes: Mapping[str, AttributeValue] = attributes


def _function_name(runner: object) -> str | None:
    target = runner if callable(runner) and not hasattr(runner, "execute") else None
    if target is None:
        cls = type(runner)
        return f"{cls.__module__}.{cls.__qualname__}.execute"
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(qualname, str):
        return None
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


class _StageSpan:
    """A stage attempt's span: open from the stage's ``started`` event to its closing event.

    ``end_time`` is set when the attempt returned, ``outcome`` to how it ended as the attempt saw it; the
    core's closing event (``completed|failed|skipped|cancelled``, or ``retrying`` between attempts) ends
    the span, and a closing event whose result differs (an interceptor outside the span fell back: a skip)
    decides the span's result.
    """

    __slots__ = ("end_time", "name", "outcome", "span")

    def __init__(self, span: trace.Span, name: str) -> None:
        self.span = span
        self.name = name
        self.end_time: int | None = None
        self.outcome: Outcome | None = None


def _add_event(span: trace.Span, event: TaxonomyEvent) -> None:
    if type(span) is RecordedSpan:  # the taxonomy's attributes are clean: no second pass
        span.put_event(event.name, event.attributes, event.timestamp)
    else:
        span.add_event(event.name, event.attributes, event.timestamp)


_CLOSING_ATTRIBUTES = (
    semconv.STAGE_DISPATCH_DURATION,
    semconv.STAGE_WORK,
    semconv.STAGE_CHUNKS,
    semconv.STAGE_TIME_TO_FIRST_CHUNK,
    semconv.STAGE_TIME_PER_OUTPUT_CHUNK,
)
_FIRST_CHUNK_ATTRIBUTES = (semconv.STAGE_TIME_TO_FIRST_CHUNK,)
_ERROR_RESULTS = frozenset({semconv.RESULT_FAILURE, semconv.RESULT_ERROR, semconv.RESULT_TIMEOUT})


def _copy(span: trace.Span, event: TaxonomyEvent, keys: tuple[str, ...]) -> None:
    """What a stage's event measured goes on its span too: a sync stage's closing event says what its hop
    cost and what became of its work; a streaming stage's ``first_chunk`` and closing events say when its
    first chunk came, how many it yielded and how fast."""
    attributes = event.attributes
    for key in keys:
        value = attributes.get(key)
        if value is not None:
            span.set_attribute(key, value)


class _RunTrace:
    """The per-run state: the run span, its context, every stage span so far, and the run's events.

    The run's sink is wrapped (``_TracedSink``, from ``run_sink``) so every event of the run comes here
    first, in the core's order (see the module docs for where each goes), then goes on to the run's sink.
    """

    __slots__ = (
        "context",
        "exporter",
        "interceptor",
        "open",
        "pending",
        "run",
        "run_id",
        "span",
        "span_context",
        "span_events",
        "stage_spans",
        "static",
    )

    def __init__(
        self,
        interceptor: TracingInterceptor,
        run: PipelineContext,
        span: trace.Span,
        context: otel_context.Context,
        static: Mapping[str, _StageStatic],
        sink: EventSink,
    ) -> None:
        self.interceptor = interceptor
        self.run = run
        self.run_id = str(run.run_id)
        self.span = span
        self.span_context = span.get_span_context()
        self.context = context
        self.static = static
        self.stage_spans: dict[str, trace.SpanContext] = {}
        self.open: dict[str, _StageSpan] = {}
        """The span of each stage's current (or last, not yet ended) attempt."""
        self.pending: dict[str, list[TaxonomyEvent]] = {}
        """Events of stages with no span yet (``started``), for the span about to start."""
        otlp = sink if isinstance(sink, OtlpEventSink) else None
        self.span_events = otlp is None or otlp.span_events
        self.exporter = (
            otlp
            if otlp is not None and otlp._describes_like(interceptor._limit, interceptor._redact)
            else None
        )
        """The run's OTLP event sink when it can take the events as described here (described once)."""

    def on_event(self, type: str, data: dict[str, Any] | None) -> bool:
        """Take one event of the run; ``True`` when the run's OTLP event sink got it too (never raises)."""
        try:
            event = describe(type, data, self.interceptor._limit, self.interceptor._redact)
            self.add(event)
            exporter = self.exporter
            if exporter is None:
                return False
            context = self.context_of(event.stage) if exporter.log_records else None
            exporter._export(event, data, context)
            return True
        except Exception as exc:
            self.interceptor._sdk_failed(exc)
            return False

    def _put(self, span: trace.Span, event: TaxonomyEvent) -> None:
        if self.span_events:
            _add_event(span, event)

    def add(self, event: TaxonomyEvent) -> None:
        """Put one event of this run on its span; end the stage span it closes."""
        stage = event.stage
        if stage is None or event.kind.startswith("pipeline."):
            self._put(self.span, event)
            return
        attempt = self.open.get(stage)
        # stage.{name}.* types: the taxonomy (and custom types shaped like it, which never close a span)
        taxonomy = event.kind.startswith("stage.")
        if attempt is None:
            if not taxonomy:  # another event naming a stage that has no span: the run's
                self._put(self.span, event)
            elif event.outcome in TERMINAL:  # the stage never had a span: its events go to the run span
                for waiting in self.pending.pop(stage, ()):
                    self._put(self.span, waiting)
                self._put(self.span, event)
            else:
                self.pending.setdefault(stage, []).append(event)
            return
        span = attempt.span
        self._put(span, event)
        if not taxonomy:
            return
        closing = event.outcome in TERMINAL
        if closing:
            _copy(span, event, _CLOSING_ATTRIBUTES)
        elif event.outcome == "first_chunk":
            _copy(span, event, _FIRST_CHUNK_ATTRIBUTES)
        end = attempt.end_time
        if end is not None and (closing or event.outcome == "retrying"):
            del self.open[stage]
            self._end(attempt, event if closing else None, max(end, event.timestamp))

    def _end(self, attempt: _StageSpan, closing: TaxonomyEvent | None, end: int | None) -> None:
        """Record how the attempt ended (the core's closing event decides a different result) and end it."""
        span = attempt.span
        outcome = attempt.outcome
        result = None if closing is None else closing.attributes.get(semconv.STAGE_RESULT)
        try:
            if isinstance(result, str) and (outcome is None or outcome.result != result):
                # settled otherwise than the attempt ended (a fallback outside this span: a skip)
                attributes: dict[str, AttributeValue] = {semconv.STAGE_RESULT: result}
                assert closing is not None
                error_type = closing.attributes.get(semconv.ERROR_TYPE)
                if result in _ERROR_RESULTS:
                    attributes[semconv.ERROR_TYPE] = error_type if error_type is not None else semconv.OTHER
                    span.set_status(Status(StatusCode.ERROR, closing.message))
                span.set_attributes(attributes)
            elif outcome is not None:
                self.interceptor._end_stage_outcome(span, self.run.pipeline_name, attempt.name, outcome)
        finally:  # the attempt has left ``open``: nothing else would end its span
            span.end(end)

    def context_of(self, stage: str | None) -> otel_context.Context:
        """The context of the span ``stage``'s events go on: its open attempt's, else the run's."""
        attempt = self.open.get(stage) if stage is not None else None
        if attempt is None:
            return self.context
        return trace.set_span_in_context(attempt.span, self.context)

    def start_time(self, stage: str) -> int | None:
        """The start time of ``stage``'s next span: its waiting ``started`` event's, if any."""
        waiting = self.pending.get(stage)
        return min(waiting[0].timestamp, time.time_ns()) if waiting else None

    def opened(self, stage: str, span: trace.Span) -> _StageSpan:
        """Register ``stage``'s new attempt span and give it the stage's waiting events."""
        attempt = _StageSpan(span, stage)
        self.open[stage] = attempt
        for waiting in self.pending.pop(stage, ()):
            self._put(span, waiting)
        return attempt

    def close(self) -> None:
        """At the run's end: events that never found their span go to the run span; end every span left.

        Every span left is ended whatever raises on the way; what raises goes to the interceptor's
        once-logged reporter.
        """
        failed = self.interceptor._sdk_failed
        pending, self.pending = self.pending, {}
        try:
            for events in pending.values():
                for event in events:
                    self._put(self.span, event)
        except Exception as exc:
            failed(exc)
        attempts, self.open = list(self.open.values()), {}
        for attempt in attempts:
            try:
                self._end(attempt, None, attempt.end_time)
            except Exception as exc:
                failed(exc)


_failed_sinks: weakref.WeakSet[object] = weakref.WeakSet()
_failed_sink_ids: set[int] = set()


def _sink_failed(sink: object, exc: Exception) -> None:
    """Log once per sink that a run's sink raised (the sink, not each run's wrapper of it)."""
    try:
        if sink in _failed_sinks:
            return
        _failed_sinks.add(sink)
    except TypeError:  # not weak-referenceable: once per id
        if id(sink) in _failed_sink_ids:
            return
        _failed_sink_ids.add(id(sink))
    logger.error("stageflow_otel: event sink %r failed and is ignored: %r", sink, exc)


class _TracedSink:
    """A traced run's sink: every event goes on its span first, then on to the sink the run was given.

    Attributes other than the two emit methods are the wrapped sink's, so code reading the run's sink
    (``ctx.event_sink.events`` of a recording sink) keeps working.
    """

    __slots__ = ("_state", "inner")

    def __init__(self, state: _RunTrace, inner: EventSink) -> None:
        self._state = state
        self.inner = inner
        """The sink the run was given."""

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """Put the event on its span, then hand it to the run's sink (whose failures the core isolates)."""
        state = self._state
        if state.on_event(type, data):
            return
        token = None
        if state.interceptor._state.get(None) is not state:
            # emitted outside the run's context (the loop monitor's heartbeat reports a block): the run's
            # sink sees the context of the span the event went on, as it would inside the run
            stage = None if data is None else data.get("stage")
            token = otel_context.attach(state.context_of(stage if isinstance(stage, str) else None))
        try:
            self.inner.try_emit(type=type, data=data)
        except Exception as exc:  # the run's sink never affects the run (nor this run's spans)
            _sink_failed(self.inner, exc)
        finally:
            if token is not None:
                otel_context.detach(token)

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        """``try_emit``'s awaitable twin: the run's sink's ``emit`` is awaited."""
        if not self._state.on_event(type, data):
            try:
                await self.inner.emit(type=type, data=data)
            except Exception as exc:
                _sink_failed(self.inner, exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"_TracedSink({self.inner!r})"


class TracingInterceptor(Interceptor):
    """Trace every run and every stage attempt (priority 10: outermost of the OTel interceptors).

    Args:
        tracer_provider: the provider to trace with; by default the global provider, looked up at each
            run until a real SDK provider is installed, then cached.
        capture_content: a redaction hook (``ContentHook``) deciding which parts of a stage's output to
            record on its span. Without it no stage input or output is ever captured.
        redact_error: the hook every error message passes through before it reaches a span status or
            an ``exception`` span event (default ``redact_error_message``; ``error_type_only`` exports
            no message, only ``error.type``).
        stacktrace_source_lines: put the source line of each frame in the ``exception`` span event's
            ``exception.stacktrace`` too (default ``False``: file, line number and function only, as a
            source line may hold a literal secret the redaction hook never sees).

    Span names and status descriptions are cut to ``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`` (else
    ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``, else 4096 characters); attributes are cut by the SDK's own
    span limits, which ``setup()`` sets the same way.

    When no SDK is configured (no global provider, a no-op provider, ``OTEL_SDK_DISABLED=true``) the
    interceptor passes every call straight through.

    .. versionadded:: 0.10
    """

    name = "tracing"
    priority = 10
    isolated = False  # never raises on its own: called without the isolation guard
    fail_open = True  # telemetry: if it ever failed before the stage, bypassing it is safe

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        capture_content: ContentHook | None = None,
        redact_error: ErrorRedactor = redact_error_message,
        stacktrace_source_lines: bool = False,
    ) -> None:
        self._provider = tracer_provider
        self._source_lines = stacktrace_source_lines
        self._capture = capture_content
        self._redact = redact_error
        self._limit = value_length_limit("span")
        self._tracer: Tracer | None = None
        self._spans: StageSpans | None = None
        self._resolved = False
        self._state: ContextVar[_RunTrace | None] = ContextVar(f"stageflow_otel.tracing.{id(self)}")
        self._prepared: ContextVar[_RunTrace | None] = ContextVar(
            f"stageflow_otel.tracing.prepared.{id(self)}", default=None
        )
        """The run ``run_sink`` started a span for, until its ``intercept_run`` takes it."""
        self._statics: weakref.WeakKeyDictionary[StageGraph, dict[str, _StageStatic]] = (
            weakref.WeakKeyDictionary()
        )
        self._run_heads: weakref.WeakKeyDictionary[StageGraph, tuple[int | None, str, str, str]] = (
            weakref.WeakKeyDictionary()
        )
        """Per graph: the attribute length limit, then its run span's name, pipeline name and version."""
        self._hook_failed = LogOnce(
            "stageflow_otel: capture_content hook raised %r; content not recorded (logged once)"
        )
        self._sdk_failed = LogOnce(
            "stageflow_otel: TracingInterceptor: the OpenTelemetry SDK raised %r; the affected spans are "
            "incomplete or missing, the pipeline is unaffected (logged once)"
        )
        self._backpressure: Backpressure | None = None
        if tracer_provider is not None:
            self._resolve()

    def _resolve(self) -> Tracer | None:
        """The tracer, or ``None`` while no real SDK is configured (cached once the answer is final)."""
        provider = self._provider if self._provider is not None else trace.get_tracer_provider()
        if is_api_only(provider):
            # A global provider may still be installed later; an injected no-op one never changes.
            self._resolved = self._provider is not None
            return None
        tracer = provider.get_tracer(semconv.INSTRUMENTATION_SCOPE, _stageflow_version)
        self._backpressure = backpressure_of(provider)
        self._resolved = True
        if not isinstance(tracer, trace.NoOpTracer):
            self._spans = StageSpans.of(tracer)
            self._tracer = tracer
        return self._tracer

    # ----------------------------------------------------------------------------------------- run

    def run_sink(self, run: PipelineContext, sink: EventSink) -> EventSink:
        """Start the run span and take the run's events, from its first (``pipeline.created``) on: each
        goes on its span, then on to ``sink``. A run head sampling drops (or no SDK) keeps ``sink``."""
        self._prepared.set(None)
        tracer = self._tracer
        if tracer is None and (self._resolved or (tracer := self._resolve()) is None):
            return sink
        graph = run.graph
        static = self._statics.get(graph)
        if static is None:
            static = {info.name: _StageStatic(info, self._limit) for info in graph.stages}
            self._statics[graph] = static
        try:
            parent = _parent_context(run)
            spans_of = self._spans
            if spans_of is not None:  # recorded here, as stage spans are: no second pass over its values
                limit = spans_of.attribute_length
                head = self._run_heads.get(graph)
                if head is None or head[0] != limit:
                    head = self._run_heads[graph] = (
                        limit,
                        clean_text(semconv.SPAN_PIPELINE_PREFIX + run.pipeline_name, self._limit),
                        clean_text(run.pipeline_name, limit),
                        clean_text(graph.version, limit),
                    )
                span = spans_of.start(
                    head[1],
                    parent,
                    trace.get_current_span(parent).get_span_context(),
                    {
                        semconv.PIPELINE_NAME: head[2],
                        semconv.PIPELINE_VERSION: head[3],
                        semconv.RUN_ID: clean_text(str(run.run_id), limit),
                    },
                    (),
                    time.time_ns(),
                )
            else:
                span = tracer.start_span(
                    clean_text(semconv.SPAN_PIPELINE_PREFIX + run.pipeline_name, self._limit),
                    context=parent,
                    kind=_INTERNAL,
                    attributes={
                        semconv.PIPELINE_NAME: run.pipeline_name,
                        semconv.PIPELINE_VERSION: graph.version,
                        semconv.RUN_ID: str(run.run_id),
                    },
                    record_exception=False,
                    set_status_on_exception=False,
                )
            # Built on the current context, not the extracted one, so ambient values (baggage) reach the
            # stages.
            state = _RunTrace(self, run, span, trace.set_span_in_context(span), static, sink)
        except Exception as exc:  # C9: the SDK failed to start the span; run untraced
            self._sdk_failed(exc)
            return sink
        self._prepared.set(state)
        # head sampling dropped the run: its stages (and the spans they open) follow the run span's
        # decision without spans of their own, and its events go to its sink as they are
        return _TracedSink(state, sink) if span.is_recording() else sink

    async def intercept_run(self, run: PipelineContext, call_next: RunNext) -> RunResult:
        """Make the run span (started by ``run_sink``) current for the run, so stage tasks inherit it, and
        end it with the run's outcome."""
        state = self._prepared.get(None)
        if state is None or state.run is not run:  # no SDK, or it failed to start the span
            return await call_next(run)
        self._prepared.set(None)
        span = state.span
        if not span.is_recording():
            return await self._untraced(run, call_next, state.context)
        try:
            token = otel_context.attach(state.context)
            span_context = state.span_context
            # run stores keep the id of a trace that is exported (sampled), so its link leads somewhere
            trace_id = format(span_context.trace_id, "032x") if span_context.trace_flags.sampled else None
        except Exception as exc:  # C9: never expected; run untraced
            self._sdk_failed(exc)
            return await call_next(run)
        state_token = self._state.set(state)
        trace_token = set_run_trace_id(trace_id)

        def ended(outcome: Outcome, results: RunResult | None) -> None:
            otel_context.detach(token)
            reset_run_trace_id(trace_token)
            self._state.reset(state_token)
            # Guarded: an SDK failure here must not replace the run's own result, error or cancellation.
            try:
                state.close()
                self._end_run(state, outcome, results)
            finally:
                span.end()

        result = await observe_run(run, call_next, ended, self._sdk_failed)
        await self._room()
        return result

    async def _untraced(
        self, run: PipelineContext, call_next: RunNext, run_context: otel_context.Context
    ) -> RunResult:
        """Run a run head sampling dropped under its non-recording span (user spans follow suit)."""
        token = otel_context.attach(run_context)
        try:
            return await call_next(run)
        finally:
            otel_context.detach(token)

    # --------------------------------------------------------------------------------------- stage

    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        """Run the stage attempt inside its own span, a child of the run span linked to its dependencies."""
        state = self._state.get(None)
        if state is None or state.run is not ctx.pipeline:
            return await call_next(ctx)
        static = state.static.get(stage.name)
        if static is None:  # a StageInfo the graph does not list (defensive; never expected)
            static = _StageStatic(stage, self._limit)
        spans = state.stage_spans
        links: list[Link] = []
        for dependency in static.dependencies:
            linked = spans.get(dependency)
            if linked is not None:
                links.append(Link(linked, _LINK_ATTRS))
        attributes = dict(static.attributes)
        attributes[semconv.RUN_ID] = state.run_id
        attributes[semconv.STAGE_ATTEMPT] = ctx.attempt
        attributes[semconv.STAGE_WAIT_DURATION] = max(0.0, ctx.began_at - ctx.ready_at)
        try:
            start_time = state.start_time(stage.name)
            spans_of = self._spans
            if spans_of is not None:
                span: trace.Span = spans_of.start(
                    static.span_name,
                    state.context,
                    state.span_context,
                    attributes,
                    links,
                    time.time_ns() if start_time is None else start_time,
                )
            else:
                assert self._tracer is not None
                span = self._tracer.start_span(
                    static.span_name,
                    context=state.context,
                    kind=_INTERNAL,
                    attributes=attributes,
                    links=links,
                    record_exception=False,
                    set_status_on_exception=False,
                    start_time=start_time,
                )
            attempt = state.opened(stage.name, span)
            spans[stage.name] = span.get_span_context()
            # On the current context, not the run's: values set around this span (baggage by an outer
            # interceptor) must reach execute(). The parent is explicit above.
            token = otel_context.attach(trace.set_span_in_context(span))
        except Exception as exc:  # C9: the SDK failed to start the span; run the stage untraced
            self._sdk_failed(exc)
            return await call_next(ctx)
        first_attempt = ctx.attempt

        def ended(outcome: Outcome | None, error: Exception | None, output: StageOutput | None) -> None:
            otel_context.detach(token)
            try:
                attempt.outcome = outcome
                if error is not None:
                    self._exception_event(span, stage, outcome, error)
                if self._capture is not None and output is not None:
                    self._capture_content(span, stage, output)
                if ctx.attempt != first_attempt:  # retried inside the span (RetryInterceptor): the last
                    span.set_attribute(semconv.STAGE_ATTEMPT, ctx.attempt)
            finally:
                # the core's closing event ends the span; until it comes, the attempt's end is kept
                attempt.end_time = time.time_ns()

        output = await observe_stage(ctx, call_next, ended, self._sdk_failed)
        pressure = self._backpressure
        if pressure is not None and pressure.parked:  # inline: no coroutine per stage when not parked
            await pressure.room()
        return output

    async def _room(self) -> None:
        """``complete`` mode (``setup()``): wait, without blocking the loop, for the spans parked on it."""
        pressure = self._backpressure
        if pressure is not None and pressure.parked:
            await pressure.room()

    def _message(self, outcome: Outcome, pipeline: str, stage: str | None) -> str | None:
        """The outcome's description as it may be exported: redacted, cut and encodable."""
        if not outcome.description:
            return None
        assert outcome.error_type is not None
        details = ErrorDetails(outcome.error_type, outcome.description, pipeline, stage)
        return redacted_message(self._redact, details, self._limit)

    def _exception_event(
        self, span: trace.Span, stage: StageInfo, outcome: Outcome | None, error: Exception
    ) -> None:
        """The ``exception`` span event of an attempt that raised (whatever the stage's outcome)."""
        message = None if outcome is None else self._message(outcome, stage.pipeline, stage.name)
        # Not span.record_exception: its message and stack trace would bypass the redaction hook.
        event: dict[str, AttributeValue] = {
            semconv.EXCEPTION_TYPE: clean_text(_qualified_name(error), self._limit),
            semconv.EXCEPTION_STACKTRACE: redacted_stacktrace(
                error, message, self._limit, source_lines=self._source_lines
            ),
        }
        if message is not None:
            event[semconv.EXCEPTION_MESSAGE] = message
        span.add_event(semconv.EXCEPTION_EVENT, event)

    def _end_stage_outcome(self, span: trace.Span, pipeline: str, stage: str, outcome: Outcome) -> None:
        if outcome.error_type is None:
            span.set_attribute(semconv.STAGE_RESULT, outcome.result)
            return
        message = self._message(outcome, pipeline, stage)
        span.set_attributes(
            {
                semconv.STAGE_RESULT: outcome.result,
                semconv.ERROR_TYPE: clean_text(outcome.error_type, self._limit),
            }
        )
        span.set_status(Status(StatusCode.ERROR, message))

    def _end_run(self, state: _RunTrace, outcome: Outcome, results: RunResult | None) -> None:
        message = None
        if outcome.error_type is not None:
            message = self._message(outcome, state.run.pipeline_name, None)
            outcome = outcome._replace(error_type=clean_text(outcome.error_type, self._limit))
        _end_run(state, outcome, results, message)

    def _capture_content(self, span: trace.Span, stage: StageInfo, output: StageOutput) -> None:
        assert self._capture is not None
        try:
            captured = self._capture(stage, output)
            if captured:
                span.set_attributes(
                    {
                        clean_text(semconv.STAGE_OUTPUT_PREFIX + k, self._limit): _clean_value(v, self._limit)
                        for k, v in captured.items()
                    }
                )
        except Exception as exc:  # C9: a broken hook never breaks the pipeline
            self._hook_failed(exc)


def _clean_value(value: AttributeValue, limit: int | None) -> AttributeValue:
    """A captured attribute value that encodes (a lone surrogate would fail its whole export batch)."""
    if isinstance(value, str):
        return clean_text(value, limit)
    if isinstance(value, tuple | list) and any(isinstance(v, str) for v in value):
        return tuple(clean_text(v, limit) if isinstance(v, str) else v for v in value)
    return value


def _qualified_name(error: BaseException) -> str:
    cls = type(error)
    module = getattr(cls, "__module__", "builtins")
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _parent_context(run: PipelineContext) -> otel_context.Context | None:
    """The run span's parent: ``None`` (the current context) when a span is current, else extracted."""
    if trace.get_current_span().get_span_context().is_valid:
        return None
    metadata = run.snapshot.metadata
    carrier: Mapping[str, Any] | None = None
    if metadata and "traceparent" in metadata:
        carrier = metadata
    else:
        traceparent = os.environ.get("TRACEPARENT")
        if traceparent:
            carrier = {"traceparent": traceparent, "tracestate": os.environ.get("TRACESTATE", "")}
    if carrier is None:
        return None
    extracted = _W3C.extract({k: str(v) for k, v in carrier.items() if k in ("traceparent", "tracestate")})
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


def _end_run(state: _RunTrace, outcome: Outcome, results: RunResult | None, message: str | None) -> None:
    span = state.span
    attributes: dict[str, AttributeValue] = {semconv.RUN_RESULT: outcome.result}
    if outcome.error_type is not None:
        attributes[semconv.ERROR_TYPE] = outcome.error_type
        span.set_status(Status(StatusCode.ERROR, message))
    if results is not None:
        attributes[semconv.RUN_CRITICAL_PATH] = results.critical_path
        attributes[semconv.RUN_DURATION] = results.duration
        first_output = results.time_to_first_output
        if first_output is not None and any(i.streaming is not None for i in state.run.graph.stages):
            attributes[semconv.RUN_TIME_TO_FIRST_OUTPUT] = first_output
    span.set_attributes(attributes)
