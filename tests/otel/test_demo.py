"""The demo: its pipeline, its terminal output and its command line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from uuid import UUID

import pytest

from stageflow import (
    InMemoryEventSink,
    PipelineCancelledError,
    PipelineFailedError,
    RunResult,
    StageFailedError,
    StageKind,
    StageResult,
    StageStatus,
    StageTimeoutError,
)
from stageflow.interceptors import CircuitState, CircuitStateChange, TimeoutInterceptor
from stageflow.testing import make_context
from stageflow_otel._demo import (
    DURATION_WINDOW,
    LLM_CONFIG,
    BreakerTally,
    DemoConfig,
    DemoStats,
    _Printer,
    _summary,
    build_demo_pipeline,
    outcome_of,
)
from tests._support import killed_if_running

ENV = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}

_NO_RESULTS = RunResult(UUID(int=0), "p", 0.0, {})


def _quiet_demo(runs: str, *more: str) -> subprocess.CompletedProcess[str]:
    """``python -m stageflow_otel demo --runs RUNS --quiet`` (fast, seeded, metrics on any free port) with
    ``more`` arguments; fails unless it exits 0."""
    return subprocess.run(
        [sys.executable, "-m", "stageflow_otel", "demo", "--runs", runs, "--speed", "0.02", "--seed", "3"]
        + ["--metrics-port", "0", "--quiet", *more],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        check=True,
    )


def _result(name: str, status: StageStatus, start: float, end: float, ready: float) -> StageResult:
    return StageResult(name, StageKind.WORK, status, None, None, ready, start, end)


class TestDemoPipeline:
    def test_shape(self) -> None:
        """The demo pipeline is the voice-assistant DAG with a conditional personalize stage."""
        pipeline = build_demo_pipeline(DemoConfig(speed=0.01, seed=1))
        assert [(s.name, s.dependencies, s.conditional) for s in pipeline.stages.values()] == [
            ("stt", (), False),
            ("enrich", ("stt",), False),
            ("memory", ("stt",), False),
            ("search", ("stt",), False),
            ("personalize", ("memory",), True),
            ("llm", ("enrich", "search", "personalize"), False),
            ("guard", ("llm",), False),
            ("tts", ("guard",), False),
        ]

    async def test_anonymous_run_skips_memory_and_personalize(self) -> None:
        """An anonymous user's run skips memory, and personalize is skipped with it."""
        config = DemoConfig(
            speed=0.001, seed=1, search_error_rate=0, guard_reject_rate=0, tts_stall_rate=0, outage_every=0
        )
        graph = build_demo_pipeline(config).build([TimeoutInterceptor()])
        results = await graph.run(make_context(data={"anonymous": True}))
        assert {n: r.status for n, r in results.items()} == {
            "stt": StageStatus.OK,
            "enrich": StageStatus.OK,
            "memory": StageStatus.SKIP,
            "search": StageStatus.OK,
            "personalize": StageStatus.SKIP,
            "llm": StageStatus.OK,
            "guard": StageStatus.OK,
            "tts": StageStatus.OK,
        }
        assert results["llm"].data["reply"] == (
            "Tomorrow in Lisbon: 21°C, sunny. Expect a light breeze in the afternoon. "
            "Take a jacket for the evening."
        )


