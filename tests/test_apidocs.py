"""The API reference builds from the docstrings, and a reference to a name that does not exist fails it."""

from __future__ import annotations

import pytest

pytest.importorskip("pdoc")
pytest.importorskip("opentelemetry.sdk")

from pathlib import Path

from tests.apidocs import MODULES, _broken, _our_names, build, main


class TestApiReference:
    def test_builds_without_problems(self, tmp_path: Path) -> None:
        """Every public module gets a page, and no docstring refers to a missing name."""
        assert build(tmp_path) == []
        pages = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.html")}
        assert pages == {"index.html", *(m.replace(".", "/") + ".html" for m in MODULES)}
        page = (tmp_path / "stageflow.html").read_text(encoding="utf-8")
        assert 'id="RunResult.timeline"' in page and 'id="StageGraph.run"' in page

    @pytest.mark.parametrize(
        ("span", "broken"),
        [
            ("<code>RunResult.timelines</code>", ["RunResult.timelines"]),
            ("<code>stageflow.testing.nope</code>", ["stageflow.testing.nope"]),
            ("<code>stageflow.Nope</code>", ["stageflow.Nope"]),
            ("<code>RunResult.timeline()</code>", []),
            ("<code>stageflow.testing.run_graph</code>", []),
            ("<code>stageflow.stage.duration</code>", []),
            ("<code>ctx.data</code>", []),
        ],
        ids=[
            "bad-attribute",
            "bad-module-member",
            "bad-top-level",
            "method",
            "function",
            "telemetry",
            "local",
        ],
    )
    def test_broken_reference_detection(self, span: str, broken: list[str]) -> None:
        """Code spans naming a missing attribute or member of ours are broken; other code is not."""
        assert _broken(span, _our_names()) == broken

    def test_command_exits_0_and_names_the_index(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``python -m tests.apidocs DIR`` writes the reference and prints where."""
        assert main([str(tmp_path / "api")]) == 0
        assert capsys.readouterr().out == f"API reference: {tmp_path / 'api' / 'index.html'}\n"
