"""The real consumers of the live stack test: their binaries, their configs on free ports, Jaeger's API.

The binaries come from ``collector/build-stack.sh`` (built from the Go module proxy, cached by version).
``stack_binary`` skips a test when one is missing, except in CI (``CI=true``), where it fails: CI builds
them first, so a missing binary there is a broken build, never a reason to skip.

The configs are the shipped files with their endpoints rewritten, and nothing else: each ``host:port`` the
compose network would resolve (``jaeger:4317``, ``loki:3100``, ``0.0.0.0:4317`` inside a container...) is
mapped to a free 127.0.0.1 port. ``rewrite_endpoints`` refuses an endpoint it has no mapping for, so a
new listener in a shipped file cannot slip through on its default port.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from ._assets import COLLECTOR, load_yaml
from ._live import free_port

__all__ = (
    "BUILD_SCRIPT",
    "STACK_PORTS",
    "Address",
    "JaegerAPI",
    "JaegerError",
    "collector_config",
    "free_ports",
    "in_ci",
    "jaeger_config",
    "rewrite_endpoints",
    "stack_binary",
    "stack_built",
    "stack_paths",
    "without_endpoints",
)

BUILD_SCRIPT = COLLECTOR / "build-stack.sh"

Address = tuple[str, int]
"""``(host, port)``."""


def in_ci() -> bool:
    """Whether this runs in CI (``CI`` set to ``true`` or ``1``, as CI services do)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


@cache
def stack_paths() -> dict[str, str]:
    """``build-stack.sh --print``: the pinned versions, and where each binary is (or will be)."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return {name: value for name, _, value in (line.partition("=") for line in out.splitlines())}


def stack_built(path: Path, what: str) -> Path:
    """``path`` if it exists; else skips, or fails in CI (where build-stack.sh runs before the tests)."""
    if not path.exists():
        message = f"{what} is not built ({path}): run collector/build-stack.sh"
        if in_ci():
            pytest.fail(f"{message} (CI's .ci/run does before the tests)")
        pytest.skip(message)
    return path


def stack_binary(name: str) -> str:
    """A built binary's path (``otelcol``, ``jaeger``, ``prometheus``, ``promtool``); see ``stack_built``."""
    return str(stack_built(Path(stack_paths()[name]), name))


def _split(endpoint: str) -> tuple[str, Address, str]:
    """``(scheme://, (host, port), path)`` of ``host:port`` or a URL (scheme and path may be empty)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        scheme, rest = "", endpoint
    hostport, slash, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    return (f"{scheme}://" if sep else ""), (host, int(port)), slash + path


def rewrite_endpoints(document: Any, mapping: Mapping[Address, Address]) -> Any:
    """A copy of a parsed config whose every ``endpoint`` value is mapped by ``mapping``.

    Keeps the scheme and path of URLs. Raises ``LookupError`` naming an endpoint that has no mapping.
    """

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rewrite(v) if k == "endpoint" else walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    def rewrite(endpoint: Any) -> Any:
        if not isinstance(endpoint, str):
            return walk(endpoint)
        scheme, address, path = _split(endpoint)
        if address not in mapping:
            raise LookupError(f"no mapping for endpoint {endpoint!r} (known: {sorted(mapping)})")
        host, port = mapping[address]
        return f"{scheme}{host}:{port}{path}"

    return walk(copy.deepcopy(document))


def without_endpoints(document: Any) -> Any:
    """A parsed config with every ``endpoint`` value replaced by ``"<endpoint>"`` (to compare the rest)."""
    if isinstance(document, dict):
        return {k: "<endpoint>" if k == "endpoint" else without_endpoints(v) for k, v in document.items()}
    if isinstance(document, list):
        return [without_endpoints(v) for v in document]
    return document


class JaegerError(RuntimeError):
    """Jaeger's query API answered with an error."""


@dataclass(frozen=True, slots=True)
class JaegerAPI:
    """The endpoints of Jaeger's HTTP query API that its UI uses (traces, services, Monitor tab)."""

    base_url: str
    timeout: float = 30.0

    def _get(self, path: str, params: Mapping[str, str | Sequence[str]] | None = None) -> Any:
        query = urllib.parse.urlencode(params or {}, doseq=True)
        url = f"{self.base_url}{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                raise JaegerError(f"GET {path} {params}: HTTP {error.code}: {error.read()[:300]!r}") from None

    def services(self) -> list[str]:
        """``/api/services``: the service names Jaeger has traces of."""
        try:
            names: list[str] = self._get("/api/services")["data"] or []
        except OSError:
            return []
        return names

    def traces(self, service: str, *, start_us: int, end_us: int, limit: int) -> list[dict[str, Any]]:
        """``/api/traces``: the traces of ``service`` between two times (microseconds), at most ``limit``."""
        found: list[dict[str, Any]] = self._get(
            "/api/traces",
            {"service": service, "start": str(start_us), "end": str(end_us), "limit": str(limit)},
        )["data"]
        return found

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """``/api/traces/<id>``: the trace (a one-element list), or ``[]`` when Jaeger does not know it."""
        try:
            found: list[dict[str, Any]] = self._get(f"/api/traces/{trace_id}")["data"]
        except JaegerError as exc:
            if "HTTP 404" in str(exc):
                return []
            raise
        return found

    def monitor(self, metric: str, service: str, *, end_ms: int, **extra: str) -> dict[str, Any]:
        """``/api/metrics/<metric>`` (calls, latencies, errors) of internal spans, as the Monitor tab asks."""
        params = {
            "service": service,
            "spanKind": "internal",
            "endTs": str(end_ms),
            "lookback": "600000",
            "step": "5000",
            "ratePer": "60000",
            **extra,
        }
        found: dict[str, Any] = self._get(f"/api/metrics/{metric}", params)
        return found


