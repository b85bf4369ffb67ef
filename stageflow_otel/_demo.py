"""The demo: a voice-assistant pipeline with realistic latencies and failures, fully instrumented.

It runs past 500 lines because the demo is one story a reader follows top to bottom: its stages, their
simulated services, the interceptors and the summary it prints.

``python -m stageflow_otel demo [--runs N]`` (also the ``stageflow-demo`` console script).

DAG: ``stt → (enrich ∥ memory ∥ search) → personalize → llm → guard → tts``

- ``llm``, ``guard`` and ``tts`` stream: ``llm`` yields its reply token by token (a GenAI stage: its
  config declares ``gen_ai.operation.name``); ``guard`` consumes that stream and passes on each sentence
  once it checked it; ``tts`` consumes guard's stream and starts speaking at the first sentence, one audio
  chunk per sentence. Each run is followed by the same pipeline run without streaming (each consumer waits
  for the whole reply), untraced and unrecorded, and the summary prints the time to first audio both ways.
- ``search`` calls a flaky web-search API (outage windows and random errors); its circuit breaker opens
  after 3 consecutive failures and lets a trial call through after a recovery timeout. A fallback
  interceptor turns its errors into a skip, so the run goes on without search results.
- ``enrich`` calls a blocking NLP client: a sync stage, run in a worker thread (its dispatch time shows).
- ``memory`` is skipped for anonymous users; ``personalize`` is conditional, so it is skipped with it. Now
  and then its cache read blocks the event loop for 60 ms: the loop monitor blames ``memory``.
- ``guard`` sometimes rejects the reply (``StageFailedError`` at its first sentence): the run fails.
- ``tts`` sometimes stalls past its 600 ms timeout (which bounds its whole stream): the run fails with
  ``StageTimeoutError``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry._logs import SeverityNumber, get_logger

from stageflow import (
    NoOpEventSink,
    OutcomeCategory,
    Pipeline,
    PipelineContext,
    PipelineRunError,
    RunResult,
    SQLiteRunStore,
    StageContext,
    StageFailedError,
    StageKind,
    StageOutput,
    Streaming,
    __version__,
    error_category,
    terminal_safe,
)
from stageflow.interceptors import (
    BaseInterceptor,
    CircuitBreakerInterceptor,
    CircuitState,
    CircuitStateChange,
    ErrorAction,
    Interceptor,
    TimeoutInterceptor,
)

__all__ = (
    "DemoConfig",
    "DemoError",
    "DemoStats",
    "SearchFallback",
    "SearchUnavailableError",
    "BreakerTally",
    "LLM_CONFIG",
    "TTS_TIMEOUT",
    "build_demo_pipeline",
    "core_interceptors",
    "console_main",
    "main",
    "outcome_of",
    "run_said",
)


@dataclass(slots=True)
class DemoConfig:
    """Knobs of the demo's simulated services."""

    speed: float = 1.0
    """Latency multiplier (0.1 = ten times faster)."""
    search_error_rate: float = 0.15
    outage_every: int = 40
    """Every ``outage_every`` runs the search API is down for ``outage_length`` runs."""
    outage_length: int = 8
    guard_reject_rate: float = 0.04
    tts_stall_rate: float = 0.03
    anonymous_rate: float = 0.3
    loop_block_rate: float = 0.02
    """Share of ``memory`` calls that block the event loop for ``LOOP_BLOCK`` seconds (a sync cache client
    called from async code: the loop monitor blames the stage)."""
    seed: int | None = None


LOOP_BLOCK = 0.06
"""Seconds a blocking ``memory`` call holds the event loop, whatever the speed (over the 50 ms threshold)."""


