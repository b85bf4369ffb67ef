"""The event-loop monitor: loop lag, the loop's busy share, and blocks blamed on the stage that blocked.

A watchdog thread asks the loop for a heartbeat every ``interval`` (10 ms, through ``call_soon_threadsafe``;
no timer lives on the loop); the beat's **lag** is how long the loop took to run it. When a beat is overdue
by half the ``threshold``, the loop is stuck in one callback, and the watchdog samples, once, the task the
loop is running and the code location it is at (the innermost frame outside the standard library,
site-packages and stageflow). When the beat runs (or the stuck stage ends first), a lag over ``threshold``
(50 ms) is a **block**:

* blamed on the stage whose task was running: the stage event ``stage.{name}.loop_blocked`` (before that
  stage's closing event, so it lands on the stage's span in stageflow_otel) and one warning per run and
  stage: "stage 'embed' blocked the event loop for 212 ms at app/embed.py:41; make it a sync stage to run it
  in a thread";
* handed to ``on_block`` with its ``LoopBlock`` (``stage`` is ``None`` when no stage's code was running).

Measurement, on asyncio and on uvloop alike (neither is patched): a block's duration is the lag of the beat
in flight, so it may read short by up to one ``interval`` plus the time the watchdog thread takes to wake
(about 12 ms short for a 150 ms block on a loaded machine); its location is sampled once, when the watchdog
notices it, so a block that moves between lines is reported where it was at that moment. The busy
share (``utilization()``, the shape of Node's ``eventloop.utilization``: the share of the last completed
second the loop was not waiting for I/O) is an estimate: CPython exposes no idle time, and timing every
wait would cost each loop iteration, so it is the larger of the loop thread's CPU time and the heartbeat's
total lag over that second. Blocking that uses no CPU (``time.sleep``) shows through the lag; CPU the
machine's other processes took from the loop thread does not count as busy.

The core never starts a monitor on its own: ``set_loop_monitor(LoopMonitor())`` watches every event loop that
runs a pipeline from then on, and ``stageflow_otel.setup()`` does so by default.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from ._checks import finite_number

if TYPE_CHECKING:
    from ._scheduler import _Node, _Run

__all__ = ("LoopBlock", "LoopMonitor", "get_loop_monitor", "running_watch", "set_loop_monitor")

logger = logging.getLogger("stageflow")

_perf = time.perf_counter


@dataclass(frozen=True, slots=True)
class LoopBlock:
    """One time the event loop was stuck in one callback for longer than the monitor's threshold.

    Attributes:
        duration: seconds the loop did not run anything else (accurate to the monitor's interval).
        file: the source file it was stuck in (sampled once), or ``None``.
        line: the line number there, or ``None``.
        stage: the stage whose code was running, or ``None`` (code outside any stage).
        pipeline: that stage's pipeline, or ``None``.
        run_id: that stage's run id, or ``None``.

    .. versionadded:: 0.11
    """

    duration: float
    file: str | None
    line: int | None
    stage: str | None = None
    pipeline: str | None = None
    run_id: str | None = None


class _Suspect:
    """What the watchdog saw while the heartbeat was overdue (written by its thread, read on the loop)."""

    __slots__ = ("file", "line", "task")

    def __init__(self, task: asyncio.Task[Any] | None, file: str | None, line: int | None) -> None:
        self.task = task
        self.file = file
        self.line = line


# the standard library (where ``os`` lives) and stageflow itself; installed packages are told by their folder
_LIBRARIES = tuple(
    os.path.join(p, "") for p in (os.path.dirname(os.__file__), os.path.dirname(os.path.abspath(__file__)))
)
_PACKAGE_FOLDERS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")


def _is_library(path: str) -> bool:
    return path.startswith(_LIBRARIES) or path.startswith("<") or any(f in path for f in _PACKAGE_FOLDERS)


def _location(frame: FrameType | None) -> tuple[str | None, int | None]:
    """The innermost frame of ``frame``'s stack outside the libraries, else the innermost frame."""
    innermost = frame
    while frame is not None:
        path = frame.f_code.co_filename
        if not _is_library(path):
            return path, frame.f_lineno
        frame = frame.f_back
    if innermost is None:
        return None, None
    return innermost.f_code.co_filename, innermost.f_lineno


class _Watch:
    """The monitor's state for one event loop: its watchdog thread, the beat in flight and a suspect.

    No timer lives on the loop (a scheduled timer costs every loop iteration a clock read): the watchdog
    thread asks the loop for a beat with ``call_soon_threadsafe`` every ``interval`` and the beat measures
    how long the loop took to run it.
    """

    def __init__(self, monitor: LoopMonitor, loop: asyncio.AbstractEventLoop) -> None:
        self.monitor = monitor
        self.loop_ref = weakref.ref(loop)
        self.thread_id = threading.get_ident()
        self.interval = monitor.interval
        self.threshold = monitor.threshold
        now = _perf()
        self.requested: float | None = None  # when the beat in flight was asked for
        self.suspect: _Suspect | None = None
        self.paused = False
        self.stopped = threading.Event()
        self.window_start = now
        self.window_cpu = time.thread_time()
        self.window_lag = 0.0
        self.utilization = 0.0
        self.thread = threading.Thread(target=self.watchdog, name="stageflow-loop-monitor", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stopped.set()

    # ------------------------------------------------------------------ on the loop

    def beat(self, requested: float) -> None:
        now = _perf()
        lag = now - requested
        self.requested = None
        if self.paused:  # the loop was stopped (between run_until_complete calls): no lag to speak of
            self.paused = False
            self.suspect = None
            return
        suspect = self.suspect
        if suspect is not None:
            self.suspect = None
            if lag > self.threshold:
                self.report_after(suspect, lag)
        monitor = self.monitor
        if monitor.on_lag is not None:
            try:
                monitor.on_lag(lag)
            except Exception as exc:
                logger.error("stageflow: loop monitor on_lag %r failed: %r", monitor.on_lag, exc)
        self.window_lag += lag
        if now - self.window_start >= 1.0:
            cpu = time.thread_time()
            span = now - self.window_start
            busy = max(cpu - self.window_cpu, self.window_lag)
            self.utilization = min(1.0, busy / span)
            self.window_start, self.window_cpu, self.window_lag = now, cpu, 0.0

    def settled(self, run: _Run, node: _Node) -> None:
        """A stage ends while the watchdog holds a suspect: the block is the stage's if its task ran it."""
        suspect, requested = self.suspect, self.requested
        if suspect is None or requested is None or suspect.task is not asyncio.current_task():
            return
        lag = _perf() - requested
        if lag <= self.threshold:
            return
        self.suspect = None
        self.monitor._report(lag, suspect, run, node)

    def report_after(self, suspect: _Suspect, lag: float) -> None:
        """The loop is back after a block: blame the stage whose task was running, if it is a stage."""
        from ._scheduler import stage_of_task

        found = stage_of_task(suspect.task)
        if found is None:
            self.monitor._report(lag, suspect, None, None)
        else:
            self.monitor._report(lag, suspect, *found)

    # ------------------------------------------------------------------ on the watchdog thread

    def watchdog(self) -> None:
        try:
            self._watchdog()
        except Exception as exc:  # never silently: the monitor stops watching this loop
            logger.error("stageflow: the loop monitor's watchdog failed and stopped: %r", exc, exc_info=exc)

    def _watchdog(self) -> None:
        half = self.threshold / 2
        while not self.stopped.wait(self.interval):
            loop = self.loop_ref()
            if loop is None or loop.is_closed():
                return
            if not loop.is_running():
                if self.requested is not None:
                    self.paused = True
                continue
            requested = self.requested
            now = _perf()
            if requested is None:
                self.requested = now
                try:
                    loop.call_soon_threadsafe(self.beat, now)
                except RuntimeError:  # closed meanwhile
                    return
                continue
            if self.suspect is not None or self.paused or now - requested <= half:
                continue
            task = asyncio.current_task(loop)
            frame = sys._current_frames().get(self.thread_id)
            file, line = _location(frame)
            del frame
            self.suspect = _Suspect(task, file, line)


class LoopMonitor:
    """Watches event loops: lag, busy share, and blocks blamed on the stage that blocked (module docstring).

    Args:
        threshold: seconds one callback may hold the loop before it counts as a block (default 0.05).
        interval: seconds between heartbeats (default 0.01); at most half the threshold.
        on_lag: called on the loop with every heartbeat's lag in seconds.
        on_block: called on the loop with every ``LoopBlock``.

    Use it process-wide with ``set_loop_monitor(monitor)``, or for one loop with ``async with monitor:``.
    Callbacks that raise are logged and never affect a run.

    .. versionadded:: 0.11
    """

    def __init__(
        self,
        *,
        threshold: float = 0.05,
        interval: float = 0.01,
        on_lag: Callable[[float], object] | None = None,
        on_block: Callable[[LoopBlock], object] | None = None,
    ) -> None:
        for name, value in (("threshold", threshold), ("interval", interval)):
            if not finite_number(value) or value <= 0:
                msg = f"LoopMonitor({name}={value!r}) is invalid; pass seconds as a finite number > 0"
                raise ValueError(msg)
        if interval > threshold / 2:
            msg = (
                f"LoopMonitor(interval={interval!r}) is too long for threshold={threshold!r}: the heartbeat "
                f"must beat at least twice per threshold; pass interval <= {threshold / 2:g}"
            )
            raise ValueError(msg)
        for name, callback in (("on_lag", on_lag), ("on_block", on_block)):
            if callback is not None and not callable(callback):
                msg = f"LoopMonitor({name}={callback!r}) is not callable; pass a function or None"
                raise TypeError(msg)
        self.threshold = float(threshold)
        self.interval = float(interval)
        self.on_lag = on_lag
        self.on_block = on_block
        self._watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watch] = (
            weakref.WeakKeyDictionary()
        )
        self._last: _Watch | None = None
        self._lock = threading.Lock()

    def watch(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start watching ``loop`` (default: the running loop); call it on that loop's thread. Idempotent."""
        self._watch(asyncio.get_running_loop() if loop is None else loop)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> _Watch:
        watch = self._watches.get(loop)
        if watch is None:
            with self._lock:
                watch = self._watches.get(loop)
                if watch is None:
                    watch = _Watch(self, loop)
                    self._watches[loop] = watch
        self._last = watch
        return watch

    def close(self) -> None:
        """Stop watching every loop (their watchdog threads end within one interval)."""
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for watch in watches:
            watch.close()

    def utilization(self) -> float:
        """The busy share (0..1) of the loop watched last, over its last completed second."""
        watch = self._last
        return 0.0 if watch is None else watch.utilization

    async def __aenter__(self) -> LoopMonitor:
        self.watch()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def _report(self, lag: float, suspect: _Suspect, run: _Run | None, node: _Node | None) -> None:
        if run is None or node is None:
            block = LoopBlock(lag, suspect.file, suspect.line)
        else:
            block = LoopBlock(lag, suspect.file, suspect.line, node.name, run.graph.name, run.run_id)
            run.loop_blocked(node, block)
        if self.on_block is not None:
            try:
                self.on_block(block)
            except Exception as exc:
                logger.error("stageflow: loop monitor on_block %r failed: %r", self.on_block, exc)

    def __repr__(self) -> str:
        return f"LoopMonitor(threshold={self.threshold:g}, interval={self.interval:g})"


_current: LoopMonitor | None = None


def set_loop_monitor(monitor: LoopMonitor | None) -> None:
    """Watch every event loop that runs a pipeline from now on with ``monitor`` (``None``: stop).

    The previous monitor, if any, is closed.

    .. versionadded:: 0.11
    """
    global _current
    if monitor is not None and not isinstance(monitor, LoopMonitor):
        msg = f"set_loop_monitor() takes a LoopMonitor or None, got {monitor!r}"
        raise TypeError(msg)
    previous, _current = _current, monitor
    if previous is not None and previous is not monitor:
        previous.close()


def get_loop_monitor() -> LoopMonitor | None:
    """The monitor ``set_loop_monitor`` installed, or ``None``."""
    return _current


def running_watch() -> _Watch | None:
    """The current monitor's watch of the running loop (started on first use), or ``None`` without one."""
    monitor = _current
    if monitor is None:
        return None
    return monitor._watch(asyncio.get_running_loop())
