"""The direct OTLP span encoder against the SDK's own (opentelemetry-exporter-otlp-proto-common).

Every case compares bytes: ``encode_spans`` must write exactly what the SDK's encoder serializes, so the
collector receives the same request either way; the exporters are then checked end to end against the
test receivers over both transports.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import asyncio
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

import stageflow_otel
from stageflow_otel import _otlp
from stageflow_otel._otlp import (
    Encoded,
    encode_requests,
    encode_spans,
    grpc_span_exporter,
    http_span_exporter,
)

from .otlp_receiver import HttpReceiver, OtlpReceiver

RESOURCE = Resource({"service.name": "encoder", "service.instance.id": "i-1"})
SCOPE = InstrumentationScope("stageflow", "1.2.3")


def _sdk(spans: Sequence[ReadableSpan]) -> bytes:
    return bytes(sdk_encode_spans(spans).SerializeToString())


def _context(
    trace_id: int = 0x0102030405060708090A0B0C0D0E0F10, span_id: int = 0x1112131415161718, **kw: Any
) -> SpanContext:
    return SpanContext(
        trace_id, span_id, is_remote=kw.pop("is_remote", False), trace_flags=TraceFlags(1), **kw
    )


def _span(
    name: str = "stage a",
    attributes: Mapping[str, Any] | None = None,
    *,
    resource: Resource = RESOURCE,
    scope: InstrumentationScope | None = SCOPE,
    **kw: Any,
) -> ReadableSpan:
    return ReadableSpan(
        name=name,
        context=kw.pop("context", _context()),
        attributes=attributes,
        resource=resource,
        instrumentation_scope=scope,
        start_time=kw.pop("start_time", 1_700_000_000_000_000_001),
        end_time=kw.pop("end_time", 1_700_000_000_000_900_002),
        **kw,
    )


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    _otlp._KV_CACHE.clear()
    yield
    _otlp._KV_CACHE.clear()


class TestBytesAsTheSdkEncodes:
    def test_stageflow_spans_with_events_and_links(self) -> None:
        """Spans of a traced 5-stage run with the event sink: run and stage spans, span events, links."""
        from stageflow.testing import make_context
        from tests.benchmarks.throughput import diamond

        provider = TracerProvider(resource=RESOURCE)
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        sink = stageflow_otel.OtlpEventSink()
        graph = diamond().build(interceptors=[stageflow_otel.TracingInterceptor(provider)])

        async def runs() -> None:
            for _ in range(3):
                await graph.run(make_context(event_sink=sink))

        asyncio.run(runs())
        spans = memory.get_finished_spans()
        assert len(spans) == 18
        assert any(s.events for s in spans) and any(s.links for s in spans)
        assert encode_spans(spans) == _sdk(spans)
        assert encode_spans(spans) == _sdk(spans)  # again, from the cache of encoded attributes

    @pytest.mark.parametrize(
        "value",
        [
            "text",
            "",
            "ünïcødé ✓",
            "x" * 300,
            True,
            False,
            0,
            1,
            127,
            128,
            -1,
            -(2**63),
            2**63 - 1,
            0.0,
            -0.0,
            1.5,
            float("inf"),
            b"\x00\xff",
            ("a", "b"),
            (1, 2, 3),
            (True, False),
            (0.5, -2.0),
            (),
            None,
            ["x", None],
            {"k": "v", "n": {"deep": [1, 2]}},
        ],
        ids=repr,
    )
    def test_every_attribute_value_type(self, value: Any) -> None:
        span = _span(attributes={"key": value, "other": 7})
        assert encode_spans([span]) == _sdk([span])

    def test_floats_that_compare_equal_keep_their_own_bytes(self) -> None:
        """0.0 and -0.0 are equal (and hash alike): each span still gets its own value's bytes."""
        spans = [_span(attributes={"k": 0.0}), _span(attributes={"k": -0.0}), _span(attributes={"k": 1})]
        spans.append(_span(attributes={"k": True}))  # True == 1 as well
        spans += [_span(attributes={"k": (0.0, "x")}), _span(attributes={"k": (-0.0, "x")})]
        spans += [
            _span(attributes={"k": 2.5}),
            _span(attributes={"k": 2.5}),
            _span(attributes={"k": (1, True)}),
        ]
        spans.append(_span(attributes={"k": (True, True)}))
        assert encode_spans(spans) == _sdk(spans)

    def test_a_value_out_of_int64_range_is_left_out_as_the_sdk_does(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        span = _span(attributes={"big": 2**63, "kept": "yes", "small": -(2**63) - 1})
        with caplog.at_level(logging.ERROR):
            ours = encode_spans([span])
        assert ours == _sdk([span])
        assert (
            ExportTraceServiceRequest.FromString(ours)
            .resource_spans[0]
            .scope_spans[0]
            .spans[0]
            .attributes[0]
            .key
            == "kept"
        )
        assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "stageflow_otel"] == [
            "Failed to encode key big",
            "Failed to encode key small",
        ]

    @pytest.mark.parametrize("kind", list(SpanKind))
    def test_span_kinds(self, kind: SpanKind) -> None:
        span = _span(kind=kind)
        assert encode_spans([span]) == _sdk([span])

    @pytest.mark.parametrize(
        "status",
        [
            Status(StatusCode.UNSET),
            Status(StatusCode.OK),
            Status(StatusCode.ERROR),
            Status(StatusCode.ERROR, "boom ✗"),
        ],
        ids=lambda s: f"{s.status_code.name}:{s.description}",
    )
    def test_status(self, status: Status) -> None:
        span = _span(status=status)
        assert encode_spans([span]) == _sdk([span])

    def test_parents_trace_state_events_links_and_dropped_counts(self) -> None:
        remote = _context(
            0xAA, 0xBB, is_remote=True, trace_state=TraceState([("vendor", "v1"), ("other", "x")])
        )
        local = _context(0xCC, 0xDD)
        span = ReadableSpan(
            name="",
            context=_context(trace_state=TraceState([("k", "v")])),
            parent=remote,
            resource=RESOURCE,
            instrumentation_scope=SCOPE,
            attributes={"a": 1},
            events=[
                Event("started", {"stageflow.event.type": "stage.a.started"}, timestamp=5),
                Event("bare", None, timestamp=6),
            ],
            links=[Link(remote, {"stageflow.link.type": "dependency"}), Link(local)],
            start_time=1,
            end_time=2,
        )
        assert encode_spans([span]) == _sdk([span])
        child = _span(parent=local, start_time=0, end_time=None)
        assert encode_spans([child]) == _sdk([child])

    def test_dropped_attributes_events_and_links(self) -> None:
        provider = TracerProvider(resource=RESOURCE)
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        from opentelemetry.sdk.trace import SpanLimits

        provider = TracerProvider(
            resource=RESOURCE,
            span_limits=SpanLimits(max_span_attributes=2, max_events=1, max_links=1, max_event_attributes=1),
        )
        provider.add_span_processor(SimpleSpanProcessor(memory))
        tracer = provider.get_tracer("limits")
        other = _context(0xEE, 0xFF)
        with tracer.start_as_current_span(
            "limited", attributes={"a": 1, "b": 2, "c": 3}, links=[Link(other), Link(other)]
        ) as span:
            span.add_event("one", {"x": 1, "y": 2})
            span.add_event("two")
        spans = memory.get_finished_spans()
        assert spans[0].dropped_attributes and spans[0].dropped_events and spans[0].dropped_links
        assert encode_spans(spans) == _sdk(spans)

    def test_resources_and_scopes_grouped_in_order_of_first_appearance(self) -> None:
        other_resource = Resource(
            {"service.name": "other"}, schema_url="https://opentelemetry.io/schemas/1.2"
        )
        equal_resource = Resource({"service.name": "encoder", "service.instance.id": "i-1"})
        schema_scope = InstrumentationScope("user", None, "https://schema", {"scope.attr": "x"})
        spans = [
            _span("1"),
            _span("2", resource=other_resource, scope=schema_scope),
            _span("3", scope=None),
            _span("4", resource=equal_resource),  # equal, not the same object: one group
            _span("5", resource=other_resource, scope=SCOPE),
            _span("6", scope=schema_scope),
        ]
        assert encode_spans(spans) == _sdk(spans)
        request = ExportTraceServiceRequest.FromString(encode_spans(spans))
        assert [[[s.name for s in ss.spans] for ss in rs.scope_spans] for rs in request.resource_spans] == [
            [["1", "4"], ["3"], ["6"]],
            [["2"], ["5"]],
        ]

    def test_nothing_to_send(self) -> None:
        assert encode_spans([]) == _sdk([]) == b""

    def test_the_cache_starts_over_when_full(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_otlp, "_KV_CACHE_SIZE", 4)
        spans = [_span(attributes={f"k{i}": f"v{i}", "same": "s"}) for i in range(10)]
        assert encode_spans(spans) == _sdk(spans)
        assert 0 < len(_otlp._KV_CACHE) <= 4


