"""The ``stageflow`` command: runs list / show, graph, report, help and version."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import stageflow
from stageflow import RunRecord, SQLiteRunStore, StageRecord
from stageflow.views._timeline import timeline_of_record

from ._runs_store import RECORDS, T0, write_store
from ._support import cli_error, run_cli

ROOT = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(autouse=True)
def _utc_and_colour(utc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local time is UTC and ``NO_COLOR`` unset."""
    monkeypatch.delenv("NO_COLOR", raising=False)


@pytest.fixture(name="db")
def _db(tmp_path: Path) -> str:
    return str(write_store(tmp_path / "runs.db"))


def importable_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    """Write module ``name`` into ``tmp_path`` and import it from there (the CLI's working directory)."""
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))


class TestHelpAndVersion:
    @pytest.mark.parametrize(
        "argv",
        [[], ["runs"], ["runs", "list"], ["runs", "show"], ["graph"], ["report"]],
        ids=["top", "runs", "runs-list", "runs-show", "graph", "report"],
    )
    def test_help_exits_0(self, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
        """``--help`` prints usage and exits 0 on every command."""
        status, out, _ = run_cli(capsys, *argv, "--help")
        assert status == 0
        assert out.startswith("usage: stageflow")

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """``--version`` prints the package version."""
        assert run_cli(capsys, "--version") == (0, f"stageflow {stageflow.__version__}\n", "")

    def test_no_command_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without a command the usage goes to stderr with status 2."""
        err = cli_error(capsys, status=2)
        assert "the following arguments are required: COMMAND" in err

    @pytest.mark.parametrize(
        "command",
        [[sys.executable, "-m", "stageflow"], [str(Path(sys.executable).parent / "stageflow")]],
        ids=["python-m", "console-script"],
    )
    def test_entry_points(self, command: list[str]) -> None:
        """``python -m stageflow`` and the ``stageflow`` console script are the same command."""
        proc = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60, check=True)
        assert proc.stdout == f"stageflow {stageflow.__version__}\n"


class TestRuns:
    def test_list(self, capsys: pytest.CaptureFixture[str], db: str) -> None:
        """``runs list`` prints the most recent runs first as a table."""
        status, out, _ = run_cli(capsys, "runs", "list", db)
        assert status == 0
        assert out.splitlines() == [
            "id                                    pipeline  status     result   start                "
            "duration  critical path",
            "cccc0004-0000-0000-0000-000000000004  etl       completed  success  2026-05-28 20:29:40  "
            "500.0 ms  extract → load",
            "bbbb0003-0000-0000-0000-000000000003  voice     failed     timeout  2026-05-28 20:28:40  "
            "280.0 ms  stt → memory → llm",
            "aaaa0002-0000-0000-0000-000000000002  voice     completed  success  2026-05-28 20:27:40  "
            "200.0 ms  stt → memory → llm → tts",
            "aaaa0001-0000-0000-0000-000000000001  voice     completed  success  2026-05-28 20:26:40  "
            "150.0 ms  stt → memory → llm → tts",
        ]

    def test_list_one_pipeline_with_a_limit(self, capsys: pytest.CaptureFixture[str], db: str) -> None:
        """``--pipeline`` and ``--limit`` narrow the table."""
        _, out, _ = run_cli(capsys, "runs", "list", db, "--pipeline", "voice", "--limit", "1")
        assert [line.split()[0] for line in out.splitlines()] == [
            "id",
            "bbbb0003-0000-0000-0000-000000000003",
        ]

    def test_list_of_an_empty_store(self, capsys: pytest.CaptureFixture[str], db: str) -> None:
        """A pipeline without runs says so."""
        assert run_cli(capsys, "runs", "list", db, "--pipeline", "nope") == (
            0,
            f"no runs of pipeline 'nope' in {db!r}\n",
            "",
        )

    def test_show_by_prefix(self, capsys: pytest.CaptureFixture[str], db: str) -> None:
        """``runs show`` draws the run's timeline and its error; a unique id prefix is enough."""
        status, out, _ = run_cli(capsys, "runs", "show", db, "bbbb", "--color", "never")
        assert status == 0
        assert out == timeline_of_record(RECORDS[2]) + (
            "\n  error: llm: StageTimeoutError: stage 'llm' timed out after 0.2 s\n"
        )
        assert "  * llm  " in out and "timed out: stage 'llm' timed out after 0.2 s" in out

    def test_show_in_colour(self, capsys: pytest.CaptureFixture[str], db: str) -> None:
        """``--color always`` colours the timeline like ``RunResult.timeline(color=True)``."""
        _, out, _ = run_cli(
            capsys, "runs", "show", db, RECORDS[0].run_id, "--color", "always", "--width", "20"
        )
        assert out == timeline_of_record(RECORDS[0], width=20, color=True) + "\n"
        assert "\033[32m" in out

    def test_ambiguous_prefix(self, capsys: pytest.CaptureFixture[str], db: str) -> None:
        """A prefix matching several runs is refused, naming them in id order."""
        err = cli_error(capsys, "runs", "show", db, "aaaa")
        assert err == (
            f"stageflow: error: run id prefix 'aaaa' matches 2 runs in {db!r} "
            "(aaaa0001-0000-0000-0000-000000000001, aaaa0002-0000-0000-0000-000000000002); "
            "give more of it\n"
        )

    def test_unknown_run(self, capsys: pytest.CaptureFixture[str], db: str) -> None:
        """An unknown run id names the command that lists the runs."""
        assert run_cli(capsys, "runs", "show", db, "zzz") == (
            1,
            "",
            f"stageflow: error: no run 'zzz' in {db!r}; `stageflow runs list {db}` lists the runs it holds\n",
        )

    def test_missing_store_is_not_created(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A path that does not exist is an error, and no database is created there."""
        missing = tmp_path / "nope.db"
        err = cli_error(capsys, "runs", "list", str(missing))
        assert err.startswith(f"stageflow: error: no run store at {str(missing)!r}: the file does not exist")
        assert not missing.exists()

    def test_a_file_that_is_not_a_database(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A file that is not SQLite is reported as such."""
        text = tmp_path / "notes.txt"
        text.write_text("hello, this is not a database at all" * 10)
        err = cli_error(capsys, "runs", "list", str(text))
        assert err == (
            f"stageflow: error: run store {str(text)!r} is not a stageflow run store: it is not a readable "
            "SQLite database (file is not a database); pass the path of a new file (or of one an earlier "
            "SQLiteRunStore created), or move this file away\n"
        )

    @pytest.mark.parametrize(("value", "message"), [("0", "at least 1"), ("x", "at least 1")], ids=["0", "x"])
    def test_bad_limit(self, capsys: pytest.CaptureFixture[str], db: str, value: str, message: str) -> None:
        """A limit that is not a positive whole number is a usage error."""
        err = cli_error(capsys, "runs", "list", db, "--limit", value, status=2)
        assert f"argument --limit: must be a whole number of {message}, got {value!r}" in err


class TestGraph:
    def test_mermaid(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        """``graph MODULE:PIPELINE`` prints the pipeline's Mermaid flowchart."""
        monkeypatch.chdir(ROOT)
        pipeline = importlib.import_module("examples.voice_pipeline").PIPELINE
        assert run_cli(capsys, "graph", "examples.voice_pipeline:PIPELINE") == (0, pipeline.to_mermaid(), "")

    def test_svg_of_a_factory(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A function returning a pipeline works too; ``--format svg -o`` writes a valid SVG file."""
        out_file = tmp_path / "demo.svg"
        status, out, _ = run_cli(
            capsys,
            "graph",
            "stageflow_otel._demo:build_demo_pipeline",
            "--format",
            "svg",
            "-o",
            str(out_file),
        )
        assert (status, out) == (0, f"wrote {out_file}\n")
        svg = ET.parse(out_file).getroot()
        assert svg.tag == f"{SVG}svg"
        nodes = [g.get("data-stage") for g in svg.iter(f"{SVG}g")]
        assert nodes == ["stt", "enrich", "memory", "search", "personalize", "llm", "guard", "tts"]
        edges = sorted(
            (p.get("data-from"), p.get("data-to")) for p in svg.iter(f"{SVG}path") if p.get("data-to")
        )
        assert ("stt", "enrich") in edges and ("llm", "guard") in edges

    @pytest.mark.parametrize(
        ("target", "message"),
        [
            ("examples.voice_pipeline", "is not MODULE:ATTRIBUTE; write it like 'myapp.pipelines:PIPELINE'"),
            ("no_such_module_xyz:P", "cannot import module 'no_such_module_xyz' of 'no_such_module_xyz:P'"),
            (
                "examples.voice_pipeline:NOPE",
                "'examples.voice_pipeline' has no attribute 'NOPE'; pipelines it defines: ['PIPELINE']",
            ),
            ("examples.voice_pipeline:stt", "is a function that needs arguments; name a Pipeline"),
            ("examples.voice_pipeline:asyncio", "is a module, not a Pipeline or StageGraph"),
        ],
        ids=["no-colon", "no-module", "no-attribute", "needs-arguments", "not-a-pipeline"],
    )
    def test_bad_targets(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, target: str, message: str
    ) -> None:
        """A target that is not a pipeline gets an error saying what is wrong."""
        monkeypatch.chdir(ROOT)
        err = cli_error(capsys, "graph", target)
        assert message in err


HOSTILE = RunRecord(
    "eeee0005\x1b]0;owned\x07",
    "voice\x1b[2J",
    "failed",
    T0,
    T0 + 0.5,
    (
        StageRecord("stt\r", "transform", "ok", T0, T0 + 0.25, 0.0, 1),
        StageRecord(
            "llm\ncompleted",
            "agent",
            "fail",
            T0 + 0.25,
            T0 + 0.5,
            0.0,
            1,
            "boom\x1b]52;c;ZXZpbA==\x07\x9b2K",
            "RuntimeError",
            ("stt\r",),
        ),
    ),
    ("stt\r", "llm\ncompleted"),
    "llm\ncompleted: RuntimeError: boom\x1b]52;c;ZXZpbA==\x07\x9b2K",
)


@pytest.fixture(name="hostile_db")
def _hostile_db(tmp_path: Path) -> str:
    async def fill() -> None:
        store = SQLiteRunStore(tmp_path / "hostile.db")
        await store.record_run(HOSTILE)
        store.close()

    asyncio.run(fill())
    return str(tmp_path / "hostile.db")


class TestHostileText:
    def test_list_escapes_control_characters(
        self, capsys: pytest.CaptureFixture[str], hostile_db: str
    ) -> None:
        """``runs list`` prints stored ids, names and paths with control characters escaped."""
        status, out, _ = run_cli(capsys, "runs", "list", hostile_db)
        assert (status, out.splitlines()) == (
            0,
            [
                "id                        pipeline      status  result  start                duration"
                "  critical path",
                "eeee0005\\x1b]0;owned\\x07  voice\\x1b[2J  failed  -       2026-05-28 20:26:40  500.0 ms"
                "  stt\\r → llm\\ncompleted",
            ],
        )

    def test_show_escapes_control_characters(
        self, capsys: pytest.CaptureFixture[str], hostile_db: str
    ) -> None:
        """``runs show --color never`` writes no control character a stage name or message held."""
        status, out, _ = run_cli(
            capsys, "runs", "show", hostile_db, "eeee", "--color", "never", "--width", "10"
        )
        assert (status, out.splitlines()) == (
            0,
            [
                "pipeline 'voice\\x1b[2J' · run eeee0005\\x1b]0;owned\\x07 · failed in 500.0 ms",
                "    stage           0 500.0 ms      wait       run",
                "  * stt\\r           █████         0.0 ms  250.0 ms",
                "  * llm\\ncompleted       ✗✗✗✗✗    0.0 ms  250.0 ms  failed: RuntimeError: "
                "boom\\x1b]52;c;ZXZpbA==\\x07\\x9b2K",
                "  critical path (*): stt\\r → llm\\ncompleted",
                "  error: llm\\ncompleted: RuntimeError: boom\\x1b]52;c;ZXZpbA==\\x07\\x9b2K",
            ],
        )

    @pytest.mark.parametrize(
        ("module", "source", "error"),
        [
            (
                "hostile_import_mod",
                'raise ImportError("needs lib\\x1b]0;owned\\x07")\n',
                "cannot import module 'hostile_import_mod' of 'hostile_import_mod:P': "
                "needs lib\\x1b]0;owned\\x07",
            ),
            (
                "raising_mod",
                'raise ValueError("bad setting")\n',
                "importing module 'raising_mod' of 'raising_mod:P' raised ValueError: bad setting; "
                "fix the module (run 'python -c \"import raising_mod\"' to see the traceback)",
            ),
        ],
        ids=["error-messages-are-escaped", "raising-on-import-is-an-error-not-a-traceback"],
    )
    def test_a_module_that_fails_to_import_is_an_error(
        self,
        capsys: pytest.CaptureFixture[str],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        module: str,
        source: str,
        error: str,
    ) -> None:
        """A module that cannot be imported, or raises on import, is an error naming it, not a traceback; an
        error message carrying the module's own text prints its control characters escaped."""
        importable_module(tmp_path, monkeypatch, module, source)
        assert run_cli(capsys, "graph", f"{module}:P") == (1, "", f"stageflow: error: {error}\n")

    def test_a_line_break_in_a_name_keeps_the_mermaid_label_on_one_line(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        importable_module(
            tmp_path,
            monkeypatch,
            "newline_graph_mod",
            "from stageflow import Pipeline, StageKind, StageOutput\n"
            "async def run(ctx): return StageOutput.ok()\n"
            "P = Pipeline(name='p').with_stage('a\\nb\\r\"c', run, StageKind.WORK)\n",
        )
        run_cli(capsys, "graph", "newline_graph_mod:P", "-o", str(tmp_path / "g.mmd"))
        assert (tmp_path / "g.mmd").read_text() == 'flowchart TD\n    s0["a#10;b#13;#quot;c<br/>work"]\n'

    def test_graph_on_stdout_escapes_control_characters(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``graph`` writing to the terminal escapes a stage name's ESC; written to a file it is kept."""
        importable_module(
            tmp_path,
            monkeypatch,
            "hostile_graph_mod",
            "from stageflow import Pipeline, StageKind, StageOutput\n"
            "async def run(ctx): return StageOutput.ok()\n"
            "P = Pipeline(name='p').with_stage('a\\x1b[2J\\x07', run, StageKind.WORK)\n",
        )
        assert run_cli(capsys, "graph", "hostile_graph_mod:P") == (
            0,
            'flowchart TD\n    s0["a\\x1b[2J\\x07<br/>work"]\n',
            "",
        )
        run_cli(capsys, "graph", "hostile_graph_mod:P", "-o", str(tmp_path / "g.mmd"))
        assert (tmp_path / "g.mmd").read_text() == 'flowchart TD\n    s0["a\x1b[2J\x07<br/>work"]\n'
