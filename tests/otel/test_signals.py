"""``Telemetry.shutdown_on_signals()``: a service stopped with SIGTERM or SIGINT flushes what it queued.

Each test runs a real service process that exports over OTLP/HTTP to a receiver in the test process,
queues a known number of spans (nothing is exported before a flush), says it is ready and waits; the test
sends it the signal and counts what arrived.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

from stageflow_otel import setup

from .otlp_receiver import HttpReceiver

REPO = Path(__file__).resolve().parents[2]
RUNS = 40
SPANS = RUNS * 5

SERVICE = textwrap.dedent(
    """
    import asyncio, sys
    import stageflow_otel
    from stageflow_otel import TracingInterceptor
    from tests._stages import diamond

    telemetry = stageflow_otel.setup("signalled", set_global=False)
    if sys.argv[1] == "helper":
        telemetry.shutdown_on_signals(timeout=10.0)

    async def main() -> None:
        graph = diamond().build(interceptors=[TracingInterceptor(telemetry.tracer_provider)])
        for _ in range(int(sys.argv[2])):
            await graph.run(input_text="x")
        print("ready", flush=True)
        await asyncio.Event().wait()  # a service: runs until it is stopped

    asyncio.run(main())
    """
)


@pytest.fixture(name="receiver")
def _receiver() -> Iterator[HttpReceiver]:
    """An OTLP/HTTP receiver in the test process."""
    receiver = HttpReceiver()
    yield receiver
    receiver.stop()


def serve(receiver: HttpReceiver, mode: str) -> subprocess.Popen[str]:
    """Start the service (with the helper or without), queue RUNS runs' spans and wait until it is ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGEFLOW_"))}
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
        "PYTHONPATH": str(REPO),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", SERVICE, mode, str(RUNS)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


def stop(process: subprocess.Popen[str], sig: int) -> tuple[int, str]:
    """Send ``sig`` and wait for the process to end (a minute at most); its exit code and stderr."""
    process.send_signal(sig)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, stderr


class TestShutdownOnSignals:
    @pytest.mark.parametrize(
        ("sig", "last_lines"),
        [(signal.SIGTERM, []), (signal.SIGINT, ["KeyboardInterrupt"])],
        ids=["sigterm", "sigint"],
    )
    def test_the_queued_spans_arrive_and_the_signal_still_ends_the_process(
        self, receiver: HttpReceiver, sig: signal.Signals, last_lines: list[str]
    ) -> None:
        """With the helper, every queued span arrives and the process ends by the signal, as it would have."""
        process = serve(receiver, "helper")
        returncode, stderr = stop(process, sig)
        assert (len(receiver.spans()), returncode, stderr.splitlines()[-1:]) == (SPANS, -sig, last_lines)

    def test_without_the_helper_sigterm_loses_the_queue(self, receiver: HttpReceiver) -> None:
        """Without the helper, SIGTERM ends the process at once and nothing queued arrives."""
        process = serve(receiver, "plain")
        returncode, _ = stop(process, signal.SIGTERM)
        assert (len(receiver.spans()), returncode) == (0, -signal.SIGTERM)

    def test_after_a_shutdown_without_a_signal_no_thread_is_left_and_a_signal_reaches_its_handler(
        self, otel_env: pytest.MonkeyPatch
    ) -> None:
        """Shut down before any signal, the helper's thread ends, its handlers are restored and a later
        signal reaches the application's own handler."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        before = set(threading.enumerate())
        previous = signal.getsignal(signal.SIGUSR1)
        seen: list[int] = []

        def own(sig: int, frame: object) -> None:
            seen.append(sig)

        signal.signal(signal.SIGUSR1, own)
        try:
            telemetry = setup("signals", set_global=False)
            telemetry.shutdown_on_signals([signal.SIGUSR1])
            helper = [t for t in threading.enumerate() if t not in before]
            assert telemetry.shutdown(1.0) is True
            for thread in helper:
                thread.join(60)
            left = [t.name for t in threading.enumerate() if t not in before]
            signal.raise_signal(signal.SIGUSR1)  # handlers run before raise_signal returns
            restored = signal.getsignal(signal.SIGUSR1) is own
        finally:
            signal.signal(signal.SIGUSR1, previous)
        assert ([t.name for t in helper], left, seen, restored) == (
            ["stageflow-otel-signal-shutdown"],
            [],
            [signal.SIGUSR1],
            True,
        )

    def test_it_must_be_called_from_the_main_thread(self, otel_env: pytest.MonkeyPatch) -> None:
        """Called from another thread, it refuses, naming the thread."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        telemetry = setup("signals", set_global=False)
        errors: list[str] = []

        def install() -> None:
            try:
                telemetry.shutdown_on_signals()
            except ValueError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=install, name="worker-1")
        thread.start()
        thread.join()
        telemetry.shutdown(1.0)
        assert errors == [
            "shutdown_on_signals() must be called from the main thread: Python runs signal handlers there "
            "only (called from 'worker-1')"
        ]

    def test_a_negative_timeout_is_refused(self, otel_env: pytest.MonkeyPatch) -> None:
        """A negative timeout is refused, naming it."""
        otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
        telemetry = setup("signals", set_global=False)
        try:
            with pytest.raises(ValueError) as caught:
                telemetry.shutdown_on_signals(timeout=-1.0)
        finally:
            telemetry.shutdown(1.0)
        assert str(caught.value) == (
            "shutdown_on_signals(timeout=-1.0): the timeout must be a number of seconds >= 0"
        )
