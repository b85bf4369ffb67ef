"""Helpers of the live stack test: free ports, child processes stopped by pid, the Prometheus HTTP API.

Nothing here sleeps to coordinate: ``wait_until`` polls a condition that depends on network delivery
(a scrape, a rule evaluation) until it holds or a deadline passes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

from ._assets import COLLECTOR, load_yaml

if TYPE_CHECKING:
    from tests.otel.otlp_receiver import HttpReceiver

__all__ = (
    "Child",
    "PrometheusAPI",
    "PrometheusError",
    "free_port",
    "healthy",
    "listening_sockets",
    "shipped_collector",
    "wait_until",
    "write_prometheus_config",
)


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10_000
_given: set[int] = set()
_random = random.SystemRandom()


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives to ``bind(port 0)`` and to outgoing connections (Linux's by default)."""
    try:
        low, high = (int(v) for v in _EPHEMERAL_RANGE.read_text(encoding="ascii").split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing is bound to, outside the ephemeral range, new to this process.

    A child binds the port seconds later. A port from ``bind(port 0)`` lies in the kernel's ephemeral
    range, from which every outgoing connection meanwhile (a scrape, a health poll, an export) takes its
    local port: one may take it, and the child fails with "address already in use". The kernel never
    hands out a port outside that range by itself, so only another listener chosen the same way could
    take it; no port is handed out twice by this process.
    """
    low, high = _ephemeral_range()
    ranges = [r for r in (range(_LOWEST_PORT, low), range(high + 1, 65536)) if len(r)]
    for _ in range(1000):
        if not ranges:
            break
        port = _random.choice(_random.choice(ranges))
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    # No room outside the ephemeral range: a port of the kernel's choosing (racy, but never taken twice).
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            chosen: int = sock.getsockname()[1]
        if chosen not in _given:
            _given.add(chosen)
            return chosen


def wait_until(condition: Callable[[], bool], *, timeout: float, interval: float = 0.25) -> bool:
    """Poll ``condition`` until it returns true (``True``) or ``timeout`` seconds pass (``False``)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Child:
    """A child process whose output goes to a log file, stopped by its pid (terminate, wait, kill)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        *,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log = log
        self._log_stream: IO[bytes] = log.open("wb")
        try:
            self.process = subprocess.Popen(
                list(argv),
                stdout=self._log_stream,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                cwd=cwd,
            )
        except BaseException:
            self._log_stream.close()
            raise
        self.pid = self.process.pid

    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the pid, wait up to ``timeout`` seconds, SIGKILL it if still alive; its exit code."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout)
            return self.process.returncode
        finally:
            self._log_stream.close()

    def output(self, limit: int = 4000) -> str:
        """The end of what the process wrote (stdout and stderr)."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return text[-limit:]

    def __repr__(self) -> str:
        return f"Child({self.name!r}, pid={self.pid})"


class PrometheusError(RuntimeError):
    """The Prometheus HTTP API answered with an error."""


@dataclass(frozen=True, slots=True)
class PrometheusAPI:
    """The few endpoints of Prometheus's HTTP API the live test uses."""

    base_url: str
    timeout: float = 10.0

    def _get_raw(
        self, path: str, params: Mapping[str, str | Sequence[str]] | None = None
    ) -> tuple[int, bytes]:
        query = urllib.parse.urlencode(params or {}, doseq=True)
        url = f"{self.base_url}{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return int(error.code), bytes(error.read())

    def ready(self) -> bool:
        """Whether ``/-/ready`` answers 200 (``False`` while starting or unreachable)."""
        try:
            status, _ = self._get_raw("/-/ready")
        except OSError:
            return False
        return status == 200

    def get(self, path: str, params: Mapping[str, str | Sequence[str]] | None = None) -> Any:
        """The ``data`` of a successful API answer; raises ``PrometheusError`` otherwise."""
        status, body = self._get_raw(path, params)
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise PrometheusError(f"GET {path} {params}: HTTP {status}, not JSON: {body[:200]!r}") from exc
        if status != 200 or answer.get("status") != "success":
            raise PrometheusError(f"GET {path} {params}: HTTP {status}: {answer.get('error', answer)}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result as a list of ``{"metric": ..., "value": [t, "v"]}`` (scalars wrapped).

        Evaluated now, or at ``at`` (a Unix time), as a dashboard whose time range ends then.
        """
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.get("/api/v1/query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def finite(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The samples of an instant query whose value is a finite number (what a panel can draw)."""
        return [s for s in self.query(expr, at) if math.isfinite(float(s["value"][1]))]

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """``/api/v1/label/<label>/values``, optionally restricted to series matching ``match``."""
        params: dict[str, str | Sequence[str]] = {} if match is None else {"match[]": [match]}
        values: list[str] = self.get(f"/api/v1/label/{urllib.parse.quote(label)}/values", params)
        return values

    def exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """``/api/v1/query_exemplars``: per series, its ``seriesLabels`` and ``exemplars``."""
        found: list[dict[str, Any]] = self.get(
            "/api/v1/query_exemplars", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        )
        return found

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule (recording and alerting), each with its group's ``file`` added."""
        found: list[dict[str, Any]] = []
        for group in self.get("/api/v1/rules")["groups"]:
            found += [{**rule, "file": group["file"], "group": group["name"]} for rule in group["rules"]]
        return found


def write_prometheus_config(
    directory: Path,
    *,
    job: str,
    target: str,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    source: Path = COLLECTOR / "prometheus.yml",
) -> Path:
    """Derive a config from ``collector/prometheus.yml``: its rule files, only ``job`` scraping ``target``.

    The rule files are copied next to the new config with the same relative layout, so the relative
    ``rule_files`` patterns resolve as they do in the repository and the container.
    """
    config: dict[str, Any] = load_yaml(source)
    for pattern in config.get("rule_files", []):
        top = Path(pattern).parts[0]
        if not (directory / top).exists():
            origin = source.parent / top
            if origin.is_dir():
                shutil.copytree(origin, directory / top)
            else:
                shutil.copy2(origin, directory / top)
    jobs = [dict(j) for j in config["scrape_configs"] if j["job_name"] == job]
    if len(jobs) != 1:
        raise LookupError(f"{source} has no scrape job {job!r}")
    jobs[0].update(scrape_interval=scrape_interval, static_configs=[{"targets": [target]}])
    config["scrape_configs"] = jobs
    config["global"] = {
        **config.get("global", {}),
        "scrape_interval": scrape_interval,
        "evaluation_interval": evaluation_interval,
    }
    path = directory / source.name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"


def _address(hex_address: str) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def listening_sockets(pid: int) -> list[tuple[str, str, int]]:
    """``(protocol, address, port)`` of each listening TCP and unconnected UDP socket ``pid`` holds."""
    inodes = _socket_inodes(pid)
    found: list[tuple[str, str, int]] = []
    for protocol, state in (
        ("tcp", _TCP_LISTEN),
        ("tcp6", _TCP_LISTEN),
        ("udp", _UDP_UNCONNECTED),
        ("udp6", _UDP_UNCONNECTED),
    ):
        table = Path(f"/proc/{pid}/net/{protocol}")
        if not table.exists():
            continue
        for line in table.read_text(encoding="ascii").splitlines()[1:]:
            fields = line.split()
            if fields[3] == state and fields[9] in inodes:
                found.append((protocol, *_address(fields[1])))
    return found


def healthy(url: str) -> bool:
    """Whether ``url`` answers 200 (within 2 s)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


@contextlib.contextmanager
def shipped_collector(directory: Path) -> Iterator[tuple[dict[str, int], HttpReceiver]]:
    """The collector built by ``collector/build-stack.sh`` running the shipped ``collector/otelcol.yaml``
    with its endpoints on free loopback ports, Jaeger and Loki replaced by local OTLP receivers (Loki's
    serving its ``/otlp`` path); yields those ports (``grpc``, ``http``, ``health``, ``prometheus``,
    ``telemetry``) and the Loki stand-in, once the collector is healthy."""
    from tests.otel.otlp_receiver import GrpcReceiver, HttpReceiver

    from ._stack import rewrite_endpoints, stack_binary

    binary = stack_binary("otelcol")
    ports = {name: free_port() for name in ("grpc", "http", "health", "prometheus", "telemetry")}
    jaeger, loki = GrpcReceiver(), HttpReceiver(base_path="/otlp")
    jaeger_port = int(jaeger.endpoint.rsplit(":", 1)[1])
    loki_port = int(loki.endpoint.rsplit(":", 1)[1].split("/")[0])
    local = "127.0.0.1"
    config: dict[str, Any] = rewrite_endpoints(
        load_yaml(COLLECTOR / "otelcol.yaml"),
        {
            ("0.0.0.0", 4317): (local, ports["grpc"]),
            ("0.0.0.0", 4318): (local, ports["http"]),
            ("0.0.0.0", 13133): (local, ports["health"]),
            ("0.0.0.0", 8889): (local, ports["prometheus"]),
            ("jaeger", 4317): (local, jaeger_port),
            ("loki", 3100): (local, loki_port),
        },
    )
    readers = config["service"]["telemetry"]["metrics"]["readers"]
    readers[0]["pull"]["exporter"]["prometheus"] = {"host": local, "port": ports["telemetry"]}
    path = directory / "otelcol.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    child = Child("otelcol", [binary, f"--config={path}"], directory / "otelcol.log")
    try:
        health = f"http://{local}:{ports['health']}/"
        assert wait_until(lambda: healthy(health), timeout=60), child.output()
        yield ports, loki
    finally:
        child.stop(30.0)
        jaeger.stop()
        loki.stop()
