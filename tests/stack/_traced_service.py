"""A second OS process a stage calls over HTTP: it continues the caller's trace from the request headers.

``python -m tests.stack._traced_service PORT`` serves ``GET /enrich`` on 127.0.0.1:PORT (and ``GET /health``).
Its telemetry is its own ``stageflow_otel.setup()`` from the ``OTEL_*`` environment, as any service's would
be. Each request opens a SERVER span whose parent is the context ``propagate.extract`` finds in the request
headers (what ``stageflow_otel.inject_context`` wrote), and flushes before answering, so the span has left
the process when the caller has its answer. SIGTERM ends it with exit code 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

import stageflow_otel

SPAN_NAME = "GET /enrich"


class _Handler(BaseHTTPRequestHandler):
    telemetry: stageflow_otel.Telemetry

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, {"ok": True})
            return
        if self.path != "/enrich":
            self._answer(404, {"error": "not found"})
            return
        # HTTP header names are case-insensitive (urllib sends ``Traceparent``); the W3C keys are lowercase
        parent = propagate.extract({name.lower(): value for name, value in self.headers.items()})
        tracer = trace.get_tracer("tests.traced_service")
        with tracer.start_as_current_span(
            SPAN_NAME, context=parent, kind=SpanKind.SERVER, attributes={"http.route": "/enrich"}
        ) as span:
            seen = span.get_span_context()
        flushed = self.telemetry.force_flush(10.0)
        self._answer(200, {"pid": os.getpid(), "trace_id": f"{seen.trace_id:032x}", "flushed": flushed})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the spans, not an access log."""


def main(port: int) -> int:
    telemetry = stageflow_otel.setup(loop_monitor=False)
    _Handler.telemetry = telemetry
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()
        telemetry.shutdown(5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
