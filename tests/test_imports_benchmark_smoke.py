"""Keeps the import benchmark (tests/benchmarks/imports.py) from rotting: its smallest run.

The baseline is a stand-in package written here (no download); asserts the report's structure and where
each import came from, never a duration or a ratio.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks import imports


@pytest.fixture(name="baseline", scope="module")
def _baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose ``stageflow`` package imports two modules of its own and ``json``."""
    root = tmp_path_factory.mktemp("baseline")
    package = root / "stageflow"
    package.mkdir()
    (package / "__init__.py").write_text("import json\nfrom . import core\n", encoding="utf-8")
    (package / "core.py").write_text("VALUE = 1\n", encoding="utf-8")
    return root


@pytest.fixture(name="report", scope="module")
def _report(baseline: Path) -> dict[str, Any]:
    return imports.run_benchmark(imports.Settings.smallest(), baseline=baseline)


class TestImportsBenchmark:
    def test_each_side_imports_its_own_package(self, report: dict[str, Any], baseline: Path) -> None:
        """Ours comes from the checkout, the baseline from its directory, each with its own modules."""
        assert Path(report["ours"]["file"]) == imports.REPOSITORY / "stageflow" / "__init__.py"
        assert Path(report["baseline"]["file"]) == baseline / "stageflow" / "__init__.py"
        assert report["baseline"]["own_modules"] == ["stageflow", "stageflow.core"]
        assert "stageflow._context" in report["ours"]["own_modules"]
        assert report["baseline"]["modules"] >= 3

    def test_figures_and_ratios(self, report: dict[str, Any]) -> None:
        """Medians and minimums for both sides; the ratios divide ours by the baseline's."""
        us, them = report["ours"], report["baseline"]
        assert 0 < us["min_ms"] <= us["median_ms"] and 0 < them["min_ms"] <= them["median_ms"]
        assert report["ratio_median"] == pytest.approx(us["median_ms"] / them["median_ms"])
        assert report["ratio_min"] == pytest.approx(us["min_ms"] / them["min_ms"])
        assert report["ratio_paired_median"] > 0
        assert (report["target"], report["meets_target"]) == (
            imports.TARGET,
            report["ratio_median"] <= imports.TARGET,
        )
        assert report["meta"]["settings"] == {"reps": 2, "warmup": 1}
        assert report["asyncio"]["own_modules"][0] == "asyncio" and report["asyncio"]["min_ms"] > 0
        assert report["ratio_asyncio"] == pytest.approx(report["asyncio"]["median_ms"] / them["median_ms"])

    def test_a_directory_without_the_package_is_refused(self, tmp_path: Path) -> None:
        """A baseline directory that does not hold stageflow would measure something else: refused."""
        with pytest.raises(RuntimeError, match="loaded "):
            imports.measure_once(tmp_path)

    def test_format_report_and_the_json_cli(
        self, report: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The text names both packages and the ratio; ``--json`` writes the document without measuring."""
        text = imports.format_report(report)
        assert (
            "this checkout" in text and "stageflow-core 0.9.1" in text and "asyncio (for reference)" in text
        )
        assert f"ours / 0.9.1: {report['ratio_median']:.2f} (medians" in text
        monkeypatch.setattr(imports, "run_benchmark", lambda settings, **kw: report)
        out = tmp_path / "imports.json"
        assert imports.main(["--json", str(out), "--baseline", str(tmp_path)]) == 0
        assert json.loads(out.read_text(encoding="utf-8")) == json.loads(json.dumps(report))