class TestRequests:
    def test_a_batch_under_the_limit_is_one_request(self) -> None:
        spans = [_span(str(i), {"i": i}) for i in range(20)]
        requests, oversized = encode_requests(spans, 1 << 20)
        assert (len(requests), oversized) == (1, [])
        assert list(requests[0]) == spans and requests[0].data == _sdk(spans)
        assert encode_spans(requests[0]) is requests[0].data  # sent as it is

    def test_split_in_order_under_the_limit_with_the_oversized_apart(self) -> None:
        spans = [_span(str(i), {"pad": "x" * (2000 if i != 7 else 9000)}) for i in range(20)]
        limit = 8 * 1024
        requests, oversized = encode_requests(spans, limit)
        assert oversized == [spans[7]]
        assert [s.name for r in requests for s in r] == [str(i) for i in range(20) if i != 7]
        assert all(len(r.data) <= limit for r in requests) and len(requests) >= 5
        assert [r.data for r in requests] == [_sdk(list(r)) for r in requests]

    def test_encoded_spans_is_a_sequence_of_its_spans(self) -> None:
        spans = [_span("1"), _span("2")]
        encoded = Encoded(spans, b"x")
        assert (len(encoded), encoded[1], list(encoded), encoded[:1]) == (2, spans[1], spans, spans[:1])


