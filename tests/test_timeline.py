"""``RunResult.timeline()`` and the stored-run timeline: exact text Gantt charts."""

from __future__ import annotations

import asyncio
import io
from uuid import UUID

import pytest

from stageflow import (
    InMemoryRunStore,
    OutcomeCategory,
    Pipeline,
    PipelineCancelledError,
    PipelineFailedError,
    RunRecord,
    RunResult,
    StageFailedError,
    StageKind,
    StageOutput,
    StageRecord,
    StageResult,
    StageStatus,
    StageTimeoutError,
)
from stageflow._results import format_seconds
from stageflow.views._timeline import timeline_of_record, use_color

RUN_ID = UUID("12345678-1234-5678-1234-567812345678")


def result(
    deps: dict[str, tuple[str, ...]],
    *stages: StageResult,
    end: float,
    category: OutcomeCategory = OutcomeCategory.SUCCESS,
) -> RunResult:
    """A run of ``voice`` from 100.0 to ``end`` with ``stages``, which the executor gave ``category``."""
    run = RunResult(RUN_ID, "voice", 100.0, deps)
    run.ended_at = end
    run.category = category
    for stage in stages:
        run[stage.name] = stage
    return run


def stage(
    name: str,
    status: StageStatus,
    ready: float,
    start: float,
    end: float,
    *,
    output: StageOutput | None = None,
    error: BaseException | None = None,
) -> StageResult:
    return StageResult(name, StageKind.WORK, status, output, error, ready, start, end)


def completed() -> RunResult:
    return result(
        {"stt": (), "memory": (), "llm": ("stt", "memory")},
        stage("stt", StageStatus.OK, 100.0, 100.0, 100.2),
        stage("memory", StageStatus.OK, 100.0, 100.1, 100.5),
        stage("llm", StageStatus.OK, 100.5, 100.6, 101.0),
        end=101.0,
    )


