"""OTLP trace requests encoded straight to protobuf bytes, without building protobuf objects.

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

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = (
    "EncodedSpans",
    "encode_attributes",
    "encode_requests",
    "encode_spans",
    "grpc_span_exporter",
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


def _request(pieces: Sequence[tuple[ReadableSpan, bytes]]) -> bytes:
    """The request of already encoded spans: grouped by resource, then scope, in order of appearance."""
    groups: list[tuple[Any, list[Any]]] = []
    for span, encoded in pieces:
        _members(_members(groups, span.resource), span.instrumentation_scope or None).append(encoded)
    request: list[bytes] = []
    for resource, scopes in groups:
        body = [_field(b"\x0a", encode_attributes(b"\x0a", resource.attributes))]
        for scope, spans in scopes:
            scope_body = [_field(b"\x0a", _scope(scope))]
            scope_body.extend(_field(b"\x12", span) for span in spans)
            if scope is not None and scope.schema_url:
                scope_body.append(_field(b"\x1a", scope.schema_url.encode("utf-8")))
            body.append(_field(b"\x12", b"".join(scope_body)))
        if resource.schema_url:
            body.append(_field(b"\x1a", resource.schema_url.encode("utf-8")))
        request.append(_field(b"\x0a", b"".join(body)))
    return b"".join(request)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of ``spans``, as the SDK's encoder would build it."""
    if isinstance(spans, EncodedSpans):
        return spans.data
    return _request([(span, _span(span)) for span in spans])


class EncodedSpans(Sequence[ReadableSpan]):
    """Spans and their encoded request: a sequence of the spans, so any exporter can take it, whose
    ``data`` the exporters here send as it is."""

    __slots__ = ("data", "spans")

    def __init__(self, spans: Sequence[ReadableSpan], data: bytes) -> None:
        self.spans, self.data = spans, data

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, index: Any) -> Any:
        return self.spans[index]


def encode_requests(
    spans: Sequence[ReadableSpan], limit: int
) -> tuple[list[EncodedSpans], list[ReadableSpan]]:
    """``spans`` encoded as requests of at most ``limit`` bytes each, and the spans too large alone.

    Each span is encoded once; sizes are exact, so a batch under the limit (the usual case) costs
    nothing more than its encoding.
    """
    pieces = [(span, _span(span)) for span in spans]
    requests: list[EncodedSpans] = []
    oversized: list[ReadableSpan] = []
    pending = [pieces]
    while pending:
        chunk = pending.pop()
        if not chunk:
            continue
        data = _request(chunk)
        if len(data) <= limit:
            requests.append(EncodedSpans([span for span, _ in chunk], data))
        elif len(chunk) == 1:
            oversized.append(chunk[0][0])
        else:
            half = len(chunk) // 2
            pending += [chunk[half:], chunk[:half]]  # the first half is taken next: order is kept
    return requests, oversized


# --------------------------------------------------------------------------- the OTLP span exporters


def grpc_span_exporter(endpoint: str) -> SpanExporter:
    """The SDK's OTLP/gRPC span exporter (its settings, channel, retries), encoding with ``encode_spans``.

    The SDK exporter takes its request from ``_translate_data``, the hook each signal's exporter
    implements; here it parses the bytes ``encode_spans`` wrote (one C call, about 1 µs a span) instead of
    building the request object by object. Where an SDK release lacks that hook, its own exporter is used.
    """
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    if not callable(getattr(OTLPSpanExporter, "_translate_data", None)):
        return OTLPSpanExporter(endpoint=endpoint)

    class GrpcSpanExporter(OTLPSpanExporter):
        requests = staticmethod(encode_requests)

        def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
            request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(encode_spans(data))
            return request

    return GrpcSpanExporter(endpoint=endpoint)


def http_span_exporter(endpoint: str, session: Any) -> SpanExporter:
    """The SDK's OTLP/HTTP span exporter (its settings, client, retries), sending ``encode_spans``'s bytes.

    Its ``export`` is the SDK's with the encoder swapped: the same shutdown check, size limit, export
    metrics and HTTP client. Where an SDK release lacks those parts, its own ``export`` runs.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    class HttpSpanExporter(OTLPSpanExporter):
        requests = staticmethod(encode_requests)

        def __init__(self) -> None:
            super().__init__(endpoint=endpoint, session=session)
            parts = ("_client", "_metrics", "_max_request_size", "_shutdown")
            self.direct = all(hasattr(self, name) for name in parts)

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if not self.direct:
                return super().export(spans)
            if self._shutdown:
                logger.warning("Exporter already shutdown, ignoring batch")
                return SpanExportResult.FAILURE
            with self._metrics.export_operation(len(spans)) as result:
                try:
                    data = encode_spans(spans)
                except Exception as error:
                    logger.error("Failed to encode span batch: %s", error)
                    result.error = error
                    return SpanExportResult.FAILURE
                limit = self._max_request_size
                if limit > 0 and len(data) > limit:
                    logger.warning(
                        "Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                        len(data),
                        limit,
                    )
                    result.error = ValueError(f"a span request of {len(data)} bytes is over {limit}")
                    return SpanExportResult.FAILURE
                answer = self._client.export(data)
                if not answer.success:
                    result.error = answer.error
                    if answer.status_code is not None:
                        result.error_attrs = {"http.response.status_code": answer.status_code}
                    return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

    return HttpSpanExporter()
