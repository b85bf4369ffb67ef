"""A known run store for the CLI and report tests: fixed runs with fixed times (Unix-epoch seconds)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from stageflow import RunRecord, SQLiteRunStore, StageRecord

__all__ = ("RECORDS", "STATS_COLUMNS", "STREAMED", "T0", "write_store")

STATS_COLUMNS = (
    "stage",
    "runs",
    "failed",
    "skipped",
    "retried",
    "run p50",
    "run p95",
    "run p99",
    "wait p50",
    "wait p95",
    "wait p99",
)
"""The first columns of the report's stage table, whatever the runs measured."""

T0 = 1_780_000_000.0
"""2026-05-28 20:26:40 UTC: the first run's start."""


def _voice(run_id: str, start: float, llm: float, *, fail: bool = False) -> RunRecord:
    stages: tuple[StageRecord, ...] = (
        StageRecord("stt", "transform", "ok", start, start + 0.03, 0.0, 1, category="success"),
        StageRecord(
            "memory",
            "enrich",
            "ok",
            start + 0.03,
            start + 0.07,
            0.0,
            1,
            dependencies=("stt",),
            category="success",
        ),
        StageRecord(
            "enrich",
            "enrich",
            "ok",
            start + 0.03,
            start + 0.05,
            0.0,
            1,
            dependencies=("stt",),
            category="success",
        ),
        StageRecord(
            "llm",
            "agent",
            "fail" if fail else "ok",
            start + 0.08,
            start + 0.08 + llm,
            0.01,
            1,
            "stage 'llm' timed out after 0.2 s" if fail else None,
            "StageTimeoutError" if fail else None,
            ("memory", "enrich"),
            category="timeout" if fail else "success",
        ),
    )
    if not fail:
        stages += (
            StageRecord(
                "tts",
                "transform",
                "ok",
                start + 0.08 + llm,
                start + 0.1 + llm,
                0.0,
                1,
                dependencies=("llm",),
                category="success",
            ),
        )
    end = stages[-1].ended_at
    return RunRecord(
        run_id,
        "voice",
        "failed" if fail else "completed",
        start,
        end,
        stages,
        ("stt", "memory", "llm") if fail else ("stt", "memory", "llm", "tts"),
        "llm: StageTimeoutError: stage 'llm' timed out after 0.2 s" if fail else None,
        category="timeout" if fail else "success",
        not_started=("tts",) if fail else (),
    )


RECORDS = (
    _voice("aaaa0001-0000-0000-0000-000000000001", T0, 0.05),
    _voice("aaaa0002-0000-0000-0000-000000000002", T0 + 60, 0.10),
    _voice("bbbb0003-0000-0000-0000-000000000003", T0 + 120, 0.2, fail=True),
    RunRecord(
        "cccc0004-0000-0000-0000-000000000004",
        "etl",
        "completed",
        T0 + 180,
        T0 + 180.5,
        (
            StageRecord("extract", "work", "ok", T0 + 180, T0 + 180.25, 0.0, 1, category="success"),
            StageRecord(
                "load",
                "work",
                "skip",
                T0 + 180.25,
                T0 + 180.5,
                0.0,
                1,
                dependencies=("extract",),
                category="skip",
            ),
        ),
        ("extract", "load"),
        category="success",
    ),
)
"""Three runs of ``voice`` (the third failed on a timeout: tts never started) and one of ``etl`` with a
skipped stage; every stage and run with the category the engine gives it."""


def _streamed(run_id: str, start: float, ttfc: float, embed: float, *, work: str | None = None) -> RunRecord:
    """A streaming voice run: ``embed`` is a sync stage (dispatch 0.02 s; ``work`` after a first attempt
    that timed out), ``llm`` streams 8 chunks, the first after ``ttfc``, and ``tts`` reads llm's stream
    and yields 4 chunks, the first after 0.01 s."""
    llm_start = start + 0.05 + embed
    first = llm_start + ttfc
    stages = (
        StageRecord("stt", "transform", "ok", start, start + 0.05, 0.0, 1, category="success"),
        StageRecord(
            "embed",
            "enrich",
            "ok",
            start + 0.05,
            start + 0.05 + embed,
            0.0,
            1 if work is None else 2,
            dependencies=("stt",),
            dispatch=0.02,
            work=work,
            category="success",
        ),
        StageRecord(
            "llm",
            "agent",
            "ok",
            llm_start,
            llm_start + 0.4,
            0.0,
            1,
            dependencies=("embed",),
            chunks=8,
            time_to_first_chunk=ttfc,
            category="success",
        ),
        StageRecord(
            "tts",
            "transform",
            "ok",
            first,
            llm_start + 0.45,
            0.0,
            1,
            dependencies=("llm",),
            chunks=4,
            time_to_first_chunk=0.01,
            category="success",
        ),
    )
    return RunRecord(
        run_id,
        "streaming",
        "completed",
        start,
        llm_start + 0.45,
        stages,
        ("stt", "embed", "llm", "tts"),
        first_output_path=(("stt", 0.05), ("embed", embed), ("llm", ttfc), ("tts", 0.01)),
        category="success",
    )


STREAMED = (
    _streamed("dddd0005-0000-0000-0000-000000000005", T0 + 240, 0.1, 0.06),
    _streamed("dddd0006-0000-0000-0000-000000000006", T0 + 300, 0.2, 0.1, work="stopped"),
    _streamed("dddd0007-0000-0000-0000-000000000007", T0 + 360, 0.3, 0.14),
)
"""Three runs of ``streaming`` (stt → embed, a sync stage → llm, streaming → tts, reading llm's stream);
in the second, embed's first attempt timed out (its work stopped) and its second succeeded."""


def write_store(path: Path, records: tuple[RunRecord, ...] = RECORDS) -> Path:
    """Write ``records`` (by default ``RECORDS``) into a new SQLite run store at ``path``."""

    async def fill() -> None:
        store = SQLiteRunStore(path)
        for record in records:
            await store.record_run(record)
        store.close()

    asyncio.run(fill())
    return path