class TestTimeline:
    def test_completed_run(self) -> None:
        """Waits are drawn as ─, runs as █, the critical path is starred and durations are rounded."""
        assert completed().timeline(width=20, color=False).splitlines() == [
            "pipeline 'voice' · run 12345678-1234-5678-1234-567812345678 · completed in 1.00 s",
            "    stage   0             1.00 s      wait       run",
            "    stt     ████                    0.0 ms  200.0 ms",
            "  * memory  ──████████            100.0 ms  400.0 ms",
            "  * llm               ──████████  100.0 ms  400.0 ms",
            "  critical path (*): memory → llm",
        ]

    def test_dispatch_is_drawn_and_counted_apart_from_wait_and_run(self) -> None:
        """A sync stage's dispatch time is its own segment (░) and column; run is what is left."""
        run = result(
            {"stt": (), "embed": ("stt",)},
            stage("stt", StageStatus.OK, 100.0, 100.0, 100.2),
            StageResult(
                "embed", StageKind.WORK, StageStatus.OK, None, None, 100.2, 100.2, 101.0, dispatch=0.2
            ),
            end=101.0,
        )
        assert run.timeline(width=20, color=False).splitlines() == [
            "pipeline 'voice' · run 12345678-1234-5678-1234-567812345678 · completed in 1.00 s",
            "    stage  0             1.00 s      wait  dispatch       run",
            "  * stt    ████                    0.0 ms    0.0 ms  200.0 ms",
            "  * embed      ░░░░████████████    0.0 ms  200.0 ms  600.0 ms",
            "  critical path (*): stt → embed",
        ]

    def test_failure_skip_timeout_cancel_and_not_started(self) -> None:
        """Each non-ok stage shows its reason; stages that never started come last."""
        run = result(
            {"a": (), "skip": ("a",), "t": ("a",), "f": ("a",), "c": ("a",), "later": ("f",)},
            stage("a", StageStatus.OK, 100.0, 100.0, 100.01),
            stage("skip", StageStatus.SKIP, 100.01, 100.01, 100.01, output=StageOutput.skip("no audio")),
            stage("t", StageStatus.FAIL, 100.01, 100.01, 100.02, error=StageTimeoutError("t", 0.01)),
            stage("f", StageStatus.FAIL, 100.01, 100.01, 100.016, error=StageFailedError("f", "boom")),
            stage("c", StageStatus.CANCEL, 100.01, 100.012, 100.02, error=asyncio.CancelledError()),
            end=100.02,
            category=OutcomeCategory.TIMEOUT,
        )
        assert run.timeline(width=10, color=False).splitlines() == [
            "pipeline 'voice' · run 12345678-1234-5678-1234-567812345678 · failed (timeout) in 20.0 ms",
            "    stage  0  20.0 ms      wait       run",
            "  * a      █████         0.0 ms   10.0 ms",
            "    f           ✗✗✗      0.0 ms    6.0 ms  failed: StageFailedError: boom",
            "    skip        ·        0.0 ms    0.0 ms  skipped: no audio",
            "  * t           ✗✗✗✗✗    0.0 ms   10.0 ms  timed out: stage 't' timed out after 0.01 s",
            "    c           ─▒▒▒▒    2.0 ms    8.0 ms  cancelled",
            "    later                                  not started",
            "  critical path (*): a → t",
        ]

    def test_colour_marks_segments_and_the_critical_path(self) -> None:
        """With colour, run segments are green, waits dim and critical-path names bold."""
        lines = completed().timeline(width=20, color=True).splitlines()
        assert lines[3] == (
            "  * \033[1mmemory\033[0m  \033[2m──\033[0m\033[32m████████\033[0m            100.0 ms  400.0 ms"
        )

    def test_colour_defaults_to_off_when_stdout_is_not_a_terminal(self) -> None:
        """Under pytest stdout is captured, so the default output has no escape codes."""
        assert "\033[" not in completed().timeline()

    def test_width_below_ten_is_rejected(self) -> None:
        """A width too narrow to draw is a ValueError naming the value."""
        with pytest.raises(ValueError, match="at least 10 characters, got 3"):
            completed().timeline(width=3)

    async def test_a_real_failed_run(self) -> None:
        """A real run's partial results draw the failure and the stage that never started."""
        from stageflow import Pipeline

        async def ok(ctx: object) -> StageOutput:
            return StageOutput.ok()

        async def bad(ctx: object) -> StageOutput:
            raise ValueError("bad input")

        graph = (
            Pipeline(name="p")
            .with_stage("a", ok, StageKind.WORK)
            .with_stage("b", bad, StageKind.WORK, dependencies=("a",))
            .with_stage("c", ok, StageKind.WORK, dependencies=("b",))
            .build()
        )
        with pytest.raises(PipelineFailedError) as exc:
            await graph.run()
        partial = exc.value.results
        assert isinstance(partial, RunResult)
        lines = partial.timeline(color=False).splitlines()
        assert lines[0].endswith(" · failed (error) in " + format_seconds(partial.duration))
        assert [line.split()[0:2] for line in lines[2:5]] == [["*", "a"], ["*", "b"], ["c", "not"]]
        assert lines[3].endswith("error: ValueError: bad input")

    async def test_an_error_whose_str_raises_is_drawn_as_the_store_keeps_it(self) -> None:
        """The timeline's note is the stored record's (``describe``): an error whose ``str()`` raises is
        drawn with the stand-in instead of crashing the timeline."""
        from stageflow import InMemoryRunStore, Pipeline

        class Unprintable(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no text")

        async def bad(ctx: object) -> StageOutput:
            raise Unprintable

        store = InMemoryRunStore()
        graph = Pipeline(name="p").with_stage("b", bad, StageKind.WORK).build(run_store=store)
        with pytest.raises(PipelineFailedError) as exc:
            await graph.run()
        live = exc.value.results.timeline(color=False).splitlines()
        (record,) = await store.list_runs()
        assert live[2].endswith(f"error: {Unprintable.__qualname__}: <Unprintable whose str() failed>")
        assert live == timeline_of_record(record).splitlines()


class TestRecordTimeline:
    def test_stored_run(self) -> None:
        """A stored run draws from its epoch times and recorded waits, with its error types."""
        record = RunRecord(
            "r1",
            "voice",
            "failed",
            1000.0,
            1000.4,
            (
                StageRecord("stt", "transform", "ok", 1000.0, 1000.2, 0.0, 1),
                StageRecord(
                    "llm",
                    "agent",
                    "fail",
                    1000.3,
                    1000.4,
                    0.1,
                    2,
                    "late",
                    "StageTimeoutError",
                    category="timeout",
                ),
            ),
            ("stt", "llm"),
            "llm: late",
            category="timeout",
        )
        assert timeline_of_record(record, width=10).splitlines() == [
            "pipeline 'voice' · run r1 · failed (timeout) in 400.0 ms",
            "    stage  0 400.0 ms      wait       run",
            "  * stt    █████         0.0 ms  200.0 ms",
            "  * llm         ──✗✗✗  100.0 ms  100.0 ms  timed out: late",
            "  critical path (*): stt → llm",
        ]

    async def test_stored_skip_and_cancel_reasons(self) -> None:
        """A store keeps why a stage skipped or cancelled, so ``runs show`` gives the reason too."""

        async def ok(ctx: object) -> StageOutput:
            return StageOutput.ok(v=1)

        async def skip(ctx: object) -> StageOutput:
            return StageOutput.skip("nothing to enrich")

        async def stop(ctx: object) -> StageOutput:
            return StageOutput.cancel("enough for today")

        store = InMemoryRunStore()
        graph = (
            Pipeline(name="p")
            .with_stage("a", ok, StageKind.TRANSFORM)
            .with_stage("b", skip, StageKind.ENRICH, dependencies=("a",))
            .with_stage("c", ok, StageKind.ENRICH, dependencies=("b",), conditional=True)
            .with_stage("d", stop, StageKind.WORK, dependencies=("c",))
            .build(run_store=store)
        )
        with pytest.raises(PipelineCancelledError) as caught:
            await graph.run(input_text="x")
        record = await store.get_run(str(caught.value.results.run_id))
        assert record is not None
        assert [(s.name, s.status, s.error, s.error_type) for s in record.stages] == [
            ("a", "ok", None, None),
            ("b", "skip", "nothing to enrich", None),
            ("c", "skip", "dependency 'b' was skipped", None),
            ("d", "cancel", "enough for today", None),
        ]
        notes = [line.split(" ms  ", 2)[-1] for line in timeline_of_record(record).splitlines()[3:6]]
        assert notes == [
            "skipped: nothing to enrich",
            "skipped: dependency 'b' was skipped",
            "cancelled: enough for today",
        ]


class TestHelpers:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0.0004, "0.4 ms"),
            (0.01234, "12.3 ms"),
            (0.9999, "999.9 ms"),
            (1.0, "1.00 s"),
            (75.456, "75.46 s"),
        ],
        ids=["sub-ms", "ms", "just-below-1s", "1s", "minutes"],
    )
    def test_format_seconds(self, seconds: float, text: str) -> None:
        """Durations are rounded to 0.1 ms below a second and to 10 ms above."""
        assert format_seconds(seconds) == text

    def test_use_color_needs_a_tty_and_no_no_color(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Colour only on a TTY, and never with NO_COLOR or TERM=dumb."""

        class Tty(io.StringIO):
            def isatty(self) -> bool:
                return True

        monkeypatch.delenv("NO_COLOR", raising=False)
        monkeypatch.setenv("TERM", "xterm")
        assert (use_color(Tty()), use_color(io.StringIO())) == (True, False)
        monkeypatch.setenv("TERM", "dumb")
        assert use_color(Tty()) is False
        monkeypatch.setenv("TERM", "xterm")
        monkeypatch.setenv("NO_COLOR", "1")
        assert use_color(Tty()) is False


class TestRepr:
    def test_stage_result_repr_shows_timings(self) -> None:
        """A StageResult's repr carries its status, wait and duration, rounded, and its error."""
        run = completed()
        assert (
            repr(run["memory"]) == "StageResult(name='memory', status=OK, wait=100.0 ms, duration=400.0 ms)"
        )
        failed = stage("x", StageStatus.FAIL, 1.0, 1.0, 2.5, error=ValueError("bad"))
        assert (
            repr(failed)
            == "StageResult(name='x', status=FAIL, wait=0.0 ms, duration=1.50 s, error=ValueError('bad'))"
        )


HOSTILE_A = "fetch\x1b[2J\x1b[H"
HOSTILE_B = "llm\nfake ok row"
HOSTILE_C = "tts\u202e\x9b31m"


def hostile() -> RunResult:
    return result(
        {HOSTILE_A: (), HOSTILE_B: (HOSTILE_A,), HOSTILE_C: (HOSTILE_A,)},
        stage(HOSTILE_A, StageStatus.OK, 100.0, 100.0, 100.5),
        stage(
            HOSTILE_C,
            StageStatus.SKIP,
            100.5,
            100.5,
            100.5,
            output=StageOutput.skip("muted\x07\x1b]0;owned\x07"),
        ),
        stage(
            HOSTILE_B,
            StageStatus.FAIL,
            100.5,
            100.5,
            101.0,
            error=RuntimeError("boom\x1b]52;c;ZXZpbA==\x07\r\n    llm  completed"),
        ),
        end=101.0,
        category=OutcomeCategory.ERROR,
    )


class TestHostileText:
    def test_control_characters_are_escaped_and_rows_stay_lines(self) -> None:
        """Names, errors and reasons print with ESC, BEL, C1, bidi and newlines escaped, one row per stage."""
        text = hostile().timeline(width=10, color=False)
        assert text.splitlines() == [
            "pipeline 'voice' · run 12345678-1234-5678-1234-567812345678 · failed (error) in 1.00 s",
            "    stage               0   1.00 s      wait       run",
            "  * fetch\\x1b[2J\\x1b[H  █████         0.0 ms  500.0 ms",
            "  * llm\\nfake ok row         ✗✗✗✗✗    0.0 ms  500.0 ms  error: RuntimeError: "
            "boom\\x1b]52;c;ZXZpbA==\\x07\\r\\n    llm  completed",
            "    tts\\u202e\\x9b31m         ·        0.0 ms    0.0 ms  skipped: muted\\x07\\x1b]0;owned\\x07",
            "  critical path (*): fetch\\x1b[2J\\x1b[H → llm\\nfake ok row",
        ]
        assert [c for c in text if not c.isprintable() and c != "\n"] == []

    def test_colour_codes_are_the_only_escape_sequences(self) -> None:
        """With colour on, the only ESC bytes are the timeline's own colour codes."""
        text = hostile().timeline(width=10, color=True)
        assert text.count("\x1b") == text.count("\x1b[0m") * 2
        assert "\x07" not in text and "\x9b" not in text and "\r" not in text
