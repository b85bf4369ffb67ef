"""A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

Standard library only: Chromium reads NUL-terminated JSON commands on fd 3 and writes responses and
events on fd 4. Used to check that pages we generate render in a real browser.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ("Chromium", "PageLoad", "chromium_path")


def chromium_path() -> str | None:
    """The Chromium executable, or ``None`` when none is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageLoad:
    """What loading one page produced."""

    console: list[str] = field(default_factory=list)
    """Console messages of level error or warning, and uncaught exceptions, as ``level: text``."""
    requests: list[str] = field(default_factory=list)
    """URLs of every request the page made, the page itself included."""


class Chromium:
    """One headless Chromium process with one attached page. Use as a context manager."""

    def __init__(self, executable: str, *, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="stageflow-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def place_fds() -> None:  # the protocol pipe must be fds 3 (commands) and 4 (replies)
            # via fresh copies: the pipes may already be 3 or 4, and dup2 onto itself keeps close-on-exec
            commands, replies = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        self._proc = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile.name}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=place_fds,
            close_fds=False,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self._session = ""

    def __enter__(self) -> Chromium:
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        attached = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._send({"id": self._take_id(), "method": "Browser.close"})
            self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            self._profile.cleanup()

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                msg = f"Chromium did not answer within {self.timeout} s"
                raise TimeoutError(msg)
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                msg = f"Chromium closed the protocol pipe (exit status {self._proc.poll()})"
                raise ConnectionError(msg)
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command (to the page, once attached) and return its result.

        Raises:
            RuntimeError: the browser answered with an error.
        """
        ident = self._take_id()
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if self._session:
            message["sessionId"] = self._session
        self._send(message)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == ident:
                if "error" in reply:
                    msg = f"{method} failed: {reply['error']}"
                    raise RuntimeError(msg)
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self._events.append(reply)

    def _wait_for(self, method: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(event["method"] == method for event in self._events):
            message = self._receive(deadline)
            if "method" in message:
                self._events.append(message)

    def load(self, url: str) -> PageLoad:
        """Navigate to ``url``, wait for its load event, and report its console errors and requests."""
        self._events.clear()
        self.call("Page.navigate", url=url)
        self._wait_for("Page.loadEventFired")
        self.evaluate("1")  # let events queued before the load event arrive
        load = PageLoad()
        for event in self._events:
            params = event.get("params", {})
            method = event["method"]
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
                load.console.append(f"{params['type']}: {text}")
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                description = details.get("exception", {}).get("description", details["text"])
                load.console.append(f"exception: {description}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                load.console.append(f"{params['entry']['level']}: {params['entry']['text']}")
            elif method == "Network.requestWillBeSent":
                load.requests.append(params["request"]["url"])
        self._events.clear()
        return load

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page.

        Raises:
            RuntimeError: the expression threw.
        """
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            msg = f"{expression!r} threw: {result['exceptionDetails']}"
            raise RuntimeError(msg)
        return result["result"].get("value")

    def set_viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        """Lay pages out for a screen of ``width`` x ``height`` CSS pixels (``mobile``: as a phone does,
        honouring the page's ``<meta name="viewport">``), until ``reset_viewport``."""
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )

    def reset_viewport(self) -> None:
        """Back to the browser's own window size."""
        self.call("Emulation.clearDeviceMetricsOverride")

    def screenshot(self, path: Path) -> Path:
        """Save a full-page PNG screenshot of the current page to ``path``."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path
