"""OTLP trace and log requests encoded straight to protobuf bytes, without building protobuf objects.

The SDK's encoder (``opentelemetry-exporter-otlp-proto-common``) builds one protobuf object per span,
attribute, value, event and link, then serializes them: about 20 object constructions for a stage span,
which the benchmarks measured at 27–190 µs a span on the exporter thread, in the interpreter lock the
event loop needs. ``encode_spans`` writes the same ``ExportTraceServiceRequest`` directly as bytes, field
by field in field-number order (as the protobuf runtime serializes), with the same choices as the SDK's
encoder: spans grouped by resource, then by instrumentation scope, in order of first appearance; span
kind and status code as the SDK maps them; the span ``flags`` with the context-has-is-remote bit (and
is-remote for a remote parent or link); an attribute whose value cannot be encoded is left out and
logged, as the SDK's encoder does. Its tests compare the bytes with the SDK's serialization.

A key and value pair seen again (a pipeline or stage name, a stage kind, an event type...) is encoded
once: ``_KV_CACHE`` keeps up to ``_KV_CACHE_SIZE`` encoded pairs of hashable scalar values and starts
over when full.
"""

from __future__ import annotations

import importlib
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = (
    "Encoded",
    "encode_attributes",
    "encode_log_requests",
    "encode_logs",
    "encode_requests",
    "encode_spans",
    "grpc_log_exporter",
    "grpc_span_exporter",
    "http_log_exporter",
    "http_span_exporter",
)

logger = logging.getLogger("stageflow_otel")

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack


def _varint(value: int) -> bytes:
    """Unsigned varint; a negative int64 as its 64-bit two's complement (ten bytes)."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((n,)) for n in range(0x80)]


def _length(n: int) -> bytes:
    return _SMALL[n] if n < 0x80 else _varint(n)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + _length(len(payload)) + payload


def _value(value: Any) -> bytes:
    """An ``AnyValue`` message's bytes; raises ``TypeError``/``ValueError`` for what OTLP cannot carry."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode("utf-8"))
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{value} does not fit in an int64")
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _value(v)) for v in value]))
    if isinstance(value, Mapping):
        pairs = b"".join([_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()])
        return _field(b"\x32", pairs)
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _key_value(key: str, value: Any) -> bytes:
    encoded_key = _field(b"\x0a", key.encode("utf-8")) if key else b""
    return encoded_key + _field(b"\x12", _value(value))


_KV_CACHE: dict[tuple[bytes, str, type, object], bytes] = {}
_KV_CACHE_SIZE = 8192
_EXACT = (str, bool, int)


def _cacheable(kind: type, value: Any) -> bool:
    """Whether equal values of ``kind`` always encode alike: not 0.0 and -0.0 (equal, and they hash
    alike), nor tuples holding them; strings, booleans, ints and tuples of strings do."""
    if kind in _EXACT:
        return True
    if kind is float:
        return bool(value)  # 0.0 == -0.0; NaN is never found again, which is harmless
    return kind is tuple and all(type(v) is str for v in value)