class _World:
    """The simulated services, shared by all runs of one demo."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.calls = 0
        # Draws of the sync stage (in worker threads) and of the loop blocks come from rngs of their own, so
        # the event loop's draws stay in the order a seed gives them.
        self.thread_rng = random.Random(config.seed)
        self.thread_rng_lock = threading.Lock()
        self.block_rng = random.Random(config.seed)

    async def latency(self, median_ms: float) -> None:
        # log-normal latencies: a long right tail, as real services have
        seconds = self.rng.lognormvariate(0.0, 0.35) * median_ms / 1000 * self.config.speed
        await asyncio.sleep(seconds)

    def blocking_latency(self, median_ms: float) -> None:
        """``latency`` for a sync stage: it blocks its worker thread, never the event loop."""
        with self.thread_rng_lock:
            factor = self.thread_rng.lognormvariate(0.0, 0.35)
        time.sleep(factor * median_ms / 1000 * self.config.speed)

    def search_down(self) -> bool:
        c = self.config
        return c.outage_every > 0 and (self.calls % c.outage_every) >= c.outage_every - c.outage_length


class SearchUnavailableError(ConnectionError):
    """The simulated web-search API failed."""


class SearchFallback(BaseInterceptor):
    """Turns a failing ``search`` into a skip so the run continues without search results."""

    name = "search_fallback"
    priority = 5  # outermost: tracing and metrics still see the error

    async def on_error(self, stage_name: str, error: Exception, ctx: PipelineContext) -> ErrorAction:
        """Fall back for the search stage only."""
        return ErrorAction.FALLBACK if stage_name == "search" else ErrorAction.FAIL


LLM_CONFIG = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "simulated",
    "gen_ai.request.model": "demo-voice-1",
}
"""The ``llm`` stage's GenAI attributes: its time to first chunk is also recorded as the GenAI metric."""

TTS_TIMEOUT = 0.6
"""Seconds (at speed 1) ``tts`` may take, its whole stream: from the first sentence to its last audio."""

ADVICE = " Expect a light breeze in the afternoon. Take a jacket for the evening."
"""What the assistant says after the forecast (so the reply has several sentences)."""

_TOKEN = re.compile(r"\S+\s*")


def _tokens(text: str) -> list[str]:
    """``text`` as the LLM streams it: word by word, each with its trailing space."""
    return _TOKEN.findall(text)


