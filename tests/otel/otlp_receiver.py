"""Real OTLP endpoints for the tests: a gRPC and an HTTP receiver on 127.0.0.1 that keep what they receive."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc  # type: ignore[import-untyped]
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = ("FreezableReceiver", "GrpcReceiver", "HttpReceiver", "OtlpReceiver", "closed_port")


class OtlpReceiver:
    """Keeps every OTLP export request; subclasses serve it over one transport.

    Two switches make it misbehave the way a collector can: ``rejecting`` answers every request with a
    non-retryable error (gRPC ``INVALID_ARGUMENT``, HTTP 400) and keeps nothing; ``hold()`` makes requests
    wait (``held`` counts them) until ``release()``, after which each is kept or rejected as ``rejecting``
    says then.
    """

    protocol = ""
    endpoint = ""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.logs: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.rejecting = False
        self.rejected = 0
        self.held = 0
        self.headers: list[tuple[str, dict[str, str]]] = []
        """The signal and headers of every HTTP request, in arrival order."""
        self._gate = threading.Event()
        self._gate.set()

    def hold(self) -> None:
        """Make every request from now on wait until ``release()``."""
        self._gate.clear()

    def release(self) -> None:
        """Let the held requests (and later ones) through."""
        self._gate.set()

    def _accept(self) -> bool:
        """Wait while held; ``True`` to keep the request, ``False`` to reject it (counted)."""
        if not self._gate.is_set():
            with self._cond:
                self.held += 1
                self._cond.notify_all()
            self._gate.wait()
        with self._cond:
            if self.rejecting:
                self.rejected += 1
                self._cond.notify_all()
                return False
        return True

    def _store(self, kind: str, request: Any) -> None:
        with self._cond:
            getattr(self, kind).append(request)
            self._cond.notify_all()

    def spans(self) -> list[Span]:
        """Every span received, in arrival order."""
        with self._cond:
            return [
                s for r in self.traces for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans
            ]

    def log_records(self) -> list[LogRecord]:
        """Every log record received, in arrival order."""
        with self._cond:
            return [
                rec
                for r in self.logs
                for rl in r.resource_logs
                for sl in rl.scope_logs
                for rec in sl.log_records
            ]

    def metric_names(self) -> set[str]:
        """The names of every metric received."""
        return {m.name for m in self.iter_metrics()}

    def iter_metrics(self) -> Iterator[Metric]:
        """Every metric of every request received."""
        with self._cond:
            requests = list(self.metrics)
        for r in requests:
            for rm in r.resource_metrics:
                for sm in rm.scope_metrics:
                    yield from sm.metrics

    def resource_attributes(self) -> dict[str, str]:
        """The string resource attributes of the first trace request."""
        with self._cond:
            resource = self.traces[0].resource_spans[0].resource
        return {a.key: a.value.string_value for a in resource.attributes}

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate()`` holds (re-checked on every request), at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def stop(self) -> None:
        """Stop serving and release the port."""
        raise NotImplementedError


class _Export:
    """The one method of every OTLP/gRPC service: keep the request of ``kind`` unless the receiver rejects
    it, and answer with an empty ``response``."""

    kind: str
    response: type[Any]

    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not self.receiver._accept():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "rejected by the test receiver")
        self.receiver._store(self.kind, request)
        return self.response()


class _Traces(_Export, trace_service_pb2_grpc.TraceServiceServicer):
    kind = "traces"
    response = trace_service_pb2.ExportTraceServiceResponse


class _Metrics(_Export, metrics_service_pb2_grpc.MetricsServiceServicer):
    kind = "metrics"
    response = metrics_service_pb2.ExportMetricsServiceResponse


class _Logs(_Export, logs_service_pb2_grpc.LogsServiceServicer):
    kind = "logs"
    response = logs_service_pb2.ExportLogsServiceResponse


class GrpcReceiver(OtlpReceiver):
    """An OTLP/gRPC receiver (TraceService, MetricsService, LogsService) on a free 127.0.0.1 port."""

    protocol = "grpc"

    def __init__(self) -> None:
        super().__init__()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc-receiver")
        self._server = grpc.server(self._pool)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), self._server)  # type: ignore[no-untyped-call]
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self), self._server)  # type: ignore[no-untyped-call]
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self), self._server)  # type: ignore[no-untyped-call]
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Release held requests, stop the server and its worker threads."""
        self.release()
        self._server.stop(grace=None).wait()
        self._pool.shutdown(wait=True)