def _exported(
    receiver: OtlpReceiver, exporter: Any, spans: Sequence[ReadableSpan]
) -> list[ExportTraceServiceRequest]:
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    with receiver._cond:
        return list(receiver.traces)


@pytest.fixture(name="http_receiver")
def _http_receiver() -> Iterator[HttpReceiver]:
    """An OTLP/HTTP receiver, stopped at teardown."""
    receiver = HttpReceiver()
    yield receiver
    receiver.stop()


def _http_exporter(receiver: OtlpReceiver) -> Any:
    """The HTTP span exporter, on a session of its own, sending to ``receiver``."""
    import requests

    return http_span_exporter(f"{receiver.endpoint}/v1/traces", requests.Session())


class TestExporters:
    def test_each_protocol_delivers_the_sdk_encoding(self, receiver: OtlpReceiver) -> None:
        spans = [_span(str(i), {"i": i, "s": "x"}) for i in range(5)]
        if receiver.protocol == "grpc":
            exporter = grpc_span_exporter(receiver.endpoint)
            assert getattr(exporter, "requests", None) is not None  # the exact split of this encoder
        else:
            exporter = _http_exporter(receiver)
            assert getattr(exporter, "direct", False) is True
        requests = _exported(receiver, exporter, spans)
        assert [r.SerializeToString() for r in requests] == [_sdk(spans)]

    def test_http_rejection_is_a_failed_export(self, http_receiver: HttpReceiver) -> None:
        http_receiver.rejecting = True
        exporter = _http_exporter(http_receiver)
        try:
            assert exporter.export([_span()]) is SpanExportResult.FAILURE
        finally:
            exporter.shutdown()
        assert http_receiver.rejected == 1

    def test_http_after_shutdown_fails_without_sending(self, http_receiver: HttpReceiver) -> None:
        exporter = _http_exporter(http_receiver)
        exporter.shutdown()
        assert exporter.export([_span()]) is SpanExportResult.FAILURE
        assert http_receiver.headers == []

    def test_http_over_the_request_size_limit_is_not_sent(self, http_receiver: HttpReceiver) -> None:
        exporter = _http_exporter(http_receiver)
        exporter._max_request_size = 64
        try:
            assert exporter.export([_span(attributes={"big": "x" * 100})]) is SpanExportResult.FAILURE
        finally:
            exporter.shutdown()
        assert http_receiver.headers == []


