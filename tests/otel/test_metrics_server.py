"""The ``/metrics`` server's resources: a fixed number of threads, read deadlines, a connection limit."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import socket
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator

from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stageflow_otel import MetricsServer, PrometheusMetricReader, start_metrics_server


@pytest.fixture(name="reader")
def _reader() -> Iterator[PrometheusMetricReader]:
    """A reader on a meter provider holding one counter."""
    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("test").create_counter("requests").add(3)
    yield reader
    provider.shutdown()


def scrape(server: MetricsServer) -> tuple[int, str]:
    """One scrape: its status and body."""
    with urllib.request.urlopen(server.url, timeout=10) as response:
        return response.status, response.read().decode()


def connect(server: MetricsServer, sent: bytes = b"") -> socket.socket:
    """A client connection to ``server`` that sent ``sent`` (and reads with a 10 s timeout)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    if sent:
        sock.sendall(sent)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def answer(reader: PrometheusMetricReader, sent: bytes, **options: float) -> bytes:
    """The status line a server on ``reader`` (started with ``options``) answers a client that sent
    ``sent``, read until the server closes the connection."""
    server = start_metrics_server(reader, port=0, **options)  # type: ignore[arg-type]
    client = connect(server, sent)
    try:
        return read_all(client).split(b"\r\n")[0]
    finally:
        client.close()
        server.close()


class TestThreads:
    def test_300_idle_connections_start_no_thread(self, reader: PrometheusMetricReader) -> None:
        """300 idle connections cost no thread: the server keeps its 3, and a scrape still answers."""
        baseline = threading.active_count()
        server = start_metrics_server(reader, port=0)
        clients = [connect(server) for _ in range(300)]
        try:
            status, body = scrape(server)  # accepted after the 300, so they are all accepted by now
            assert (status, "requests_total" in body) == (200, True)
            assert threading.active_count() - baseline == 3
            assert [t.name for t in server.threads] == [
                "stageflow-otel-metrics-server",
                "stageflow-otel-metrics-server-worker-1",
                "stageflow-otel-metrics-server-worker-2",
            ]
        finally:
            for client in clients:
                client.close()
            server.close()
        assert [t.is_alive() for t in server.threads] == [False, False, False]

    def test_the_oldest_waiting_connection_makes_room(self, reader: PrometheusMetricReader) -> None:
        """Past ``max_connections``, the connection waiting longest for its request is closed."""
        server = start_metrics_server(reader, port=0, max_connections=2)
        first, second = connect(server), connect(server)
        try:
            assert scrape(server)[0] == 200  # the third connection: ``first`` makes room
            assert read_all(first) == b""
            second.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_all(second).startswith(b"HTTP/1.1 200 OK\r\n")
        finally:
            first.close()
            second.close()
            server.close()


