"""The shipped collector forwarding to a real Jaeger, for benchmarks that count what reaches Jaeger.

The binaries are the ones ``collector/build-stack.sh`` builds (the live stack tests use them too); the
configs are ``collector/otelcol.yaml`` and ``collector/jaeger/config.yaml`` with only their endpoints moved
to free loopback ports. The collector's Loki exporter gets a local OTLP/HTTP receiver; Jaeger's
Prometheus (for its Monitor tab, which no benchmark reads) a free port nothing listens on.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tests.otel.otlp_receiver import HttpReceiver
from tests.stack._live import Child, healthy, wait_until
from tests.stack._stack import (
    STACK_PORTS,
    JaegerAPI,
    collector_config,
    free_ports,
    jaeger_config,
    stack_paths,
)

__all__ = ("JaegerStack", "StackMissing")

READY_TIMEOUT = 60.0


class StackMissing(RuntimeError):
    """A binary of the stack is not built (run ``collector/build-stack.sh``)."""


class JaegerStack:
    """Jaeger and the collector on free loopback ports until ``stop()``; ``grpc``/``http`` are the
    collector's OTLP endpoints, ``spans(service)`` counts what Jaeger holds."""

    def __init__(self) -> None:
        paths = stack_paths()
        binaries = {name: Path(paths[name]) for name in ("jaeger", "otelcol")}
        missing = [str(path) for path in binaries.values() if not path.exists()]
        if missing:
            raise StackMissing(f"not built: {', '.join(missing)} (run collector/build-stack.sh)")
        self._directory = Path(tempfile.mkdtemp(prefix="stageflow-bench-stack-"))
        ports = free_ports(STACK_PORTS)
        self._loki = HttpReceiver(base_path="/otlp")
        loki_port = int(self._loki.endpoint.rsplit(":", 1)[1].split("/")[0])
        self._children: list[Child] = []
        try:
            jaeger = self._write("jaeger.yaml", jaeger_config(ports))
            env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{ports['jaeger_otlp_grpc']}"
            self._start("jaeger", [str(binaries["jaeger"]), "--config", str(jaeger)], env)
            self._ready(f"http://127.0.0.1:{ports['jaeger_health']}/status")
            collector = self._write("otelcol.yaml", collector_config(ports, loki_port))
            self._start("otelcol", [str(binaries["otelcol"]), f"--config={collector}"], None)
            self._ready(f"http://127.0.0.1:{ports['collector_health']}/")
        except BaseException:
            self.stop()
            raise
        self.grpc = f"http://127.0.0.1:{ports['collector_otlp_grpc']}"
        self.http = f"http://127.0.0.1:{ports['collector_otlp_http']}"
        self.jaeger = JaegerAPI(f"http://127.0.0.1:{ports['jaeger_query']}", timeout=120.0)

    def _write(self, name: str, config: dict[str, Any]) -> Path:
        path = self._directory / name
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None) -> None:
        self._children.append(Child(name, argv, self._directory / f"{name}.log", env, cwd=self._directory))

    def _ready(self, url: str) -> None:
        if not wait_until(
            lambda: healthy(url) or not all(c.running() for c in self._children), timeout=READY_TIMEOUT
        ) or not all(c.running() for c in self._children):
            logs = "\n".join(f"--- {c.name}:\n{c.output()}" for c in self._children)
            raise RuntimeError(f"the stack did not become healthy ({url})\n{logs}")

    def spans(self, service: str, traces: int) -> int:
        """How many spans of ``service`` Jaeger holds (searching at most ``traces`` traces)."""
        now = time.time()
        try:
            found = self.jaeger.traces(
                service, start_us=int((now - 3600) * 1e6), end_us=int((now + 60) * 1e6), limit=traces
            )
        except OSError:
            return 0
        return sum(len(trace["spans"]) for trace in found)

    def settled_spans(
        self, service: str, expected: int, traces: int, quiet: float = 15.0, limit: float = 180.0
    ) -> int:
        """Jaeger's count of ``service``'s spans once it is ``expected`` or unchanged for ``quiet`` s."""
        deadline = time.monotonic() + limit
        last, since = -1, time.monotonic()
        while True:
            count = self.spans(service, traces)
            if count >= expected or time.monotonic() > deadline:
                return count
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since > quiet:
                return count
            time.sleep(1.0)

    def stop(self) -> None:
        """The collector first (it flushes to Jaeger), then Jaeger and the Loki stand-in."""
        for child in reversed(self._children):
            child.stop(30.0)
        self._children.clear()
        self._loki.stop()
