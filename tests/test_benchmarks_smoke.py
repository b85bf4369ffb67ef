"""Keeps the on-demand benchmark (tests/benchmarks/core.py) from rotting: run it at its smallest settings.

Asserts the report's structure only, never wall-clock figures.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

_PATH = Path(__file__).parent / "benchmarks" / "core.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_stageflow_bench_core", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def report(bench: ModuleType) -> dict[str, Any]:
    result: dict[str, Any] = bench.run_benchmarks(bench.Settings.smallest())
    return result


def test_report_has_every_section(report: dict[str, Any]) -> None:
    assert set(report) == {
        "meta",
        "shapes",
        "scaling",
        "diamond",
        "build",
        "memory",
        "interceptors",
        "notes",
        "targets",
    }
    json.dumps(report)  # the --json document is serialisable


def test_shape_rows(bench: ModuleType, report: dict[str, Any]) -> None:
    keys = {
        "shape",
        "size",
        "stages",
        "edges",
        "ours_ms",
        "baseline_ms",
        "ours_best_ms",
        "baseline_best_ms",
        "ours_us_per_stage",
        "baseline_us_per_stage",
        "ratio",
    }
    rows = report["shapes"]
    for row in rows:
        assert set(row) == keys
        assert row["ours_ms"] > 0 and row["baseline_ms"] > 0
    seen = {(r["shape"], r["size"]) for r in rows}
    sizes = bench.Settings.smallest().sizes
    for shape in bench.SHAPES:
        for size in sizes:
            expected = shape != "lattice" or size >= 2 * bench.LATTICE_WIDTH
            assert ((shape, size) in seen) == expected
    assert [s["shape"] for s in report["scaling"]] == list(bench.SHAPES)
    for s in report["scaling"]:
        assert isinstance(s["ours_exponent"], float)
        assert isinstance(s["ours_exponent_best"], float)


def test_other_sections(report: dict[str, Any]) -> None:
    assert [r["mode"] for r in report["diamond"]] == ["sequential", "concurrent"]
    for row in report["diamond"]:
        assert {"ours_us_per_run", "baseline_us_per_run", "ours_us_per_stage", "ratio"} <= set(row)
    assert {"with_stage_ms", "build_ms", "total_ms", "stages"} <= set(report["build"])
    assert {"ours_bytes_per_run", "baseline_bytes_per_run", "runs"} <= set(report["memory"])
    variants = [r["interceptors"] for r in report["interceptors"]]
    assert variants[:2] == ["none", "empty"]
    assert variants[2:] in ([], ["default_stack"])
    assert len(report["targets"]) == 5
    for target in report["targets"]:
        assert {"target", "value", "limit", "met"} <= set(target)


def test_table_and_json_cli(
    bench: ModuleType, report: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = bench.format_report(report)
    assert "ratio" in text and "targets:" in text
    out = tmp_path / "bench.json"
    assert bench.format_report(json.loads(json.dumps(report))) == text
    # the CLI path, without measuring again
    monkeypatch.setattr(bench, "run_benchmarks", lambda settings, log=None: report)
    assert bench.main(["--json", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["shapes"] == report["shapes"]
