"""``MetricsInterceptor``: run and stage histograms, counters and the circuit breaker gauge.

It runs past 500 lines because every signal the interceptor records, and the direct measurement path that
skips the SDK's second attribute pass, share one set of cached attributes and must be read together.

Every instrument is created once, in ``__init__``, with the names, units and explicit bucket boundaries
of ``semconv``. Stage durations are recorded inside the stage span (this interceptor's priority, 20, puts it
inside ``TracingInterceptor``'s 10), so exemplars carry the stage's trace and span ids; an attempt that
raised waits for the run's end instead (inside the run span), where ``stageflow.stage.result`` takes the
stage's settled category: ``skip`` when an interceptor outside this one fell back, as every other view
says. Run-level
figures (run duration, errors, skips, critical path, the dispatch time of sync stages, the time to first
chunk and per output chunk of streaming stages, the time to first output of runs of pipelines with a
streaming stage) are recorded at the end of the run, inside the run span, from its ``RunResult`` (a run
cancelled by its caller has none).

A streaming stage whose ``config`` holds ``gen_ai.operation.name`` (the OpenTelemetry GenAI attribute,
e.g. ``config={"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
"gen_ai.request.model": "gpt-4o"}``) is a GenAI stage: its time to first chunk is also recorded as
``gen_ai.client.operation.time_to_first_chunk`` with the GenAI attributes its config declares
(``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``, ``server.address``,
``server.port``) and, when the stage did not succeed, ``error.type``.

Example::

    from stageflow_otel import MetricsInterceptor, TracingInterceptor

    graph = pipeline.build(interceptors=[TracingInterceptor(), MetricsInterceptor()])
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from opentelemetry import metrics
from opentelemetry.context import Context, get_current
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.util.types import AttributeValue

from stageflow import (
    PipelineContext,
    RunResult,
    StageContext,
    StageGraph,
    StageInfo,
    StageOutput,
    StageResult,
    StageStatus,
)
from stageflow import __version__ as _stageflow_version
from stageflow.interceptors import (
    CallNext,
    CircuitBreakerInterceptor,
    CircuitStateChange,
    Interceptor,
    RunNext,
)

from . import semconv
from ._content import clean_text
from ._guard import NameGuard as _NameGuard
from ._once import LogOnce
from ._outcome import (
    SKIP,
    Outcome,
    is_api_only,
    observe_run,
    observe_stage,
    outcome_of_error,
    outcome_of_output,
)

__all__ = ("MetricsInterceptor",)

DEFAULT_MAX_STAGE_SERIES = semconv.DEFAULT_MAX_STAGE_NAMES
"""Default limit of distinct stage names on metric attributes."""
DEFAULT_MAX_PIPELINE_SERIES = semconv.DEFAULT_MAX_PIPELINE_NAMES
"""Default limit of distinct pipeline names on metric attributes."""
DEFAULT_SERIES_IDLE_TIMEOUT = semconv.DEFAULT_NAME_IDLE_TIMEOUT
"""Seconds a name must go unused before a new name may take its slot."""

_monotonic = time.monotonic

_perf = time.perf_counter
_BUCKETS = list(semconv.DURATION_BUCKETS)

Attributes = Mapping[str, AttributeValue]
_Raised = tuple[Attributes, Outcome, float]
"""A stage attempt that raised, waiting for the run's end: its attributes, outcome and duration."""