def encode_attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Each attribute as one repeated ``KeyValue`` field of ``tag``; unencodable ones left out (logged)."""
    if not attributes:
        return b""
    parts: list[bytes] = []
    cache = _KV_CACHE
    for key, value in attributes.items():
        kind = type(value)
        cacheable = _cacheable(kind, value)
        if cacheable:
            found = cache.get((tag, key, kind, value))
            if found is not None:
                parts.append(found)
                continue
        try:
            encoded = _field(tag, _key_value(key, value))
        except Exception as error:  # as the SDK's encoder: the attribute is left out, the rest goes
            logger.exception("Failed to encode key %s: %s", key, error)
            continue
        if cacheable:
            if len(cache) >= _KV_CACHE_SIZE:
                cache.clear()
            cache[(tag, key, kind, value)] = encoded
        parts.append(encoded)
    return b"".join(parts)


def _flags(parent: Any) -> bytes:
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    return _pack_fixed32(flags)


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None  # a ReadableSpan the SDK ended always has one
    parts = [
        b"\x0a\x10",
        context.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        context.span_id.to_bytes(8, "big"),
    ]
    trace_state = context.trace_state
    if trace_state:
        parts.append(_field(b"\x1a", ",".join(f"{k}={v}" for k, v in trace_state.items()).encode()))
    parent = span.parent
    if parent:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    if span.name:
        parts.append(_field(b"\x2a", span.name.encode("utf-8")))
    parts.append(b"\x30" + _SMALL[span.kind.value + 1])
    if span.start_time:
        parts.append(b"\x39" + _pack_fixed64(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _pack_fixed64(span.end_time))
    parts.append(encode_attributes(b"\x4a", span.attributes))
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        body = b""
        if event.timestamp:
            body = b"\x09" + _pack_fixed64(event.timestamp)
        if event.name:
            body += _field(b"\x12", event.name.encode("utf-8"))
        body += encode_attributes(b"\x1a", event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        parts.append(_field(b"\x5a", body))
    if span.dropped_events:
        parts.append(b"\x60" + _varint(span.dropped_events))
    for link in span.links:
        linked = link.context
        body = (
            b"\x0a\x10"
            + linked.trace_id.to_bytes(16, "big")
            + b"\x12\x08"
            + linked.span_id.to_bytes(8, "big")
        )
        body += encode_attributes(b"\x22", link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        body += b"\x35" + _flags(linked)
        parts.append(_field(b"\x6a", body))
    if span.dropped_links:
        parts.append(b"\x70" + _varint(span.dropped_links))
    status = span.status
    if status is not None:
        body = _field(b"\x12", status.description.encode("utf-8")) if status.description else b""
        if status.status_code.value:
            body += b"\x18" + _SMALL[status.status_code.value]
        parts.append(_field(b"\x7a", body))
    parts.append(b"\x85\x01" + _flags(parent))
    return b"".join(parts)


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    body = _field(b"\x0a", scope.name.encode("utf-8")) if scope.name else b""
    if scope.version:
        body += _field(b"\x12", scope.version.encode("utf-8"))
    return body + encode_attributes(b"\x1a", scope.attributes)


def _members(groups: list[tuple[Any, list[Any]]], key: Any) -> list[Any]:
    """The members of ``key``'s group (a new group at the end for a key not seen), keys compared by ``==``."""
    for known, members in groups:
        if known is key or known == key:
            return members
    found: list[Any] = []
    groups.append((key, found))
    return found


def _request(pieces: Sequence[tuple[Any, bytes]]) -> bytes:
    """The request of already encoded spans or log records (``ResourceSpans`` and ``ResourceLogs`` have
    the same shape): grouped by resource, then scope, in order of first appearance."""
    groups: list[tuple[Any, list[Any]]] = []
    for item, encoded in pieces:
        _members(_members(groups, item.resource), item.instrumentation_scope or None).append(encoded)
    request: list[bytes] = []
    for resource, scopes in groups:
        body = [_field(b"\x0a", encode_attributes(b"\x0a", resource.attributes))]
        for scope, items in scopes:
            scope_body = [_field(b"\x0a", _scope(scope))]
            scope_body.extend(_field(b"\x12", item) for item in items)
            if scope is not None and scope.schema_url:
                scope_body.append(_field(b"\x1a", scope.schema_url.encode("utf-8")))
            body.append(_field(b"\x12", b"".join(scope_body)))
        if resource.schema_url:
            body.append(_field(b"\x1a", resource.schema_url.encode("utf-8")))
        request.append(_field(b"\x0a", b"".join(body)))
    return b"".join(request)