STACK_PORTS = (
    "jaeger_otlp_grpc",
    "jaeger_otlp_http",
    "jaeger_health",
    "jaeger_query",
    "jaeger_query_grpc",
    "jaeger_telemetry",
    "collector_otlp_grpc",
    "collector_otlp_http",
    "collector_health",
    "collector_prometheus",
    "collector_telemetry",
    "prometheus",
)
"""The loopback ports Jaeger, the collector and Prometheus listen on in a live stack."""


def free_ports(names: Sequence[str]) -> dict[str, int]:
    """A distinct free port for each of ``names``."""
    ports: dict[str, int] = {}
    while len(ports) < len(names):
        port = free_port()
        if port not in ports.values():
            ports[names[len(ports)]] = port
    return ports


def _local(port: int) -> Address:
    return ("127.0.0.1", port)


def _otlp_listeners(ports: dict[str, int], name: str) -> dict[Address, Address]:
    """The OTLP/gRPC, OTLP/HTTP and health listeners a shipped config of ``name`` (``jaeger`` or
    ``collector``) opens on all interfaces, each to its free loopback port ``{name}_otlp_grpc`` and so on."""
    return {
        ("0.0.0.0", 4317): _local(ports[f"{name}_otlp_grpc"]),
        ("0.0.0.0", 4318): _local(ports[f"{name}_otlp_http"]),
        ("0.0.0.0", 13133): _local(ports[f"{name}_health"]),
    }


def jaeger_config(ports: dict[str, int]) -> dict[str, Any]:
    """collector/jaeger/config.yaml on free ports; its query and telemetry listeners pinned likewise."""
    shipped = load_yaml(COLLECTOR / "jaeger" / "config.yaml")
    config: dict[str, Any] = rewrite_endpoints(
        shipped,
        {**_otlp_listeners(ports, "jaeger"), ("prometheus", 9090): _local(ports["prometheus"])},
    )
    # Listeners the shipped file leaves at their defaults (0.0.0.0:16686 and :16685, :8888 in the
    # container): set to free loopback ports, endpoints only.
    query = config["extensions"]["jaeger_query"]
    query["http"] = {"endpoint": f"127.0.0.1:{ports['jaeger_query']}"}
    query["grpc"] = {"endpoint": f"127.0.0.1:{ports['jaeger_query_grpc']}"}
    config["service"]["telemetry"] = _telemetry(ports["jaeger_telemetry"])
    assert without_endpoints(_drop_added(config)) == without_endpoints(shipped)
    return config


def _telemetry(port: int) -> dict[str, Any]:
    reader = {"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": port}}}}
    return {"metrics": {"readers": [reader]}}


def _drop_added(jaeger: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = copy.deepcopy(jaeger)
    del config["extensions"]["jaeger_query"]["http"], config["extensions"]["jaeger_query"]["grpc"]
    del config["service"]["telemetry"]
    return config


def collector_config(ports: dict[str, int], loki_port: int) -> dict[str, Any]:
    """collector/otelcol.yaml with the compose hosts and container listeners on free loopback ports."""
    shipped = load_yaml(COLLECTOR / "otelcol.yaml")
    config: dict[str, Any] = rewrite_endpoints(
        shipped,
        {
            **_otlp_listeners(ports, "collector"),
            ("0.0.0.0", 8889): _local(ports["collector_prometheus"]),
            ("jaeger", 4317): _local(ports["jaeger_otlp_grpc"]),
            ("loki", 3100): _local(loki_port),
        },
    )
    readers = config["service"]["telemetry"]["metrics"]["readers"]
    assert [r["pull"]["exporter"]["prometheus"] for r in readers] == [{"host": "0.0.0.0", "port": 8888}]
    readers[0]["pull"]["exporter"]["prometheus"] = {"host": "127.0.0.1", "port": ports["collector_telemetry"]}
    compared = json.loads(json.dumps(config))
    compared["service"]["telemetry"] = shipped["service"]["telemetry"]
    assert without_endpoints(compared) == without_endpoints(shipped)
    return config