_HTTP_PATHS: dict[str, tuple[str, type[Any], type[Any]]] = {
    "/v1/traces": (
        "traces",
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
    "/v1/metrics": (
        "metrics",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "/v1/logs": (
        "logs",
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
    ),
}


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer

    def do_POST(self) -> None:
        base = self.server.base_path
        route = _HTTP_PATHS.get(self.path[len(base) :]) if self.path.startswith(base) else None
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if route is None:
            self.send_error(404)
            return
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        kind, request_type, response_type = route
        with self.server.receiver._cond:
            self.server.receiver.headers.append((kind, dict(self.headers.items())))
        if not self.server.receiver._accept():
            self.send_error(400, "rejected by the test receiver")
            return
        request = request_type()
        request.ParseFromString(body)
        self.server.receiver._store(kind, request)
        payload = response_type().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True

    def __init__(self, receiver: OtlpReceiver, base_path: str) -> None:
        self.receiver = receiver
        self.base_path = base_path
        super().__init__(("127.0.0.1", 0), _Handler)


class HttpReceiver(OtlpReceiver):
    """An OTLP/HTTP receiver (protobuf POSTs to ``/v1/traces|metrics|logs``) on a free 127.0.0.1 port.

    ``base_path`` prefixes those paths (``"/otlp"`` serves ``/otlp/v1/logs``, as Loki does); any other
    path is answered 404.
    """

    protocol = "http/protobuf"

    def __init__(self, base_path: str = "") -> None:
        super().__init__()
        self._server = _HttpServer(self, base_path.rstrip("/"))
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="otlp-http-receiver", daemon=True
        )
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}{base_path.rstrip('/')}"

    def stop(self) -> None:
        """Release held requests, stop serving, close the socket and join the thread."""
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, read and released; connections to it are refused)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _points(receiver: OtlpReceiver) -> int:
    total = 0
    for metric in receiver.iter_metrics():
        kind = metric.WhichOneof("data")
        total += len(getattr(metric, kind).data_points) if kind else 0
    return total


def _reached(counts: Callable[[], dict[str, int]], targets: dict[str, int]) -> bool:
    now = counts()
    return all(now[k] >= v for k, v in targets.items())


def _serve() -> None:
    """The child of ``FreezableReceiver``: an HTTP receiver answering ``counts`` lines on stdin."""
    receiver = HttpReceiver()
    sys.stdout.write(receiver.endpoint + "\n")
    sys.stdout.flush()

    def counts() -> dict[str, int]:
        return {
            "spans": len(receiver.spans()),
            "log_records": len(receiver.log_records()),
            "metric_points": _points(receiver),
        }

    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "await":  # wait until every count reaches its target (10 s at most)
            targets: dict[str, int] = json.loads(argument)
            receiver.wait_for(partial(_reached, counts, targets))
        sys.stdout.write(json.dumps(counts()) + "\n")
        sys.stdout.flush()
    receiver.stop()


class FreezableReceiver:
    """An OTLP/HTTP receiver in a child process that ``freeze()`` stops (SIGSTOP) and ``resume()`` resumes.

    Frozen, it reads nothing and answers nothing, as a collector paused by a debugger, a stalled VM or a
    stopped container does; its kernel still accepts connections and buffers what is sent.
    """

    protocol = "http/protobuf"

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from tests.otel.otlp_receiver import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        )
        assert self._process.stdout is not None
        self.endpoint = self._process.stdout.readline().strip()

    def freeze(self) -> None:
        """Stop the receiver process (SIGSTOP)."""
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let the stopped receiver process run again (SIGCONT)."""
        os.kill(self._process.pid, signal.SIGCONT)

    def counts(self, **at_least: int) -> dict[str, int]:
        """Spans, log records and metric data points received (``spans``, ``log_records``,
        ``metric_points``), once each count named in ``at_least`` reaches its value (10 s at most).

        The process must be running.
        """
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(f"await {json.dumps(at_least)}\n" if at_least else "counts\n")
        self._process.stdin.flush()
        counts: dict[str, int] = json.loads(self._process.stdout.readline())
        return counts

    def stop(self) -> None:
        """Resume the process if stopped, end it and wait for it."""
        self.resume()
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
