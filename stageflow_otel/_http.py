"""A small HTTP/1.1 server for ``/metrics`` with a fixed number of threads and deadlines on every connection.

One thread owns the listening socket and every connection (non-blocking sockets under a ``selectors``
loop): it accepts, reads request heads and writes responses. A complete request is answered by one of a
few worker threads, which run the WSGI application (prometheus-client's, so content negotiation, gzip
and ``name[]`` filters are prometheus-client's own) and hand the bytes back to the loop to write. So:

* idle or slow connections cost a socket each, never a thread: the server runs ``1 + workers`` threads
  whatever the number of connections;
* a request head must arrive whole within ``request_timeout`` seconds of the connection being accepted
  (a slowloris trickling bytes does not extend it), else ``408`` and the connection is closed; a head
  larger than ``MAX_REQUEST_HEAD`` bytes gets ``431``;
* a response must be written within ``write_timeout`` seconds, else the connection is dropped;
* at most ``max_connections`` connections are open: one more makes the server close the connection that
  has waited longest for its request head, so a flood of idle connections cannot lock a scraper out;
* requests for the same page (method, path, query, ``Accept`` and ``Accept-Encoding``) share one
  rendering: one that arrives while that page is queued or being rendered gets the same bytes. So
  clients that request a large page and never read it cost one rendering between them, not one each,
  and a scrape arriving meanwhile waits for at most that one.

Every response closes its connection (``Connection: close``), which Prometheus handles as usual.
"""

from __future__ import annotations

import io
import logging
import queue
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

__all__ = (
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_WORKERS",
    "DEFAULT_WRITE_TIMEOUT",
    "MAX_REQUEST_HEAD",
    "HttpServer",
    "ServerLimits",
)

logger = logging.getLogger("stageflow_otel")

DEFAULT_WORKERS = 2
"""Threads answering complete requests (collection and rendering)."""
DEFAULT_MAX_CONNECTIONS = 64
"""Connections open at once; one more closes the one waiting longest for its request head."""
DEFAULT_REQUEST_TIMEOUT = 10.0
"""Seconds from accepting a connection to having its whole request head."""
DEFAULT_WRITE_TIMEOUT = 30.0
"""Seconds to write a response once it is ready."""
MAX_REQUEST_HEAD = 16 * 1024
"""Bytes a request line plus headers may take."""

_POLL_INTERVAL = 0.02
"""Longest the loop sleeps between checks for ``close()`` and expired deadlines."""

_WORKER_JOIN = 0.1
"""Seconds ``close()`` waits for the workers: one still collecting finishes alone (a daemon thread)."""

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_REASONS = {408: "Request Timeout", 400: "Bad Request", 431: "Request Header Fields Too Large"}

_PageKey = tuple[str, ...]


def _page_key(environ: dict[str, Any]) -> _PageKey:
    """What decides a response's bytes: requests with equal keys get the same page."""
    return tuple(
        str(environ.get(name, ""))
        for name in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "HTTP_ACCEPT", "HTTP_ACCEPT_ENCODING")
    )


class _Connection:
    __slots__ = ("accepted", "buffer", "deadline", "out", "sock")

    def __init__(self, sock: socket.socket, now: float, request_timeout: float) -> None:
        self.sock = sock
        self.accepted = now
        self.deadline = now + request_timeout
        self.buffer = bytearray()
        self.out: memoryview | None = None  # set once the response is ready