class MetricsInterceptor(Interceptor):
    """Record run and stage metrics (priority 20: inside ``TracingInterceptor``'s spans).

    Args:
        meter_provider: the provider to record with; by default the global provider (instruments made
            before one is installed start recording once it is).
        max_stage_series: the most distinct stage names used as metric attributes at a time.
        max_pipeline_series: the most distinct pipeline names used as metric attributes at a time.
        series_idle_timeout: seconds a name must go unused before a new name may take its slot.

    Cardinality guard: a new stage (or pipeline) name takes a free slot, else the slot of the least
    recently used name if that has gone unused for ``series_idle_timeout`` seconds, else it is recorded
    as ``_OTHER`` (one warning is logged the first time). Names longer than 256 characters are always
    ``_OTHER``. The SDK keeps a series it has seen until the process ends (cumulative temporality), and
    caps each instrument at 2,000 attribute sets itself (``otel.metric.overflow``).

    When no SDK is configured the interceptor passes every call straight through.

    .. versionadded:: 0.10
    """

    name = "metrics"
    priority = 20
    isolated = False  # never raises on its own: called without the isolation guard
    fail_open = True  # telemetry: if it ever failed before the stage, bypassing it is safe

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        *,
        max_stage_series: int = DEFAULT_MAX_STAGE_SERIES,
        max_pipeline_series: int = DEFAULT_MAX_PIPELINE_SERIES,
        series_idle_timeout: float = DEFAULT_SERIES_IDLE_TIMEOUT,
    ) -> None:
        for option, value in (
            ("max_stage_series", max_stage_series),
            ("max_pipeline_series", max_pipeline_series),
        ):
            if not isinstance(value, int) or value < 1:
                msg = f"{option} must be an int of at least 1, got {value!r}"
                raise ValueError(msg)
        if not series_idle_timeout >= 0:
            msg = f"series_idle_timeout must be a number of seconds >= 0, got {series_idle_timeout!r}"
            raise ValueError(msg)
        self._provider = meter_provider
        self._max_stage_series = max_stage_series
        self._stages = _NameGuard("stage", max_stage_series, series_idle_timeout)
        self._pipelines = _NameGuard("pipeline", max_pipeline_series, series_idle_timeout)
        self._now = _monotonic()
        meter = metrics.get_meter(semconv.INSTRUMENTATION_SCOPE, _stageflow_version, meter_provider)
        # ``None`` = not known yet (global provider not installed); decided for good once known.
        self._enabled: bool | None = None
        if meter_provider is not None:
            self._enabled = not is_api_only(meter_provider) and not isinstance(meter, metrics.NoOpMeter)
        self._run_duration = _Direct(_histogram(meter, semconv.PIPELINE_RUN_DURATION))
        self._stage_duration = _Direct(_histogram(meter, semconv.STAGE_DURATION))
        self._wait_duration = _Direct(_histogram(meter, semconv.STAGE_WAIT_DURATION_METRIC))
        self._critical_duration = _Direct(_histogram(meter, semconv.STAGE_CRITICAL_PATH_DURATION))
        self._dispatch_duration = _histogram(meter, semconv.STAGE_DISPATCH_DURATION_METRIC)
        self._first_chunk = _histogram(meter, semconv.STAGE_TIME_TO_FIRST_CHUNK_METRIC)
        self._per_chunk = _histogram(meter, semconv.STAGE_TIME_PER_OUTPUT_CHUNK_METRIC)
        self._first_output = _histogram(meter, semconv.PIPELINE_RUN_TIME_TO_FIRST_OUTPUT)
        self._gen_ai_first_chunk = _histogram(meter, semconv.GEN_AI_TIME_TO_FIRST_CHUNK)
        self._streaming_stages: weakref.WeakKeyDictionary[
            StageGraph, tuple[tuple[str, Attributes | None], ...]
        ] = weakref.WeakKeyDictionary()
        self._sync_stages: weakref.WeakKeyDictionary[StageGraph, tuple[str, ...]] = (
            weakref.WeakKeyDictionary()
        )
        m = semconv.PIPELINE_RUN_ACTIVE
        self._active = _Direct(meter.create_up_down_counter(m.name, unit=m.unit, description=m.description))
        m = semconv.PIPELINE_RUN_ERRORS
        self._run_errors = meter.create_counter(m.name, unit=m.unit, description=m.description)
        m = semconv.STAGE_SKIPS
        self._skips = meter.create_counter(m.name, unit=m.unit, description=m.description)
        self._meter = meter
        self._sdk_failed = LogOnce(
            "stageflow_otel: MetricsInterceptor: the OpenTelemetry SDK raised %r; some measurements are "
            "missing, the pipeline is unaffected (logged once)"
        )
        self._stage_attrs: dict[tuple[str, str, str], dict[str, AttributeValue]] = {}
        # a stage's attributes with each result, keyed by the id of its base attributes (kept alive here)
        self._finished_attrs: dict[int, tuple[Attributes, dict[str, Attributes]]] = {}
        self._raised: dict[UUID, dict[str, _Raised]] = {}
        """Per measured run, each stage's last attempt that raised: recorded when the run ends."""
        self._circuit_states: dict[tuple[str, str], int] = {}
        self._circuit_lock = threading.Lock()
        self._circuit_gauge: Any = None
        self._breakers: list[CircuitBreakerInterceptor] = []

    def _is_enabled(self) -> bool:
        enabled = self._enabled
        if enabled is None:
            if is_api_only(metrics.get_meter_provider()):
                return False
            enabled = self._enabled = True
        return enabled

    def _base(self, pipeline: str, stage: str, kind: str) -> dict[str, AttributeValue]:
        now = self._now
        key = (self._pipelines(pipeline, now), self._stages(stage, now), kind)
        attrs = self._stage_attrs.get(key)
        if attrs is None:
            attrs = {
                semconv.PIPELINE_NAME: key[0],
                semconv.STAGE_NAME: key[1],
                semconv.STAGE_KIND: kind,
            }
            if len(self._stage_attrs) >= 4 * self._max_stage_series:
                self._stage_attrs.clear()  # names were evicted meanwhile: drop their stale entries
                self._finished_attrs.clear()
            self._stage_attrs[key] = attrs
        return attrs

    # --------------------------------------------------------------------------------------- stage

    async def intercept_stage(self, stage: StageInfo, ctx: StageContext, call_next: CallNext) -> StageOutput:
        """Record the attempt's duration (and, on the first attempt, the stage's wait) inside its span."""
        if not self._enabled:  # decided in intercept_run: nothing to do without an SDK
            return await call_next(ctx)
        base = self._base(stage.pipeline, stage.name, stage.kind.value)
        if ctx.attempt == 1:
            try:
                self._wait_duration.record(max(0.0, ctx.began_at - ctx.ready_at), base)
            except Exception as exc:  # C9: the SDK's failure never reaches the stage
                self._sdk_failed(exc)
        started = _perf()

        def ended(outcome: Outcome | None, error: Exception | None, output: StageOutput | None) -> None:
            if outcome is None:
                return
            duration = _perf() - started
            run = ctx.pipeline
            raised = None if error is None or run is None else self._raised.get(run.run_id)
            if raised is None:
                self._record_stage(base, outcome, duration)
                return
            # how the stage settles is known at the run's end: an interceptor outside this one may fall
            # back (a skip); an earlier attempt of a retried stage was not its last, so it is recorded now
            earlier = raised.get(stage.name)
            if earlier is not None:
                self._record_stage(*earlier)
            raised[stage.name] = (base, outcome, duration)

        return await observe_stage(ctx, call_next, ended, self._sdk_failed)

    def _record_stage(self, base: Attributes, outcome: Outcome, duration: float) -> None:
        attrs: Attributes | None = None
        if outcome.error_type is None:  # success, skip, cancellation: one cached dict per stage and result
            finished = self._finished_attrs.get(id(base))
            if finished is not None and finished[0] is base:
                attrs = finished[1].get(outcome.result)
            else:
                finished = (base, {})
                self._finished_attrs[id(base)] = finished
            if attrs is None:
                attrs = dict(base)
                attrs[semconv.STAGE_RESULT] = outcome.result
                finished[1][outcome.result] = attrs
        else:
            attrs = dict(base)
            attrs[semconv.STAGE_RESULT] = outcome.result
            attrs[semconv.ERROR_TYPE] = _error_type(outcome.error_type)
        try:
            self._stage_duration.record(duration, attrs)
        except Exception as exc:  # C9: never replaces the stage's output, error or cancellation
            self._sdk_failed(exc)

    # ----------------------------------------------------------------------------------------- run

    async def intercept_run(self, run: PipelineContext, call_next: RunNext) -> RunResult:
        """Count the run as active, then record its duration, errors, skips and critical path."""
        if not (self._enabled or (self._enabled is None and self._is_enabled())):
            return await call_next(run)  # no SDK: stages pass straight through too
        self._now = now = _monotonic()
        pipeline = self._pipelines(run.pipeline_name, now)
        pipeline_attrs = {semconv.PIPELINE_NAME: pipeline}
        try:
            self._active.add(1, pipeline_attrs)
        except Exception as exc:  # C9: the SDK failed at the start; run unmeasured
            self._sdk_failed(exc)
            return await call_next(run)
        started = _perf()
        raised: dict[str, _Raised] = {}
        self._raised[run.run_id] = raised

        def ended(outcome: Outcome, results: RunResult | None) -> None:
            try:
                self._raised.pop(run.run_id, None)
                self._record_raised(raised, results)
                self._record_run(run.pipeline_name, outcome, _perf() - started, results)
                if results is not None:
                    self._record_dispatch(run, results)
                    self._record_streams(run, results)
            finally:
                self._active.add(-1, pipeline_attrs)

        return await observe_run(run, call_next, ended, self._sdk_failed)

    def _record_raised(self, raised: Mapping[str, _Raised], results: RunResult | None) -> None:
        """The attempts that raised, each with its stage's settled result: a skip (an interceptor outside
        fell back) records as ``skip``, anything else as the attempt ended."""
        for name, (base, outcome, duration) in raised.items():
            result = None if results is None else results.get(name)
            settled = SKIP if result is not None and result.status is StageStatus.SKIP else outcome
            self._record_stage(base, settled, duration)

    def _record_run(
        self, pipeline: str, outcome: Outcome, duration: float, results: RunResult | None
    ) -> None:
        attrs: dict[str, AttributeValue] = {
            semconv.PIPELINE_NAME: self._pipelines(pipeline, self._now),
            semconv.RUN_RESULT: outcome.result,
        }
        if outcome.error_type is not None:
            attrs[semconv.ERROR_TYPE] = _error_type(outcome.error_type)
        self._run_duration.record(duration, attrs)
        if outcome.result != semconv.RESULT_SUCCESS:
            self._run_errors.add(1, attrs)
        if results is None:
            return
        for result in results.values():
            if result.status is StageStatus.SKIP:
                self._skips.add(1, self._base(pipeline, result.name, result.kind.value))
        for name in results.critical_path:
            result = results[name]
            self._critical_duration.record(
                max(0.0, result.ended_at - result.ready_at),
                self._base(pipeline, name, result.kind.value),
            )

    def _record_dispatch(self, run: PipelineContext, results: RunResult) -> None:
        """The dispatch time of each sync stage that completed (its hop to the executor and back)."""
        graph = run.graph
        names = self._sync_stages.get(graph)
        if names is None:
            names = tuple(info.name for info in graph.stages if info.sync)
            self._sync_stages[graph] = names
        for name in names:
            result = results.get(name)
            if result is not None and result.status is StageStatus.OK:
                self._dispatch_duration.record(
                    max(0.0, result.dispatch), self._base(run.pipeline_name, name, result.kind.value)
                )

    def _record_streams(self, run: PipelineContext, results: RunResult) -> None:
        """Each streaming stage's time to first chunk and per chunk, and the run's time to first output."""
        graph = run.graph
        streaming = self._streaming_stages.get(graph)
        if streaming is None:
            streaming = tuple(
                (info.name, _gen_ai_attributes(info)) for info in graph.stages if info.streaming is not None
            )
            self._streaming_stages[graph] = streaming
        if not streaming:  # a pipeline without streaming stages: its first output is its end
            return
        first_output = results.time_to_first_output
        if first_output is not None:
            self._first_output.record(
                max(0.0, first_output), {semconv.PIPELINE_NAME: self._pipelines(run.pipeline_name, self._now)}
            )
        for name, gen_ai in streaming:
            result = results.get(name)
            if result is None:
                continue
            first_chunk = result.time_to_first_chunk
            if first_chunk is None:  # it yielded nothing (or never ran)
                continue
            base = self._base(run.pipeline_name, name, result.kind.value)
            self._first_chunk.record(max(0.0, first_chunk), base)
            per_chunk = result.time_per_output_chunk
            if per_chunk is not None:
                self._per_chunk.record(max(0.0, per_chunk), base)
            if gen_ai is not None:
                attrs = dict(gen_ai)
                error_type = _stage_error_type(result)
                if error_type is not None:
                    attrs[semconv.ERROR_TYPE] = error_type
                self._gen_ai_first_chunk.record(max(0.0, first_chunk), attrs)

    # ---------------------------------------------------------------------------- circuit breaker

    def observe_circuit_breaker(self, breaker: CircuitBreakerInterceptor) -> None:
        """Export ``breaker``'s state per stage as the ``stageflow.circuit_breaker.state`` gauge.

        At each collection the gauge reports (0 closed, 1 half-open, 2 open) every stage the observed
        breakers hold a state for, whether or not it ever changed, read from ``breaker.states()``; a
        listener also records every state change, so a collection that cannot read the breaker (it is
        being updated on the event loop while collection runs on the exporter's thread) still reports the
        last known states. Stages past ``max_stage_series`` share the ``_OTHER`` series, which shows the
        most open of their states.

        Args:
            breaker: the circuit breaker interceptor to observe.

        .. versionadded:: 0.10
        """
        current = _breaker_states(breaker)
        self._admit(current)
        with self._circuit_lock:
            if self._circuit_gauge is None:
                m = semconv.CIRCUIT_BREAKER_STATE
                self._circuit_gauge = self._meter.create_observable_gauge(
                    m.name, callbacks=[self._observe_circuits], unit=m.unit, description=m.description
                )
            if breaker not in self._breakers:
                self._breakers.append(breaker)
            self._circuit_states.update(current)
        breaker.add_listener(self._on_circuit_change)

    def _admit(self, states: Iterable[tuple[str, str]]) -> None:
        """Give the breakers' stages (and pipelines) their guard slots, from the event loop's thread."""
        now = _monotonic()
        for pipeline, stage in states:
            self._pipelines(pipeline, now)
            self._stages(stage, now)

    def _on_circuit_change(self, change: CircuitStateChange) -> None:
        self._admit(((change.pipeline, change.stage),))
        with self._circuit_lock:
            self._circuit_states[(change.pipeline, change.stage)] = int(change.new)

    def _observe_circuits(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._circuit_lock:
            breakers = list(self._breakers)
            states = dict(self._circuit_states)
        for breaker in breakers:
            states.update(_breaker_states(breaker))
        worst: dict[tuple[str, str], int] = {}
        for (pipeline, stage), state in states.items():
            key = (self._pipelines.peek(pipeline), self._stages.peek(stage))
            worst[key] = max(state, worst.get(key, state))
        return [
            Observation(state, {semconv.PIPELINE_NAME: pipeline, semconv.STAGE_NAME: stage})
            for (pipeline, stage), state in worst.items()
        ]


def _error_type(error_type: str) -> str:
    """An ``error.type`` value as a metric attribute: encodable, ``_OTHER`` past the length limit."""
    if len(error_type) > semconv.METRIC_VALUE_LENGTH_LIMIT:
        return semconv.OTHER
    return clean_text(error_type, None)


def _breaker_states(breaker: CircuitBreakerInterceptor) -> dict[tuple[str, str], int]:
    """``breaker.states()`` as ints; ``{}`` when the event loop keeps changing them under this thread."""
    for _ in range(3):
        try:
            return {key: int(state) for key, state in breaker.states().items()}
        except RuntimeError:  # "dictionary changed size during iteration": a stage ran meanwhile
            continue
    return {}


def _gen_ai_attributes(info: StageInfo) -> Attributes | None:
    """The GenAI attributes a stage declares in its ``config`` (``None`` without ``gen_ai.operation.name``).

    Strings longer than the metric value limit are ``_OTHER``; ``server.port`` must be an int; values of
    any other type are left out.
    """
    config = info.config
    if not isinstance(config.get(semconv.GEN_AI_OPERATION_NAME), str):
        return None
    attrs: dict[str, AttributeValue] = {}
    for key in semconv.GEN_AI_ATTRIBUTES:
        value = config.get(key)
        if key == semconv.SERVER_PORT:
            if isinstance(value, int) and not isinstance(value, bool):
                attrs[key] = value
        elif isinstance(value, str):
            attrs[key] = _error_type(value)  # cut and made encodable as any metric attribute value
    return attrs


def _stage_error_type(result: StageResult) -> str | None:
    """``error.type`` of a stage that did not succeed: from its error (``cancelled`` for a cancelled
    task), else from its output (``StageOutput.fail``); ``None`` for one that succeeded or was skipped."""
    if result.error is not None:
        return _error_type(outcome_of_error(result.error).error_type or semconv.OTHER)
    if result.output is not None:
        return outcome_of_output(result.output).error_type
    if result.status is StageStatus.CANCEL:  # no output: its task was cancelled (the run stopped it)
        return semconv.ERROR_TYPE_CANCELLED
    return None


def _direct_parts() -> tuple[type, type, type] | None:
    """The SDK's measurement and its histogram and up-down counter classes, if they are what ``_Direct``
    was written against (else ``None``: every instrument is called through its public method)."""
    try:
        from opentelemetry.sdk.metrics._internal.instrument import Histogram, UpDownCounter
        from opentelemetry.sdk.metrics._internal.measurement import Measurement
    except ImportError:
        return None
    names = tuple(f.name for f in dataclasses.fields(Measurement))
    if names != ("value", "time_unix_nano", "instrument", "context", "attributes"):
        return None
    return Measurement, Histogram, UpDownCounter


_DIRECT = _direct_parts()
_new = object.__new__
_set = object.__setattr__


class _Direct:
    """A histogram's ``record`` or an up-down counter's ``add``, handed to the SDK's measurement consumer
    directly, as the SDK's own method does, but without its second pass over the attributes.

    The SDK copies and re-checks every measurement's attributes (``Measurement.__post_init__``); the
    interceptor's are clean already (string keys and values, the names bounded by the guards) and cached,
    so that pass is a large share of a measured stage's cost and changes nothing. What the SDK would warn
    about or ignore (a value that is negative or not finite, a disabled meter) and any instrument that is
    not the SDK's (a proxy, a no-op, another SDK version) goes through the public method.
    """

    __slots__ = ("_consumer", "_instrument", "record_public")

    def __init__(self, instrument: Any) -> None:
        self._instrument = instrument
        parts = _DIRECT
        kind = type(instrument)
        consumer = getattr(instrument, "_measurement_consumer", None)
        direct = parts is not None and issubclass(kind, parts[1:]) and consumer is not None
        self._consumer = consumer if direct else None
        self.record_public = getattr(instrument, "record", None) or instrument.add

    def record(
        self, amount: float, attributes: Mapping[str, AttributeValue], context: Context | None = None
    ) -> None:
        """``Histogram.record`` of a value with clean ``attributes`` (not copied: never mutate them)."""
        consumer = self._consumer
        if consumer is None or not amount >= 0.0 or amount == math.inf or not self._instrument._is_enabled():
            self.record_public(amount, attributes, context)
            return
        self._consume(consumer, amount, attributes, context)

    def add(
        self, amount: int, attributes: Mapping[str, AttributeValue], context: Context | None = None
    ) -> None:
        """``UpDownCounter.add`` of a whole number with clean ``attributes`` (not copied)."""
        consumer = self._consumer
        if consumer is None or not self._instrument._is_enabled():
            self.record_public(amount, attributes, context)
            return
        self._consume(consumer, amount, attributes, context)

    def _consume(
        self, consumer: Any, amount: float, attributes: Mapping[str, AttributeValue], context: Context | None
    ) -> None:
        assert _DIRECT is not None
        measurement: Any = _new(_DIRECT[0])
        _set(measurement, "value", amount)
        _set(measurement, "time_unix_nano", time.time_ns())
        _set(measurement, "instrument", self._instrument)
        _set(measurement, "context", context or get_current())
        _set(measurement, "attributes", attributes)
        consumer.consume_measurement(measurement)


def _histogram(meter: metrics.Meter, metric: semconv.Metric) -> metrics.Histogram:
    return meter.create_histogram(
        metric.name,
        unit=metric.unit,
        description=metric.description,
        explicit_bucket_boundaries_advisory=_BUCKETS
        if metric.buckets == semconv.DURATION_BUCKETS
        else list(metric.buckets),
    )