async def _each(items: Iterable[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


async def _sentences(tokens: AsyncIterator[str]) -> AsyncIterator[str]:
    """Whole sentences from a stream of tokens (a sentence ends with ``.``, ``!`` or ``?``)."""
    sentence = ""
    async for token in tokens:
        sentence += token
        if token.rstrip().endswith((".", "!", "?")):
            yield sentence
            sentence = ""
    if sentence:
        yield sentence


def build_demo_pipeline(config: DemoConfig | None = None, *, streaming: bool = True) -> Pipeline:
    """The demo's voice-assistant pipeline (stages close over one simulated world).

    Args:
        config: the simulated services' knobs.
        streaming: ``guard`` and ``tts`` consume their dependency's stream, starting at its first chunk
            (default); ``False`` builds the same stages, each waiting for the whole reply instead.
    """
    world = _World(config or DemoConfig())
    cfg = world.config

    async def stt(ctx: StageContext) -> StageOutput:
        world.calls += 1
        await world.latency(60)
        return StageOutput.ok(transcript="what's the weather in lisbon tomorrow", confidence=0.93)

    def enrich(ctx: StageContext) -> StageOutput:
        # a blocking NLP client: a sync stage, so it runs in a worker thread, off the event loop
        world.blocking_latency(25)
        return StageOutput.ok(intent="weather", entities={"city": "Lisbon", "day": "tomorrow"})

    async def memory(ctx: StageContext) -> StageOutput:
        if ctx.data.get("anonymous"):
            return StageOutput.skip(reason="anonymous user: no memory")
        if world.block_rng.random() < cfg.loop_block_rate:
            time.sleep(LOOP_BLOCK)  # noqa: ASYNC251 - a sync cache read on the loop: the monitor blames memory
        await world.latency(40)
        return StageOutput.ok(memories=["prefers celsius"])

    async def search(ctx: StageContext) -> StageOutput:
        await world.latency(80)
        if world.search_down() or world.rng.random() < cfg.search_error_rate:
            raise SearchUnavailableError("web search API returned 503")
        return StageOutput.ok(results=["lisbon: 21°C, sunny"])

    async def personalize(ctx: StageContext) -> StageOutput:
        await world.latency(10)
        return StageOutput.ok(units="celsius")

    async def llm(ctx: StageContext) -> AsyncIterator[str]:
        await world.latency(90)  # time to first token
        facts = ctx.inputs.get_from("search", "results", default=[])
        forecast = f"Tomorrow in Lisbon: {facts[0].split(': ')[1]}." if facts else "I couldn't look that up."
        for i, token in enumerate(_tokens(forecast + ADVICE)):
            if i:
                await world.latency(12)  # one token after another
            yield token

    async def guard(ctx: StageContext) -> AsyncIterator[str]:
        tokens = (
            ctx.inputs.stream("llm") if streaming else _each(_tokens(ctx.inputs.get_from("llm", "reply")))
        )
        rejected = world.rng.random() < cfg.guard_reject_rate
        async for sentence in _sentences(tokens):
            await world.latency(5)  # a policy check per sentence
            if rejected:
                raise StageFailedError("guard", "reply rejected by content policy")
            yield sentence

    async def tts(ctx: StageContext) -> AsyncIterator[int]:
        if world.rng.random() < cfg.tts_stall_rate:
            await asyncio.sleep(1.0 * cfg.speed + 0.3)  # a stalled synthesis call
        sentences: AsyncIterator[str]
        if streaming:
            sentences = ctx.inputs.stream("guard")
        else:
            sentences = _sentences(_each(_tokens(ctx.inputs.get_from("guard", "text"))))
        async for sentence in sentences:
            await world.latency(35)  # synthesis of the sentence's audio
            yield 60 * len(sentence)  # milliseconds of audio

    return (
        Pipeline(name="voice-assistant")
        .with_stage("stt", stt, StageKind.TRANSFORM)
        .with_stage("enrich", enrich, StageKind.ENRICH, dependencies=("stt",))
        .with_stage("memory", memory, StageKind.ENRICH, dependencies=("stt",))
        .with_stage("search", search, StageKind.ENRICH, dependencies=("stt",))
        .with_stage("personalize", personalize, StageKind.ENRICH, dependencies=("memory",), conditional=True)
        .with_stage(
            "llm",
            llm,
            StageKind.AGENT,
            dependencies=("enrich", "search", "personalize"),
            config=LLM_CONFIG,
            stream=Streaming(key="reply", reduce="".join),
        )
        .with_stage(
            "guard",
            guard,
            StageKind.GUARD,
            dependencies=("llm",),
            stream=Streaming(key="text", reduce="".join),
            streams=("llm",) if streaming else (),
        )
        .with_stage(
            "tts",
            tts,
            StageKind.TRANSFORM,
            dependencies=("guard",),
            config={"timeout": TTS_TIMEOUT},
            stream=Streaming(key="audio_ms", reduce=sum),
            streams=("guard",) if streaming else (),
        )
    )


def core_interceptors(
    config: DemoConfig, breaker_listener: Callable[[CircuitStateChange], object] | None = None
) -> tuple[CircuitBreakerInterceptor, list[Interceptor]]:
    """The demo's core interceptors: search fallback, a breaker and timeouts (tts 600 ms, scaled)."""
    breaker = CircuitBreakerInterceptor(failure_threshold=3, recovery_timeout=2.0 * max(config.speed, 0.05))
    if breaker_listener is not None:
        breaker.add_listener(breaker_listener)
    timeout = TimeoutInterceptor(5.0, per_stage={"tts": max(TTS_TIMEOUT * config.speed + 0.05, 0.02)})
    return breaker, [SearchFallback(), breaker, timeout]


DURATION_WINDOW = 10_000
"""Percentiles are over the last this many runs, so a continuous demo keeps constant memory."""


@dataclass(slots=True)
class DemoStats:
    """What the demo counted."""

    runs: int = 0
    by_result: dict[str, int] = field(default_factory=dict)
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=DURATION_WINDOW))
    first_audio: deque[float] = field(default_factory=lambda: deque(maxlen=DURATION_WINDOW))
    """Time to first audio (``RunResult.time_to_first_output``) of the successful streaming runs."""
    first_audio_whole: deque[float] = field(default_factory=lambda: deque(maxlen=DURATION_WINDOW))
    """The same for the successful runs without streaming (each consumer waits for the whole reply)."""

    def add(self, result: str, duration: float) -> None:
        """Count one run."""
        self.runs += 1
        self.by_result[result] = self.by_result.get(result, 0) + 1
        self.durations.append(duration)

    def percentile(self, q: float, values: Iterable[float] | None = None) -> float:
        """The q-quantile (nearest rank) of ``values``, by default the run durations, in seconds."""
        ordered = sorted(self.durations if values is None else values)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class BreakerTally:
    """Counts a circuit breaker's transitions per stage (a listener; constant memory)."""

    def __init__(self) -> None:
        self.opened: dict[str, int] = {}
        self.closed: dict[str, int] = {}
        self.state: dict[str, CircuitState] = {}

    def __call__(self, change: CircuitStateChange) -> None:
        """Count one transition."""
        if change.new is CircuitState.OPEN:
            self.opened[change.stage] = self.opened.get(change.stage, 0) + 1
        elif change.new is CircuitState.CLOSED:
            self.closed[change.stage] = self.closed.get(change.stage, 0) + 1
        self.state[change.stage] = change.new

    def lines(self) -> list[str]:
        """One summary line per stage whose breaker ever moved."""
        return [
            f"  breaker {terminal_safe(stage)}: opened {self.opened.get(stage, 0)}x,"
            f" closed {self.closed.get(stage, 0)}x, now {state.name}"
            for stage, state in sorted(self.state.items())
        ]