class TestDeadlines:
    def test_a_slowloris_does_not_block_scrapes(self, reader: PrometheusMetricReader) -> None:
        """60 connections holding half-sent requests leave scrapes answered at once."""
        server = start_metrics_server(reader, port=0)
        partial = [connect(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n") for _ in range(60)]
        try:
            assert [scrape(server)[0] for _ in range(3)] == [200, 200, 200]
        finally:
            for client in partial:
                client.close()
            server.close()

    def test_an_incomplete_request_times_out_with_408(self, reader: PrometheusMetricReader) -> None:
        """A request head not complete within ``request_timeout`` is answered 408 and closed."""
        status = answer(reader, b"GET /metrics HTTP/1.1\r\n", request_timeout=0.2)
        assert status == b"HTTP/1.1 408 Request Timeout"

    def test_trickling_bytes_does_not_extend_the_deadline(self, reader: PrometheusMetricReader) -> None:
        """A client sending one header byte every 20 ms still gets its 408 at ``request_timeout``."""
        server = start_metrics_server(reader, port=0, request_timeout=0.3)
        client = connect(server, b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        stop = threading.Event()
        sent: list[int] = []

        def trickle() -> None:
            while not stop.is_set() and len(sent) < 500:  # 10 s at most
                try:
                    client.send(b"a")
                except OSError:
                    return
                sent.append(1)
                time.sleep(0.02)  # the attacker's pace, not a wait for the server

        thread = threading.Thread(target=trickle)
        thread.start()
        try:
            response = read_all(client)
        finally:
            stop.set()
            thread.join()
            client.close()
            server.close()
        assert (response.split(b"\r\n")[0], len(sent) < 500) == (b"HTTP/1.1 408 Request Timeout", True)

    def test_an_oversized_request_head_gets_431(self, reader: PrometheusMetricReader) -> None:
        """A request head over 16 KiB is answered 431 and closed."""
        status = answer(reader, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 17_000)
        assert status == b"HTTP/1.1 431 Request Header Fields Too Large"

    def test_a_malformed_request_line_gets_400(self, reader: PrometheusMetricReader) -> None:
        """A request line that is not ``METHOD target HTTP/x`` is answered 400."""
        assert answer(reader, b"hello\r\n\r\n") == b"HTTP/1.1 400 Bad Request"


class TestOptions:
    @pytest.mark.parametrize(
        ("option", "value", "message"),
        [
            ("workers", 0, "workers must be an int of at least 1, got 0"),
            ("max_connections", 0, "max_connections must be an int of at least 1, got 0"),
            ("request_timeout", 0.0, "request_timeout must be a number of seconds > 0, got 0.0"),
            ("write_timeout", -1.0, "write_timeout must be a number of seconds > 0, got -1.0"),
        ],
        ids=["workers", "connections", "request", "write"],
    )
    def test_invalid_options(
        self, reader: PrometheusMetricReader, option: str, value: float, message: str
    ) -> None:
        """Bad limits are refused before a port is bound, naming the option and the value."""
        with pytest.raises(ValueError, match=f"^{message}$"):
            start_metrics_server(reader, port=0, **{option: value})  # type: ignore[arg-type]


class TestClientsThatNeverRead:
    def test_they_share_one_rendering_with_a_scrape_which_gets_the_whole_page(self) -> None:
        """Eight clients request a 7 MB page and never read it; a scrape meanwhile joins the same single
        rendering and reads the whole page while their responses sit unread."""
        reader = PrometheusMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        histogram = provider.get_meter("test").create_histogram("stage.duration", unit="s")
        for i in range(2000):
            histogram.record(0.1, {"stage": f"stage-number-{i:05d}", "pipeline": "a-pipeline-name"})
        rendering, release = threading.Event(), threading.Event()
        renders: list[int] = []

        class Gate(Collector):
            """Holds the first rendering until the test has every request waiting for it."""

            def collect(self) -> Iterable[Metric]:
                renders.append(len(renders) + 1)
                if len(renders) == 1:
                    rendering.set()
                    release.wait(60)
                return [GaugeMetricFamily("gate", "Renderings so far.", value=len(renders))]

        registry = CollectorRegistry()
        registry.register(Gate())
        server = start_metrics_server(reader, port=0, registry=registry, write_timeout=3600)
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n"
        never_read = []
        scraped: list[tuple[int, str]] = []
        try:
            for _ in range(8):
                client = socket.socket()
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                client.connect(("127.0.0.1", server.port))
                client.sendall(request)
                never_read.append(client)
            assert rendering.wait(60)
            scraper = threading.Thread(target=lambda: scraped.append(scrape(server)))
            scraper.start()
            assert server._server.wait_for_waiting(9, 60)
            release.set()
            scraper.join(60)
        finally:
            release.set()
            for client in never_read:
                client.close()
            server.close()
            provider.shutdown()
        status, body = scraped[0]
        series = [line for line in body.splitlines() if line.startswith("stage_duration_seconds_count{")]
        assert (status, renders, len(series), "gate 1.0" in body) == (200, [1], 2000, True)
