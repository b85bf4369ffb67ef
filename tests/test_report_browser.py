"""The HTML report in a real headless Chromium: it renders, quietly, offline, with what it promises."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from stageflow._cli import main

from ._chromium import Chromium, chromium_path
from ._runs_store import RECORDS, write_store

CHROMIUM = chromium_path()
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(name="browser", scope="module")
def _browser() -> Iterator[Chromium]:
    assert CHROMIUM is not None, "CI must install Chromium (.ci/run: apt-get install chromium)"
    with Chromium(CHROMIUM) as browser:
        yield browser


@pytest.fixture(name="report", scope="module")
def _report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    db = write_store(folder / "runs.db")
    out = folder / "report.html"
    assert main(["report", str(db), "--output", str(out)]) == 0
    return out


def count(browser: Chromium, selector: str) -> int:
    value = browser.evaluate(f"document.querySelectorAll({selector!r}).length")
    assert isinstance(value, int)
    return value


class TestReportInChromium:
    def test_renders_with_no_console_errors_and_no_network(self, browser: Chromium, report: Path) -> None:
        """Opened from file://, the page logs nothing and requests nothing but itself."""
        load = browser.load(report.as_uri())
        assert load.console == []
        assert load.requests == [report.as_uri()]

    def test_expected_elements(self, browser: Chromium, report: Path) -> None:
        """Both pipelines, both DAGs, a Gantt per run, the failed bar and the stats rows are in the DOM."""
        browser.load(report.as_uri())
        assert [count(browser, s) for s in ("section.pipeline", "svg.dag", "svg.gantt", "div.run")] == [
            2,
            2,
            4,
            4,
        ]
        failed = f"#run-{RECORDS[2].run_id} rect.run.fail.critical"
        assert count(browser, failed) == 1
        assert browser.evaluate(f"document.querySelector({failed!r}).querySelector('title').textContent") == (
            "llm: fail, ran 200.0 ms (from 80.0 ms to 280.0 ms), waited 10.0 ms; "
            "StageTimeoutError: stage 'llm' timed out after 0.2 s"
        )
        assert count(browser, "rect.run.skip") == 1
        assert count(browser, "#pipeline-voice g.node.critical") == 3  # the latest voice run's path
        rows = browser.evaluate(
            "[...document.querySelectorAll('#pipeline-voice table.stats tbody tr')]"
            ".map(r => [...r.cells].map(c => c.textContent))"
        )
        assert rows[3] == [
            "llm",
            "3",
            "1",
            "0",
            "100.0 ms",
            "190.0 ms",
            "198.0 ms",
            "10.0 ms",
            "10.0 ms",
            "10.0 ms",
            "3 (100%)",
            "60%",
        ]

    def test_every_drawing_has_a_size_on_screen(self, browser: Chromium, report: Path) -> None:
        """Every SVG lays out with a positive size, and every run bar is at least a pixel wide."""
        browser.load(report.as_uri())
        sizes = browser.evaluate(
            "[...document.querySelectorAll('svg')].map(s => { const b = s.getBoundingClientRect();"
            " return [b.width > 100, b.height > 20]; })"
        )
        assert sizes == [[True, True]] * 6
        assert browser.evaluate(
            "[...document.querySelectorAll('rect.run')].every(r => r.getBoundingClientRect().width >= 1)"
        )

    def test_screenshot(self, browser: Chromium, report: Path, tmp_path: Path) -> None:
        """A full-page PNG screenshot of the report is produced."""
        browser.load(report.as_uri())
        shot = browser.screenshot(tmp_path / "report.png")
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 700 and height >= 1000

    def test_the_harness_sees_errors_and_requests(self, browser: Chromium, tmp_path: Path) -> None:
        """A page with a console error, an exception and a remote image is reported as such."""
        page = tmp_path / "bad.html"
        page.write_text(
            "<html><body><script>console.error('oops'); missing();</script>"
            '<img src="http://127.0.0.1:9/x.png"></body></html>'
        )
        load = browser.load(page.as_uri())
        assert "error: oops" in load.console
        assert any(
            line.startswith("exception: ReferenceError: missing is not defined") for line in load.console
        )
        assert load.requests == [page.as_uri(), "http://127.0.0.1:9/x.png"]