class TestRendering:
    def test_printer_prints_the_run_timeline(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The first run, every Nth run and every failed run are printed as ``RunResult.timeline()``."""
        results = RunResult(UUID(int=1), "p", 0.0, {"a": (), "b": ("a",)})
        results["a"] = _result("a", StageStatus.OK, 0.0, 0.25, 0.0)
        results["b"] = _result("b", StageStatus.OK, 0.25, 1.0, 0.25)
        results.ended_at = 1.0
        printer = _Printer(quiet=False, every=10, order=["a", "b"])
        printer.run(1, results, "success", None)
        printer.run(2, results, "success", None)
        assert capsys.readouterr().out.splitlines() == [
            *results.timeline(color=False).splitlines(),
            "run 00000000  completed           1000.0 ms  a → b",
        ]

    @pytest.mark.parametrize(
        ("error", "expected"),
        [
            (None, "success"),
            (PipelineFailedError("s", StageTimeoutError("s", 1), {}, _NO_RESULTS), "timeout"),
            (PipelineFailedError("s", StageFailedError("s", "no"), {}, _NO_RESULTS), "failure"),
            (PipelineFailedError("s", ValueError("bad"), {}, _NO_RESULTS), "error"),
            (PipelineCancelledError("s", "bye", _NO_RESULTS), "cancellation"),
        ],
        ids=["success", "timeout", "failure", "error", "cancellation"],
    )
    def test_outcome_vocabulary(self, error: BaseException | None, expected: str) -> None:
        """Run errors map onto the run result vocabulary."""
        assert outcome_of(error) == expected

    def test_stats_percentiles(self) -> None:
        """Percentiles use the nearest rank."""
        stats = DemoStats()
        for i in range(1, 101):
            stats.add("success", i / 1000)
        assert (stats.percentile(0.5), stats.percentile(0.95), stats.percentile(0.99)) == (0.05, 0.095, 0.099)
        assert stats.by_result == {"success": 100}

    def test_stats_keep_a_bounded_window(self) -> None:
        """A continuous demo keeps only the last DURATION_WINDOW durations but counts every run."""
        stats = DemoStats()
        for i in range(DURATION_WINDOW + 5):
            stats.add("success", float(i))
        assert (stats.runs, len(stats.durations), stats.durations[0]) == (
            DURATION_WINDOW + 5,
            DURATION_WINDOW,
            5.0,
        )

    def test_breaker_tally_summarises_transitions_per_stage(self) -> None:
        """The breaker tally counts opens and closes per stage and keeps the last state."""
        tally = BreakerTally()
        closed, half, opened = CircuitState.CLOSED, CircuitState.HALF_OPEN, CircuitState.OPEN
        for old, new in [(closed, opened), (opened, half), (half, opened), (opened, half), (half, closed)]:
            tally(CircuitStateChange("search", "p", old, new, 0.0))
        tally(CircuitStateChange("tts", "p", closed, opened, 0.0))
        assert tally.lines() == [
            "  breaker search: opened 2x, closed 1x, now CLOSED",
            "  breaker tts: opened 1x, closed 0x, now OPEN",
        ]

    def test_printed_names_and_errors_are_escaped(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Run lines, errors and breaker lines print control characters escaped, each on one line."""
        name = "a\x1b]0;owned\x07\nb"
        results = RunResult(UUID(int=1), "p", 0.0, {name: ()})
        results[name] = _result(name, StageStatus.OK, 0.0, 1.0, 0.0)
        results.ended_at = 1.0
        printer = _Printer(quiet=False, every=10, order=[name])
        printer.run(2, results, "success", None)
        printer.run(3, results, "failure", PipelineFailedError(name, ValueError("x\x1b[2J\ry"), {}, results))
        tally = BreakerTally()
        tally(CircuitStateChange(name, "p", CircuitState.CLOSED, CircuitState.OPEN, 0.0))
        assert capsys.readouterr().out.splitlines() == [
            "run 00000000  completed           1000.0 ms  a\\x1b]0;owned\\x07\\nb",
            *results.timeline(color=False).splitlines(),
            "   error: stage 'a\\x1b]0;owned\\x07\\nb' failed: ValueError: x\\x1b[2J\\ry",
        ]
        assert tally.lines() == ["  breaker a\\x1b]0;owned\\x07\\nb: opened 1x, closed 0x, now OPEN"]


class TestDemoCommand:
    def test_runs_n_runs_and_prints_a_summary(self) -> None:
        """`demo --runs 40` runs forty instrumented runs and prints how they ended."""
        lines = _quiet_demo("40").stdout.splitlines()
        assert "40 runs" in lines
        counts = [
            int(m.group(2))
            for line in lines
            if (
                m := re.fullmatch(
                    r"  (completed|failed \((?:failure|error|timeout)\)|cancelled) +(\d+)", line
                )
            )
        ]
        assert sum(counts) == 40
        assert any(
            re.fullmatch(r"  duration     p50 [\d.]+ ms  p95 [\d.]+ ms  p99 [\d.]+ ms", x) for x in lines
        )

    def test_sigterm_stops_a_continuous_demo_cleanly(self) -> None:
        """A continuous demo stops on SIGTERM, prints its summary and exits 0."""
        with killed_if_running(
            subprocess.Popen(
                [sys.executable, "-m", "stageflow_otel", "demo", "--speed", "0.02", "--metrics-port", "0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=ENV,
            )
        ) as proc:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.startswith("stageflow demo: pipeline 'voice-assistant'; metrics: http://127.0.0.1:")
            for line in proc.stdout:
                if line.startswith("run "):
                    break
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert re.search(r"^\d+ runs$", out, flags=re.M)

    def test_unknown_command_is_a_usage_error(self) -> None:
        """`python -m stageflow_otel` without `demo` prints usage naming the command and exits 2."""
        proc = subprocess.run(
            [sys.executable, "-m", "stageflow_otel"], capture_output=True, text=True, timeout=60, env=ENV
        )
        assert proc.returncode == 2
        assert proc.stderr.startswith("usage: python -m stageflow_otel [-h] [--version] {demo} ...")
        assert "the following arguments are required: command" in proc.stderr


class TestCommandLine:
    @pytest.mark.parametrize(
        ("argv", "usage"),
        [
            (
                ["-m", "stageflow_otel", "--help"],
                "usage: python -m stageflow_otel [-h] [--version] {demo} ...",
            ),
            (["-m", "stageflow_otel", "demo", "--help"], "usage: python -m stageflow_otel demo [-h]"),
            (
                [
                    "-c",
                    "import sys; from stageflow_otel._demo import console_main; "
                    "sys.argv[1:] = ['--help']; console_main()",
                ],
                "usage: stageflow-demo [-h]",
            ),
        ],
        ids=["module", "module-demo", "stageflow-demo"],
    )
    def test_help_exits_0_with_its_own_usage(self, argv: list[str], usage: str) -> None:
        """Every entry point's --help exits 0 and names the command as it was invoked."""
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60, env=ENV)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(usage)

    def test_speed_help_says_what_it_scales(self) -> None:
        """--speed's help says it scales the simulated latencies, with both directions."""
        proc = subprocess.run(
            [sys.executable, "-m", "stageflow_otel", "demo", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "scale every simulated latency by this factor: 0.1 runs ten times faster" in " ".join(
            proc.stdout.split()
        )

    def test_version(self) -> None:
        """``python -m stageflow_otel --version`` prints the version."""
        import stageflow

        proc = subprocess.run(
            [sys.executable, "-m", "stageflow_otel", "--version"], capture_output=True, text=True, timeout=60
        )
        assert (proc.returncode, proc.stdout) == (0, f"stageflow_otel {stageflow.__version__}\n")

    @pytest.mark.parametrize(
        "command",
        [
            [sys.executable, "-m", "stageflow_otel", "demo"],
            [str(Path(sys.executable).parent / "stageflow-demo")],
        ],
        ids=["python-m-demo", "console-script"],
    )
    def test_demo_version(self, command: list[str]) -> None:
        """The demo command, and the ``stageflow-demo`` script, answer ``--version`` too."""
        import stageflow

        proc = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stdout) == (0, f"stageflow_otel {stageflow.__version__}\n")

    def test_busy_metrics_port_exits_1(self) -> None:
        """A --metrics-port already in use stops the demo with status 1 and a message naming the fix."""
        import socket

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            proc = subprocess.run(
                [sys.executable, "-m", "stageflow_otel", "demo", "--runs", "1", "--metrics-port", str(port)],
                capture_output=True,
                text=True,
                timeout=120,
                env=ENV,
            )
        assert proc.returncode == 1
        assert proc.stderr.rstrip().splitlines()[-1] == (
            f"python -m stageflow_otel demo: error: cannot serve /metrics on port {port} "
            "(see the error above; is the port in use?); choose another --metrics-port, "
            "or 0 for any free port"
        )
        assert f"cannot serve /metrics on 127.0.0.1:{port}" in proc.stderr


class TestRunStore:
    def test_runs_are_recorded_for_the_stageflow_command(self, tmp_path: Path) -> None:
        """``--run-store FILE`` records every run, which ``stageflow runs list`` then lists."""
        db = tmp_path / "runs.db"
        _quiet_demo("6", "--run-store", str(db))
        listed = subprocess.run(
            [sys.executable, "-m", "stageflow", "runs", "list", str(db), "--limit", "100"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.splitlines()
        assert len(listed) == 7
        assert {line.split()[1] for line in listed[1:]} == {"voice-assistant"}


class TestStreamingDemo:
    CONFIG = DemoConfig(
        speed=0.0, seed=1, search_error_rate=0, guard_reject_rate=0, tts_stall_rate=0, outage_every=0
    )
    """Every simulated latency is one turn of the event loop: the order of events is the scheduler's."""

    async def _events(self, streaming: bool) -> tuple[RunResult, list[str]]:
        sink = InMemoryEventSink()
        graph = build_demo_pipeline(self.CONFIG, streaming=streaming).build([TimeoutInterceptor()])
        results = await graph.run(make_context(data={"anonymous": True}, event_sink=sink))
        return results, [e.type for e in sink.events if e.type.split(".")[1] in ("llm", "guard", "tts")]

    def test_llm_guard_and_tts_stream_and_only_the_consumers_differ(self) -> None:
        """llm, guard and tts stream in both forms; with streaming guard reads llm's stream and tts guard's,
        without it they read the whole reply; llm declares its GenAI operation."""
        for streaming, streams in ((True, {"guard": ("llm",), "tts": ("guard",)}), (False, {})):
            graph = build_demo_pipeline(self.CONFIG, streaming=streaming).build()
            infos = {info.name: info for info in graph.stages}
            assert [n for n, i in infos.items() if i.streaming is not None] == ["llm", "guard", "tts"]
            assert {n: i.streams for n, i in infos.items() if i.streams} == streams
            assert dict(infos["llm"].config) == LLM_CONFIG

    async def test_streaming_tts_speaks_while_the_llm_still_talks(self) -> None:
        """With streaming, guard starts at llm's first token and tts speaks the first sentence before llm
        ended; tts yields one audio chunk per sentence."""
        results, events = await self._events(streaming=True)
        assert events.index("stage.guard.started") == events.index("stage.llm.first_chunk") + 1
        assert events.index("stage.tts.first_chunk") < events.index("stage.llm.completed")
        assert results["tts"].chunks == 3
        assert results["guard"].data["text"] == results["llm"].data["reply"]
        assert results["tts"].data["audio_ms"] == 60 * len(results["llm"].data["reply"])

    async def test_without_streaming_each_stage_waits_for_the_whole_reply(self) -> None:
        """Without streaming, guard starts after llm completed and tts after guard completed; the same
        reply and audio come out."""
        results, events = await self._events(streaming=False)
        assert events == [
            "stage.llm.started",
            "stage.llm.first_chunk",
            "stage.llm.completed",
            "stage.guard.started",
            "stage.guard.first_chunk",
            "stage.guard.completed",
            "stage.tts.started",
            "stage.tts.first_chunk",
            "stage.tts.completed",
        ]
        assert (results["llm"].chunks, results["guard"].chunks, results["tts"].chunks) == (
            18,
            3,
            3,
        )  # 18 words
        assert results["tts"].data["audio_ms"] == 60 * len(results["llm"].data["reply"])

    async def test_a_rejected_reply_fails_the_run_at_guards_first_sentence(self) -> None:
        """guard rejects at its first sentence: the run fails with StageFailedError, tts never starts."""
        config = replace(self.CONFIG, guard_reject_rate=1.0)
        graph = build_demo_pipeline(config).build([TimeoutInterceptor()])
        with pytest.raises(PipelineFailedError) as caught:
            await graph.run(make_context(data={"anonymous": True}))
        assert (caught.value.stage, type(caught.value.error)) == ("guard", StageFailedError)
        assert "tts" not in caught.value.results
        assert outcome_of(caught.value) == "failure"

    def test_the_summary_prints_the_time_to_first_audio_both_ways(self) -> None:
        """The summary has a first-audio line for the streaming runs and one for the runs without."""
        stats = DemoStats()
        stats.add("success", 0.5)
        stats.first_audio.extend([0.2, 0.3])
        stats.first_audio_whole.extend([0.4, 0.6])

        class Health:
            export_failures: dict[str, int] = {}

        assert _summary(stats, BreakerTally(), Health()).splitlines()[-2:] == [
            "  first audio  p50 200.0 ms  p95 300.0 ms  p99 300.0 ms  streaming",
            "  first audio  p50 400.0 ms  p95 600.0 ms  p99 600.0 ms  without streaming "
            "(each stage waits for the whole reply)",
        ]