def _records(emit: list[dict[str, Any]], scope: str = "stageflow") -> list[Any]:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    provider = LoggerProvider(resource=RESOURCE)
    memory = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger(scope, "1.0")
    for kwargs in emit:
        logger.emit(**kwargs)
    return list(memory.get_finished_logs())


def _sdk_logs(records: Sequence[Any]) -> bytes:
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as sdk_encode_logs

    return bytes(sdk_encode_logs(records).SerializeToString())


class TestLogRecords:
    def test_event_log_records_of_traced_runs(self) -> None:
        """The OTLP event sink's log records (log records switched on) of three traced runs."""
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

        from stageflow.testing import make_context
        from tests.benchmarks.throughput import diamond

        logger_provider = LoggerProvider(resource=RESOURCE)
        memory = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
        sink = stageflow_otel.OtlpEventSink(logger_provider=logger_provider, log_records=True)
        graph = diamond().build(
            interceptors=[stageflow_otel.TracingInterceptor(TracerProvider(resource=RESOURCE))]
        )

        async def runs() -> None:
            for _ in range(3):
                await graph.run(make_context(event_sink=sink))
            await asyncio.sleep(0)

        asyncio.run(runs())
        sink.flush(5.0)
        records = list(memory.get_finished_logs())
        assert len(records) == 3 * 13
        assert any(r.log_record.trace_id for r in records)
        assert _otlp.encode_logs(records) == _sdk_logs(records)

    @pytest.mark.parametrize(
        "body",
        [None, "text", "", 0, -5, 2.5, True, b"\x01", ["a", 1, None], {"k": {"n": [1.5, "x"]}, "e": {}}],
        ids=repr,
    )
    def test_bodies(self, body: Any) -> None:
        records = _records([{"body": body, "attributes": {"a": 1}}])
        assert _otlp.encode_logs(records) == _sdk_logs(records)

    def test_severity_event_name_context_timestamps_and_scopes(self) -> None:
        from opentelemetry import trace
        from opentelemetry._logs import SeverityNumber

        span = trace.NonRecordingSpan(_context(0xABC, 0xDEF))
        context = trace.set_span_in_context(span)
        records = _records(
            [
                {
                    "body": "one",
                    "severity_number": SeverityNumber.WARN,
                    "severity_text": "WARN",
                    "timestamp": 7,
                },
                {
                    "event_name": "stage.a.started",
                    "context": context,
                    "attributes": {"big": 2**64, "ok": "y"},
                },
                {"observed_timestamp": 9, "severity_number": SeverityNumber.UNSPECIFIED},
            ]
        )
        records += _records([{"body": "other scope"}], scope="user")
        assert _otlp.encode_logs(records) == _sdk_logs(records)

    def test_requests_split_under_the_limit(self) -> None:
        records = _records([{"body": "x" * (3000 if i != 2 else 9000)} for i in range(8)])
        requests, oversized = _otlp.encode_log_requests(records, 8 * 1024)
        assert oversized == [records[2]]
        assert [r for req in requests for r in req] == [r for i, r in enumerate(records) if i != 2]
        assert [req.data for req in requests] == [_sdk_logs(list(req)) for req in requests]

    def test_exporters_deliver_the_sdk_encoding(self, receiver: OtlpReceiver) -> None:
        import requests as http
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        records = _records([{"body": f"r{i}", "attributes": {"i": i}} for i in range(4)])
        exporter = (
            _otlp.grpc_log_exporter(receiver.endpoint)
            if receiver.protocol == "grpc"
            else _otlp.http_log_exporter(f"{receiver.endpoint}/v1/logs", http.Session())
        )
        try:
            assert exporter.export(records) is LogRecordExportResult.SUCCESS
        finally:
            exporter.shutdown()  # type: ignore[no-untyped-call]
        with receiver._cond:
            assert [r.SerializeToString() for r in receiver.logs] == [_sdk_logs(records)]