def _log_record(record: ReadableLogRecord) -> bytes:
    api = record.log_record
    parts = []
    if api.timestamp:
        parts.append(b"\x09" + _pack_fixed64(api.timestamp))
    severity = getattr(api.severity_number, "value", None)
    if severity:
        parts.append(b"\x10" + _varint(severity))
    if api.severity_text:
        parts.append(_field(b"\x1a", api.severity_text.encode("utf-8")))
    parts.append(_field(b"\x2a", _value(api.body)))
    parts.append(encode_attributes(b"\x32", api.attributes))
    if record.dropped_attributes:
        parts.append(b"\x38" + _varint(record.dropped_attributes))
    flags = int(api.trace_flags) if api.trace_flags is not None else 0
    if flags:
        parts.append(b"\x45" + _pack_fixed32(flags))
    if api.trace_id:
        parts.append(b"\x4a\x10" + api.trace_id.to_bytes(16, "big"))
    if api.span_id:
        parts.append(b"\x52\x08" + api.span_id.to_bytes(8, "big"))
    if api.observed_timestamp:
        parts.append(b"\x59" + _pack_fixed64(api.observed_timestamp))
    if api.event_name:
        parts.append(_field(b"\x62", api.event_name.encode("utf-8")))
    return b"".join(parts)


class Encoded(Sequence[Any]):
    """Spans or log records and their encoded request: a sequence of the items, so any exporter can
    take it, whose ``data`` the exporters here send as it is."""

    __slots__ = ("data", "items")

    def __init__(self, items: Sequence[Any], data: bytes) -> None:
        self.items, self.data = items, data

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: Any) -> Any:
        return self.items[index]


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of ``spans``, as the SDK's encoder would build it."""
    if isinstance(spans, Encoded):
        return spans.data
    return _request([(span, _span(span)) for span in spans])


def encode_logs(records: Sequence[ReadableLogRecord]) -> bytes:
    """The serialized ``ExportLogsServiceRequest`` of ``records``, as the SDK's encoder would build it."""
    if isinstance(records, Encoded):
        return records.data
    return _request([(record, _log_record(record)) for record in records])


def _requests(
    items: Sequence[Any], limit: int, encode: Callable[[Any], bytes]
) -> tuple[list[Encoded], list[Any]]:
    pieces = [(item, encode(item)) for item in items]
    requests: list[Encoded] = []
    oversized: list[Any] = []
    pending = [pieces]
    while pending:
        chunk = pending.pop()
        if not chunk:
            continue
        data = _request(chunk)
        if len(data) <= limit:
            requests.append(Encoded([item for item, _ in chunk], data))
        elif len(chunk) == 1:
            oversized.append(chunk[0][0])
        else:
            half = len(chunk) // 2
            pending += [chunk[half:], chunk[:half]]  # the first half is taken next: order is kept
    return requests, oversized


def encode_requests(spans: Sequence[ReadableSpan], limit: int) -> tuple[list[Encoded], list[ReadableSpan]]:
    """``spans`` encoded as requests of at most ``limit`` bytes each, and the spans too large alone.

    Each span is encoded once; sizes are exact, so a batch under the limit (the usual case) costs
    nothing more than its encoding.
    """
    return _requests(spans, limit, _span)


def encode_log_requests(
    records: Sequence[ReadableLogRecord], limit: int
) -> tuple[list[Encoded], list[ReadableLogRecord]]:
    """``records`` encoded as requests of at most ``limit`` bytes each, and the records too large alone."""
    return _requests(records, limit, _log_record)


# --------------------------------------------------------------------------- the OTLP exporters


@dataclass(frozen=True, slots=True)
class _Signal:
    """Where a signal's SDK exporters and request type live, and how this module encodes it."""

    grpc: str
    http: str
    request: str
    encode: Callable[[Any], bytes]
    requests: Callable[[Any, int], tuple[list[Encoded], list[Any]]]
    name: str


