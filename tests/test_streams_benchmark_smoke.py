"""Keeps the streaming benchmark (tests/benchmarks/streams.py) from rotting: its smallest settings.

Asserts the report's structure and the chunk counts, never a duration, a ratio or a memory figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks import streams


@pytest.fixture(name="report", scope="module")
def _report() -> dict[str, Any]:
    return streams.run_benchmark(streams.Settings.smallest())


class TestStreamsBenchmark:
    def test_the_per_chunk_figures_pair_every_variant_with_the_bare_pipe(
        self, report: dict[str, Any]
    ) -> None:
        """Each variant reports a median and a best µs per chunk; the ratios are against the bare queue."""
        per_chunk = report["per_chunk"]
        variants = {"graph", "bare", "bare_generator", "graph_collect"}
        assert (per_chunk["chunks"], per_chunk["buffer"]) == (100, 16)
        assert set(per_chunk["us_per_chunk"]) == set(per_chunk["best_us_per_chunk"]) == variants
        assert all(value > 0 for value in per_chunk["us_per_chunk"].values())
        assert per_chunk["target"] == streams.TARGET
        assert per_chunk["meets_target"] is (per_chunk["ratio"] <= streams.TARGET)
        assert min(per_chunk["ratio_bare_generator"], per_chunk["ratio_graph_collect"]) > 0

    def test_the_memory_run_moves_every_chunk_and_samples_along_the_way(self, report: dict[str, Any]) -> None:
        """Every chunk reaches the slow consumer, sampled 20 times, the producer held by the buffer."""
        memory = report["memory"]
        assert (memory["chunks"], memory["producer_chunks"], memory["samples"]) == (2_000, 2_000, 20)
        assert memory["max_producer_ahead"] <= memory["buffer"] + 1
        assert {
            "traced_first_tenth_bytes",
            "traced_last_tenth_bytes",
            "traced_growth_bytes",
            "traced_growth_bytes_per_1000_chunks",
            "traced_peak_bytes",
            "rss_first_tenth_bytes",
            "rss_growth_bytes",
            "wall_s",
        } < set(memory)
        json.dumps(report)

    def test_format_report_and_the_json_cli(
        self, report: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The text report names both benchmarks; ``--json`` writes the document without measuring again."""
        text = streams.format_report(report)
        assert "graph / bare: " in text and "memory, slow consumer, 2,000 chunks" in text
        monkeypatch.setattr(streams, "run_benchmark", lambda settings, log=None: report)
        out = tmp_path / "streams.json"
        assert streams.main(["--json", str(out)]) == 0
        assert json.loads(out.read_text(encoding="utf-8")) == json.loads(json.dumps(report))
