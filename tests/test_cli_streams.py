"""``stageflow runs list`` and ``runs show`` on runs with sync stages and streams: dispatch time, the
first-chunk mark, chunks, the fate of sync work and the run's time to first output."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stageflow import RunResult, SQLiteRunStore
from stageflow._results import format_seconds

from ._runs_store import RECORDS, STREAMED, write_store
from ._stages import sync_voice
from ._support import FakeClock, run_cli

pytestmark = pytest.mark.usefixtures("utc")


@pytest.fixture(name="db")
def _db(tmp_path: Path) -> str:
    return str(write_store(tmp_path / "runs.db", RECORDS + STREAMED))


class TestShow:
    def test_dispatch_first_chunk_chunks_and_time_to_first_output(
        self, capsys: pytest.CaptureFixture[str], db: str
    ) -> None:
        """A streaming run's timeline draws embed's dispatch (░, its own column) and the first chunks (┃);
        under it come the time to first output with its breakdown and each stream's chunks."""
        assert run_cli(capsys, "runs", "show", db, "dddd0005", "--color", "never", "--width", "28") == (
            0,
            "pipeline 'streaming' · run dddd0005-0000-0000-0000-000000000005 · completed in 560.0 ms\n"
            "    stage  0                   560.0 ms      wait  dispatch       run\n"
            "  * stt    ██                              0.0 ms    0.0 ms   50.0 ms\n"
            "  * embed    ░██                           0.0 ms   20.0 ms   40.0 ms\n"
            "  * llm         █████┃███████████████      0.0 ms    0.0 ms  400.0 ms\n"
            "  * tts              █┃████████████████    0.0 ms    0.0 ms  350.0 ms\n"
            "  critical path (*): stt → embed → llm → tts\n"
            "  time to first output: 220.0 ms (stt 50.0 ms → embed 60.0 ms → llm 100.0 ms → tts 10.0 ms)\n"
            "  chunks: llm 8 (first after 100.0 ms), tts 4 (first after 10.0 ms)\n",
            "",
        )

    def test_work_that_was_stopped_is_named(self, capsys: pytest.CaptureFixture[str], db: str) -> None:
        """A sync stage whose work was stopped (its first attempt timed out) is listed under the timeline."""
        status, out, _ = run_cli(capsys, "runs", "show", db, "dddd0006", "--color", "never")
        assert (status, out.splitlines()[-3:]) == (
            0,
            [
                "  time to first output: 360.0 ms "
                "(stt 50.0 ms → embed 100.0 ms → llm 200.0 ms → tts 10.0 ms)",
                "  chunks: llm 8 (first after 200.0 ms), tts 4 (first after 10.0 ms)",
                "  work stopped: embed",
            ],
        )

    def test_a_run_that_did_not_stream_prints_no_measurements(
        self, capsys: pytest.CaptureFixture[str], db: str
    ) -> None:
        """A run without streams or sync work prints its timeline alone, with no dispatch column."""
        _, out, _ = run_cli(capsys, "runs", "show", db, "aaaa0001", "--color", "never")
        assert (
            out.splitlines()[1] == "    stage   0                               150.0 ms      wait       run"
        )
        assert out.splitlines()[-1] == "  critical path (*): stt → memory → llm → tts"


class TestList:
    def test_a_first_output_column_when_a_listed_run_streamed(
        self, capsys: pytest.CaptureFixture[str], db: str
    ) -> None:
        """With streaming runs among them, the table gains each run's time to first output ("-" for a run
        stored without one)."""
        status, out, _ = run_cli(capsys, "runs", "list", db, "--limit", "5")
        assert (status, out.splitlines()) == (
            0,
            [
                "id                                    pipeline   status     result   start                "
                "duration  first output  critical path",
                "dddd0007-0000-0000-0000-000000000007  streaming  completed  success  2026-05-28 20:32:40  "
                "640.0 ms  500.0 ms      stt → embed → llm → tts",
                "dddd0006-0000-0000-0000-000000000006  streaming  completed  success  2026-05-28 20:31:40  "
                "600.0 ms  360.0 ms      stt → embed → llm → tts",
                "dddd0005-0000-0000-0000-000000000005  streaming  completed  success  2026-05-28 20:30:40  "
                "560.0 ms  220.0 ms      stt → embed → llm → tts",
                "cccc0004-0000-0000-0000-000000000004  etl        completed  success  2026-05-28 20:29:40  "
                "500.0 ms  -             extract → load",
                "bbbb0003-0000-0000-0000-000000000003  voice      failed     timeout  2026-05-28 20:28:40  "
                "280.0 ms  -             stt → memory → llm",
            ],
        )

    def test_no_column_when_no_listed_run_streamed(self, capsys: pytest.CaptureFixture[str], db: str) -> None:
        """Runs that did not stream list as they always did."""
        _, out, _ = run_cli(capsys, "runs", "list", db, "--pipeline", "voice", "--limit", "1")
        assert out.splitlines()[0] == (
            "id                                    pipeline  status  result   start                duration"
            "  critical path"
        )


class TestARecordedRun:
    def test_runs_show_draws_what_the_run_result_drew(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, clock: FakeClock
    ) -> None:
        """A run recorded by the engine (a sync stage, a stream and its reader; stage times on a controlled
        clock) shows in ``runs show`` as ``RunResult.timeline()`` drew it, dispatch column and first-chunk
        marks included, followed by its time to first output and chunks."""

        async def record() -> RunResult:
            store = SQLiteRunStore(tmp_path / "runs.db")
            graph = sync_voice(clock, stt_seconds=0.5, more=3).build(run_store=store)
            try:
                return await graph.run()
            finally:
                store.close()

        result = asyncio.run(record())
        assert result["stt"].dispatch > 0
        status, out, _ = run_cli(capsys, "runs", "show", str(tmp_path / "runs.db"), str(result.run_id)[:8])
        drawn = result.timeline(color=False)
        assert "dispatch" in drawn.splitlines()[1] and drawn.count("┃") == 2
        ttfo = format_seconds(result.time_to_first_output or 0.0)
        steps = " → ".join(f"{name} {format_seconds(seconds)}" for name, seconds in result.first_output_path)
        assert (status, out) == (
            0,
            drawn
            + f"\n  time to first output: {ttfo} ({steps})"
            + "\n  chunks: llm 4 (first after 250.0 ms), tts 4 (first after 62.5 ms)\n",
        )
        assert [name for name, _ in result.first_output_path] == ["stt", "llm", "tts"]