_TRACES = _Signal(
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter:OTLPSpanExporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter:OTLPSpanExporter",
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2:ExportTraceServiceRequest",
    encode_spans,
    encode_requests,
    "span",
)
_LOGS = _Signal(
    "opentelemetry.exporter.otlp.proto.grpc._log_exporter:OTLPLogExporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter:OTLPLogExporter",
    "opentelemetry.proto.collector.logs.v1.logs_service_pb2:ExportLogsServiceRequest",
    encode_logs,
    encode_log_requests,
    "log record",
)


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _grpc(signal: _Signal, endpoint: str) -> Any:
    """The SDK's OTLP/gRPC exporter of ``signal`` (its settings, channel, retries) on this encoder.

    The SDK exporter takes its request from ``_translate_data``, the hook each signal's exporter
    implements; here it parses the bytes this module wrote (one C call, about 1 µs an item) instead of
    building the request object by object. Where an SDK release lacks that hook, its own exporter is used.
    """
    sdk, request_type = _load(signal.grpc), _load(signal.request)
    if not callable(getattr(sdk, "_translate_data", None)):
        return sdk(endpoint=endpoint)

    class GrpcExporter(sdk):  # type: ignore[misc, valid-type]
        requests = staticmethod(signal.requests)

        def _translate_data(self, data: Sequence[Any]) -> Any:
            return request_type.FromString(signal.encode(data))

    return GrpcExporter(endpoint=endpoint)


def _http(signal: _Signal, endpoint: str, session: Any) -> Any:
    """The SDK's OTLP/HTTP exporter of ``signal`` (its settings, client, retries) sending this module's bytes.

    Its ``export`` is the SDK's with the encoder swapped: the same shutdown check, size limit, export
    metrics and HTTP client. Where an SDK release lacks those parts, its own ``export`` runs.
    """
    sdk = _load(signal.http)
    success, failure = (
        (SpanExportResult.SUCCESS, SpanExportResult.FAILURE)
        if signal is _TRACES
        else (LogRecordExportResult.SUCCESS, LogRecordExportResult.FAILURE)
    )

    class HttpExporter(sdk):  # type: ignore[misc, valid-type]
        requests = staticmethod(signal.requests)

        def __init__(self) -> None:
            super().__init__(endpoint=endpoint, session=session)
            parts = ("_client", "_metrics", "_max_request_size", "_shutdown")
            self.direct = all(hasattr(self, name) for name in parts)

        def export(self, batch: Sequence[Any]) -> Any:
            if not self.direct:
                return super().export(batch)
            if self._shutdown:
                logger.warning("Exporter already shutdown, ignoring batch")
                return failure
            with self._metrics.export_operation(len(batch)) as result:
                try:
                    data = signal.encode(batch)
                except Exception as error:
                    logger.error("Failed to encode %s batch: %s", signal.name, error)
                    result.error = error
                    return failure
                limit = self._max_request_size
                if limit > 0 and len(data) > limit:
                    logger.warning(
                        "Dropping %s batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                        signal.name,
                        len(data),
                        limit,
                    )
                    result.error = ValueError(f"a {signal.name} request of {len(data)} bytes is over {limit}")
                    return failure
                answer = self._client.export(data)
                if not answer.success:
                    result.error = answer.error
                    if answer.status_code is not None:
                        result.error_attrs = {"http.response.status_code": answer.status_code}
                    return failure
            return success

    return HttpExporter()


def grpc_span_exporter(endpoint: str) -> SpanExporter:
    """The SDK's OTLP/gRPC span exporter, encoding with ``encode_spans``."""
    return cast(SpanExporter, _grpc(_TRACES, endpoint))


def http_span_exporter(endpoint: str, session: Any) -> SpanExporter:
    """The SDK's OTLP/HTTP span exporter, sending ``encode_spans``'s bytes."""
    return cast(SpanExporter, _http(_TRACES, endpoint, session))


def grpc_log_exporter(endpoint: str) -> LogRecordExporter:
    """The SDK's OTLP/gRPC log record exporter, encoding with ``encode_logs``."""
    return cast(LogRecordExporter, _grpc(_LOGS, endpoint))


def http_log_exporter(endpoint: str, session: Any) -> LogRecordExporter:
    """The SDK's OTLP/HTTP log record exporter, sending ``encode_logs``'s bytes."""
    return cast(LogRecordExporter, _http(_LOGS, endpoint, session))