def _error_response(status: int) -> bytes:
    reason = _REASONS[status]
    body = f"{status} {reason}\n".encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The server's bounds (see the module docstring); each is checked when the limits are made.

    Raises:
        ValueError: ``workers`` or ``max_connections`` is not an int of at least 1, or a timeout is not
            > 0.
        TypeError: a timeout cannot be compared with 0 (not a number).
    """

    workers: int = DEFAULT_WORKERS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    write_timeout: float = DEFAULT_WRITE_TIMEOUT

    def __post_init__(self) -> None:
        for option, value in (("workers", self.workers), ("max_connections", self.max_connections)):
            if not isinstance(value, int) or value < 1:
                msg = f"{option} must be an int of at least 1, got {value!r}"
                raise ValueError(msg)
        for option, seconds in (
            ("request_timeout", self.request_timeout),
            ("write_timeout", self.write_timeout),
        ):
            if not seconds > 0:
                msg = f"{option} must be a number of seconds > 0, got {seconds!r}"
                raise ValueError(msg)


class HttpServer:
    """Serve ``app`` on ``(addr, port)`` from ``1 + limits.workers`` daemon threads; ``close()`` stops it."""

    def __init__(
        self,
        app: WsgiApp,
        addr: str,
        port: int,
        limits: ServerLimits,
        *,
        name: str = "stageflow-otel-metrics-server",
    ) -> None:
        self._app = app
        self._limits = limits
        family, _, _, _, sockaddr = socket.getaddrinfo(
            addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(sockaddr)
            listener.listen(128)
            listener.setblocking(False)
        except Exception:
            listener.close()
            raise
        self._listener = listener
        self.port: int = listener.getsockname()[1]
        self._server_name = str(sockaddr[0])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._connections: dict[socket.socket, _Connection] = {}
        self._requests: queue.SimpleQueue[tuple[_PageKey, dict[str, Any]] | None] = queue.SimpleQueue()
        self._pages = threading.Condition(threading.Lock())
        self._waiting: dict[_PageKey, list[_Connection]] = {}
        """The connections waiting for each page queued or being rendered."""
        self._ready: queue.SimpleQueue[tuple[_Connection, bytes]] = queue.SimpleQueue()
        self._closing = False
        self._threads = [threading.Thread(target=self._loop, name=name, daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, name=f"{name}-worker-{i + 1}", daemon=True)
            for i in range(limits.workers)
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------------------ the loop thread

    def _loop(self) -> None:
        try:
            while not self._closing:
                timeout = self._poll_timeout()
                for key, events in self._selector.select(timeout):
                    sock = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock is self._wake_r:
                        self._drain_wake()
                    else:
                        self._on_ready(sock, events)  # type: ignore[arg-type]
                self._take_responses()
                self._expire(time.monotonic())
        except Exception:  # never expected; the endpoint stops rather than spin
            logger.exception("stageflow_otel: the /metrics server loop failed; /metrics is down")
        finally:
            for connection in list(self._connections.values()):
                self._drop(connection)

    def _poll_timeout(self) -> float:
        if not self._connections:
            return _POLL_INTERVAL
        soonest = min(c.deadline for c in self._connections.values())
        return max(0.0, min(_POLL_INTERVAL, soonest - time.monotonic()))

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: try again on the next round
                logger.debug("stageflow_otel: /metrics accept failed: %r", exc)
                return
            sock.setblocking(False)
            if len(self._connections) >= self._limits.max_connections:
                self._evict_one()
            connection = _Connection(sock, time.monotonic(), self._limits.request_timeout)
            self._connections[sock] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _evict_one(self) -> None:
        """Close the connection that has waited longest for its request head (or, if none, the oldest)."""
        waiting = [c for c in self._connections.values() if c.out is None and c.deadline != float("inf")]
        pool = waiting or list(self._connections.values())
        self._drop(min(pool, key=lambda c: c.accepted))

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _on_ready(self, sock: socket.socket, events: int) -> None:
        connection = self._connections.get(sock)
        if connection is None:
            return
        if connection.out is not None:
            if events & selectors.EVENT_WRITE:
                self._write(connection)
            return
        try:
            chunk = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(connection)
            return
        if not chunk:
            self._drop(connection)
            return
        if connection.deadline == float("inf"):  # request taken; the client sends more: ignore it
            return
        connection.buffer += chunk
        end = connection.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(connection.buffer) > MAX_REQUEST_HEAD:
                self._respond(connection, _error_response(431))
            return
        if end > MAX_REQUEST_HEAD:
            self._respond(connection, _error_response(431))
            return
        environ = self._environ(bytes(connection.buffer[:end]))
        if environ is None:
            self._respond(connection, _error_response(400))
            return
        connection.deadline = float("inf")  # the worker owns it now; no read deadline
        key = _page_key(environ)
        with self._pages:
            waiting = self._waiting.get(key)
            if waiting is None:
                self._waiting[key] = [connection]
            else:
                waiting.append(connection)  # that page is on its way: this request shares it
            self._pages.notify_all()
        if waiting is None:
            self._requests.put((key, environ))

    def _environ(self, head: bytes) -> dict[str, Any] | None:
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
        except ValueError:
            return None
        if not version.startswith("HTTP/"):
            return None
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "PATH_INFO": unquote(path, "latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": self._server_name,
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": version,
            "SCRIPT_NAME": "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                return None
            key = name.strip().upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value.strip()
            else:
                environ["HTTP_" + key] = value.strip()
        return environ

    def _respond(self, connection: _Connection, response: bytes) -> None:
        connection.out = memoryview(response)
        connection.deadline = time.monotonic() + self._limits.write_timeout
        try:
            self._selector.modify(connection.sock, selectors.EVENT_WRITE, connection)
        except (KeyError, ValueError, OSError):
            self._drop(connection)
            return
        self._write(connection)

    def _write(self, connection: _Connection) -> None:
        out = connection.out
        assert out is not None
        try:
            while out:
                sent = connection.sock.send(out)
                out = out[sent:]
        except (BlockingIOError, InterruptedError):
            connection.out = out
            return
        except OSError:
            self._drop(connection)
            return
        self._drop(connection, graceful=True)

    def _take_responses(self) -> None:
        while True:
            try:
                connection, response = self._ready.get_nowait()
            except queue.Empty:
                return
            if self._connections.get(connection.sock) is connection:
                self._respond(connection, response)

    def _expire(self, now: float) -> None:
        for connection in [c for c in self._connections.values() if c.deadline <= now]:
            if connection.out is None:
                self._respond(connection, _error_response(408))
            else:
                self._drop(connection)

    def _drop(self, connection: _Connection, *, graceful: bool = False) -> None:
        if self._connections.pop(connection.sock, None) is None:
            return
        try:
            self._selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass
        try:
            if graceful:
                connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        connection.sock.close()

    # ---------------------------------------------------------------------------- worker threads

    def _work(self) -> None:
        while True:
            item = self._requests.get()
            if item is None:
                return
            key, environ = item
            response = self._call_app(environ)
            with self._pages:
                connections = self._waiting.pop(key, [])
                self._pages.notify_all()
            for connection in connections:
                self._ready.put((connection, response))
            try:
                self._wake_w.send(b"x")
            except OSError:  # the wake-up pipe is full (the loop wakes anyway) or closed (closing)
                pass

    def wait_for_waiting(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` requests wait for pages (queued or being rendered), at most ``timeout`` s."""
        with self._pages:
            return self._pages.wait_for(lambda: sum(len(c) for c in self._waiting.values()) >= count, timeout)

    def _call_app(self, environ: dict[str, Any]) -> bytes:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [status, headers]

        try:
            body = b"".join(self._app(environ, start_response))
            status, headers = started
        except Exception:
            logger.exception("stageflow_otel: the /metrics application failed")
            status, headers, body = "500 Internal Server Error", [], b"500 Internal Server Error\n"
        head_only = environ["REQUEST_METHOD"] == "HEAD"
        lines = [f"HTTP/1.1 {status}"]
        lines += [f"{name}: {value}" for name, value in headers if name.lower() != "content-length"]
        lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
        return "\r\n".join(lines).encode("latin-1") + (b"" if head_only else body)

    # --------------------------------------------------------------------------------------- close

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The server's threads: the connection loop and the workers."""
        return tuple(self._threads)

    def close(self) -> None:
        """Stop the loop, close every socket and stop the workers (a response in progress is dropped).

        Returns within about ``_POLL_INTERVAL + _WORKER_JOIN`` seconds.
        """
        self._closing = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._threads[0].join()
        for _ in self._threads[1:]:
            self._requests.put(None)
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        deadline = time.monotonic() + _WORKER_JOIN
        for worker in self._threads[1:]:  # an idle worker exits at once; a busy one is left behind
            worker.join(max(0.0, deadline - time.monotonic()))