def outcome_of(exc: BaseException | None) -> OutcomeCategory:
    """A run's outcome category (the ``stageflow.run.result`` vocabulary) as the core gives it:
    ``success`` without an exception, a ``PipelineRunError``'s own ``category``, else
    ``stageflow.error_category(exc)``."""
    if exc is None:
        return OutcomeCategory.SUCCESS
    return exc.category if isinstance(exc, PipelineRunError) else error_category(exc)


_RUN_STATUS = {OutcomeCategory.SUCCESS: "completed", OutcomeCategory.CANCELLATION: "cancelled"}


def run_said(result: str) -> str:
    """What the demo calls a run, as ``stageflow runs list/show`` and the report do: ``completed``,
    ``cancelled``, or ``failed`` with its result beside it (``failed (timeout)``)."""
    status = _RUN_STATUS.get(OutcomeCategory(result))
    return status if status is not None else f"failed ({result})"


# --------------------------------------------------------------------------- the command


class DemoError(Exception):
    """The demo cannot run as asked; the message says why and what to change (exit status 1)."""


def _parser(prog: str = "python -m stageflow_otel demo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Run an instrumented voice-assistant pipeline. Exports over OTLP when "
            "OTEL_EXPORTER_OTLP_ENDPOINT is set; serves Prometheus /metrics (default 127.0.0.1:9464 "
            "without an OTLP endpoint)."
        ),
    )
    parser.add_argument("--runs", type=int, default=None, help="runs to do (default: until Ctrl-C / SIGTERM)")
    parser.add_argument("--concurrency", type=int, default=4, help="runs in flight at once (default 4)")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve /metrics on this port")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="scale every simulated latency by this factor: 0.1 runs ten times faster, 2 twice as slow "
        "(default 1)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the simulated services")
    parser.add_argument("--timeline-every", type=int, default=10, help="print a timeline every N runs")
    parser.add_argument("--log-file", default=None, help="also write the structured JSON logs to this file")
    parser.add_argument(
        "--run-store",
        metavar="FILE",
        default=None,
        help="record every run in this SQLite run store (see: stageflow runs list FILE); without it the "
        "runs are kept in memory, for the run-store metrics",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the final summary")
    parser.add_argument("--version", action="version", version=f"stageflow_otel {__version__}")
    return parser


def _positive(parser: argparse.ArgumentParser, name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        parser.error(f"{name} must be > 0, got {value!r}")


class _Printer:
    def __init__(self, quiet: bool, every: int, order: Sequence[str]) -> None:
        self.quiet, self.every, self.order = quiet, max(1, every), order

    def run(self, n: int, results: RunResult, outcome: str, error: BaseException | None) -> None:
        if self.quiet:
            return
        if n == 1 or n % self.every == 0 or outcome != "success":
            print(results.timeline(), flush=True)
            if error is not None:
                print(f"   error: {terminal_safe(str(error))}", flush=True)
        else:
            path = " → ".join(terminal_safe(name) for name in results.critical_path)
            said = run_said(outcome)
            print(f"run {str(results.run_id)[:8]}  {said:<18} {results.duration * 1000:7.1f} ms  {path}")


class _OtelLogHandler(logging.Handler):
    """Forwards stdlib log records to an OpenTelemetry logger, in the caller's trace context."""

    _SEVERITY = {
        logging.DEBUG: SeverityNumber.DEBUG,
        logging.INFO: SeverityNumber.INFO,
        logging.WARNING: SeverityNumber.WARN,
        logging.ERROR: SeverityNumber.ERROR,
        logging.CRITICAL: SeverityNumber.FATAL,
    }

    def __init__(self, logger_provider: Any) -> None:
        super().__init__()
        self._logger = get_logger("stageflow_otel.demo", logger_provider=logger_provider)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._logger.emit(
                timestamp=int(record.created * 1e9),
                severity_number=self._SEVERITY.get(record.levelno, SeverityNumber.INFO),
                severity_text=record.levelname,
                body=record.getMessage(),
                attributes={"logger.name": record.name},
            )
        except Exception:  # a log line never breaks the demo
            self.handleError(record)


def _structured_logger(telemetry: Any, log_file: str | None) -> Any:
    """A structlog logger whose JSON lines go to the OTel logger provider (and to ``log_file``)."""
    import structlog

    std = logging.getLogger("stageflow_otel.demo")
    std.setLevel(logging.INFO)
    std.propagate = False
    for handler in list(std.handlers):
        std.removeHandler(handler)
        handler.close()
    std.addHandler(_OtelLogHandler(telemetry.logger_provider))
    if log_file:
        std.addHandler(logging.FileHandler(log_file))
    return structlog.wrap_logger(
        std,
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    )


async def _run(args: argparse.Namespace) -> DemoStats:
    import stageflow_otel
    from stageflow.testing import make_context

    telemetry = stageflow_otel.setup(
        os.environ.get("OTEL_SERVICE_NAME") or "stageflow-demo", metrics_port=args.metrics_port
    )
    if args.metrics_port is not None and telemetry.metrics_server is None:
        telemetry.shutdown(5.0)
        msg = (
            f"cannot serve /metrics on port {args.metrics_port} (see the error above; is the port in use?); "
            "choose another --metrics-port, or 0 for any free port"
        )
        raise DemoError(msg)
    config = DemoConfig(speed=args.speed, seed=args.seed)
    tally = BreakerTally()
    breaker, core = core_interceptors(config, tally)
    metrics_interceptor = stageflow_otel.MetricsInterceptor(telemetry.meter_provider)
    metrics_interceptor.observe_circuit_breaker(breaker)
    interceptors: list[Interceptor] = [
        stageflow_otel.TracingInterceptor(telemetry.tracer_provider),
        metrics_interceptor,
        stageflow_otel.LoggingInterceptor(_structured_logger(telemetry, args.log_file)),
        *core,
    ]
    pipeline = build_demo_pipeline(config)
    # the same pipeline without streaming, for the time to first audio both ways: untraced, unrecorded,
    # with a world of its own (so the seeded runs above draw what they drew before)
    whole = build_demo_pipeline(replace(config, loop_block_rate=0.0), streaming=False).build(
        core_interceptors(config)[1]
    )
    quiet_sink = NoOpEventSink()
    # the runs are recorded (in memory without --run-store) so the run-store metrics have data
    store = SQLiteRunStore(
        args.run_store or ":memory:",
        observer=stageflow_otel.RunStoreMetrics(meter_provider=telemetry.meter_provider),
    )
    graph = pipeline.build(interceptors, run_store=store)
    order = list(pipeline.stages)
    printer = _Printer(args.quiet, args.timeline_every, order)
    stats = DemoStats()
    rng = random.Random(args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait for in-flight runs or the telemetry flush
            os._exit(130)
        stop.set()
        if not args.quiet:
            print("stopping after the runs in flight (again to quit at once)", flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    if not args.quiet:
        server = telemetry.metrics_server
        where = f"metrics: {server.url}" if server is not None else "metrics: OTLP only"
        endpoint = terminal_safe(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "not configured")
        print(f"stageflow demo: pipeline {pipeline.name!r}; {where}; OTLP: {endpoint}")
        print(pipeline.to_mermaid())
    started = 0

    async def worker() -> None:
        nonlocal started
        while not stop.is_set() and (args.runs is None or started < args.runs):
            started += 1
            anonymous = rng.random() < config.anonymous_rate
            ctx = make_context(
                input_text="what's the weather in lisbon tomorrow",
                data={"anonymous": anonymous, "user": None if anonymous else f"user-{rng.randrange(100)}"},
                event_sink=telemetry.event_sink,
            )
            error: BaseException | None = None
            try:
                results = await graph.run(ctx)
            except PipelineRunError as exc:
                error = exc
                results = exc.results
            outcome = outcome_of(error)
            stats.add(outcome, results.duration)
            printer.run(stats.runs, results, outcome, error)
            first_audio = results.time_to_first_output
            if error is None and first_audio is not None:
                stats.first_audio.append(first_audio)
            await _compare(ctx.data)

    async def _compare(data: Any) -> None:
        """Run the pipeline without streaming on the same input; keep its time to first audio."""
        ctx = make_context(
            input_text="what's the weather in lisbon tomorrow", data=dict(data), event_sink=quiet_sink
        )
        try:
            results = await whole.run(ctx)
        except PipelineRunError:
            return  # a rejected reply or a stalled synthesis: no audio to time
        first_audio = results.time_to_first_output
        if first_audio is not None:
            stats.first_audio_whole.append(first_audio)

    try:
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    finally:
        print(_summary(stats, tally, telemetry), flush=True)
        await asyncio.to_thread(telemetry.shutdown, 5.0)
        if store is not None:
            store.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return stats


def _summary(stats: DemoStats, tally: BreakerTally, telemetry: Any) -> str:
    lines = ["", f"{stats.runs} runs"]
    lines.extend(
        f"  {run_said(result):<18} {stats.by_result[result]:6d}"
        for result in ("success", "failure", "error", "timeout", "cancellation")
        if stats.by_result.get(result)
    )
    if stats.durations:
        lines.append(
            "  duration     p50 {:.1f} ms  p95 {:.1f} ms  p99 {:.1f} ms".format(
                *(stats.percentile(q) * 1000 for q in (0.5, 0.95, 0.99))
            )
        )
    for label, values in (
        ("streaming", stats.first_audio),
        ("without streaming (each stage waits for the whole reply)", stats.first_audio_whole),
    ):
        if values:
            p50, p95, p99 = (stats.percentile(q, values) * 1000 for q in (0.5, 0.95, 0.99))
            lines.append(f"  first audio  p50 {p50:.1f} ms  p95 {p95:.1f} ms  p99 {p99:.1f} ms  {label}")
    lines.extend(tally.lines())
    failures = dict(telemetry.export_failures)
    if any(failures.values()):
        lines.append(f"  telemetry export failures: {failures}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m stageflow_otel demo") -> int:
    """Entry point of ``python -m stageflow_otel demo`` and ``stageflow-demo``; returns the exit status."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    _positive(parser, "--runs", args.runs)
    _positive(parser, "--concurrency", args.concurrency)
    _positive(parser, "--speed", args.speed)
    _positive(parser, "--timeline-every", args.timeline_every)
    try:
        asyncio.run(_run(args))
    except DemoError as exc:
        print(f"{parser.prog}: error: {terminal_safe(str(exc))}", file=sys.stderr)
        return 1
    return 0


def console_main() -> None:
    """Entry point of the ``stageflow-demo`` console script."""
    sys.exit(main(prog="stageflow-demo"))
