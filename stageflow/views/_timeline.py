"""Text Gantt charts of runs: ``RunResult.timeline()`` and ``stageflow runs show``.

One line per stage on a shared time axis: ``─`` while the stage waited (ready → start), ``░`` while a sync
stage's work went to its executor and back (its dispatch time), then its run (start → end) drawn by status
(``█`` ok, ``✗`` failed, ``·`` skipped, ``▒`` cancelled), with ``┃`` at a streaming stage's first chunk;
a ``dispatch`` column appears when a stage has one. Stages on the critical path are marked ``*``;
failures, skips, timeouts and cancellations carry their reason. Names, reasons, messages, the run id and
the status are printed through ``terminal_safe``: control characters show as escapes, and each stage
stays one line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from stageflow._errors import error_type_name
from stageflow._reporting import stage_note
from stageflow._results import format_seconds
from stageflow._terminal import terminal_safe

if TYPE_CHECKING:
    from stageflow._results import RunResult
    from stageflow._store import RunRecord

__all__ = (
    "DEFAULT_WIDTH",
    "TimelineRow",
    "outcome_detail",
    "outcome_note",
    "outcome_word",
    "record_rows",
    "render_timeline",
    "run_outcome",
    "timeline_of_record",
    "timeline_of_result",
    "use_color",
)

DEFAULT_WIDTH = 40
"""Characters of the time axis."""

_WAIT = "─"
_DISPATCH = "░"
_FIRST = "┃"
_RUN = {"ok": "█", "fail": "✗", "skip": "·", "cancel": "▒"}
_RESET = "\033[0m"
_COLOR = {"ok": "\033[32m", "fail": "\033[31m", "skip": "\033[2m", "cancel": "\033[33m", "wait": "\033[2m"}
_BOLD = "\033[1m"


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One stage of a timeline. Times are seconds on any clock shared by the run's rows.

    ``start``/``end`` are ``None`` for a stage that never started. ``dispatch`` is the part of
    ``start``→``end`` the stage's work spent going to its executor and back.
    """

    name: str
    status: str
    ready: float | None
    start: float | None
    end: float | None
    note: str = ""
    dispatch: float = 0.0
    first: float | None = None
    """A streaming stage's first chunk (marked ``┃`` on its bar), else ``None``."""
    category: str | None = None
    """The stage's outcome category (``StageResult.category``, ``StageRecord.category``); it picks the word
    that says what happened (``outcome_word``). ``None`` for a stage that never started, or a record made
    without one (then the status picks it)."""


def use_color(stream: IO[str] | None = None) -> bool:
    """Whether to colour ``stream`` (default stdout): a TTY, with ``NO_COLOR`` unset and ``TERM`` not dumb."""
    stream = sys.stdout if stream is None else stream
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def _paint(text: str, code: str, color: bool) -> str:
    return f"{code}{text}{_RESET}" if color and text else text


_WORDS = {
    "success": "",
    "failure": "failed",
    "error": "error",
    "timeout": "timed out",
    "cancellation": "cancelled",
    "skip": "skipped",
}
_STATUS_WORDS = {"ok": "", "fail": "failed", "skip": "skipped", "cancel": "cancelled"}


def outcome_word(category: str | None, status: str) -> str:
    """What every view calls a stage's outcome: by its category ``failed`` (failure), ``error``,
    ``timed out``, ``cancelled``, ``skipped`` (conditional skips and fallbacks alike), or nothing for a
    success; by its status when it has no category (a record made without one)."""
    if category is not None and str(category) in _WORDS:
        return _WORDS[str(category)]
    return _STATUS_WORDS.get(status, status)


def outcome_detail(category: str | None, status: str, error: str | None, error_type: str | None) -> str:
    """What every view says after ``outcome_word``: ``Type: message`` for a failure or an error, the
    message of a timeout, the reason of a skip or a cancellation (``error`` holds it), else nothing."""
    if not error:
        return ""
    word = outcome_word(category, status)
    if word in ("failed", "error") and error_type:
        return f"{error_type}: {error}"
    return error if word else ""


def outcome_note(category: str | None, status: str, error: str | None, error_type: str | None) -> str:
    """``outcome_word`` and ``outcome_detail`` as the timelines print them: ``timed out: late``."""
    word = outcome_word(category, status)
    detail = outcome_detail(category, status, error, error_type)
    return f"{word}: {detail}" if word and detail else word


_RUN_STATUS = {
    "success": "completed",
    "cancellation": "cancelled",
    "failure": "failed",
    "error": "failed",
    "timeout": "failed",
}
"""A run's status by its category (``RunResult`` has no status of its own: it is what the category says)."""


def run_outcome(status: str, result: str | None) -> str:
    """What every view calls a run: its status, and for a failed run its result beside it
    (``failed (timeout)``); a completed run's result is always ``success`` and a cancelled one's
    ``cancellation``, so theirs are not repeated."""
    if status == "failed" and result is not None:
        return f"{status} ({result})"
    return status


def render_timeline(
    *,
    pipeline: str,
    run_id: str,
    status: str,
    start: float,
    end: float,
    rows: Sequence[TimelineRow],
    critical_path: Sequence[str],
    width: int = DEFAULT_WIDTH,
    color: bool = False,
    result: str | None = None,
) -> str:
    """The text Gantt chart of one run.

    Args:
        pipeline: the pipeline's name.
        run_id: the run id.
        status: how the run ended (``completed``, ``failed``, ``cancelled``).
        result: the run's outcome category; a failed run's (``failure``, ``error`` or ``timeout``) is
            shown beside its status: ``failed (timeout)``.
        start: the run's start, on the rows' clock.
        end: the run's end, on the rows' clock.
        rows: the stages, in the order to draw them.
        critical_path: the run's critical path (those stages get ``*``).
        width: characters of the time axis (at least 10).
        color: add ANSI colours (``use_color()`` tells whether a stream wants them).

    Raises:
        ValueError: ``width`` is below 10.
    """
    if width < 10:
        msg = f"timeline width must be at least 10 characters, got {width!r}"
        raise ValueError(msg)
    total = end - start
    scale = width / total if total > 0 else 0.0
    on_path = set(critical_path)
    shown = {r.name: terminal_safe(r.name) for r in rows}
    name_width = max([5, *(len(name) for name in shown.values())])

    def column(t: float) -> int:
        return min(width, max(0, round((t - start) * scale)))

    took = format_seconds(max(total, 0.0))
    said = run_outcome(status, result)
    outcome = _paint(terminal_safe(said), _COLOR["fail"], color and status == "failed")
    dispatched = any(r.dispatch > 0 for r in rows)
    extra = f"  {'dispatch':>8}" if dispatched else ""
    lines = [
        f"pipeline {pipeline!r} · run {terminal_safe(run_id)} · {outcome} in {took}",
        f"    {'stage':<{name_width}}  {'0':<{width - len(took)}}{took}  {'wait':>8}{extra}  {'run':>8}",
    ]
    for r in rows:
        mark = "*" if r.name in on_path else " "
        name = _paint(f"{shown[r.name]:<{name_width}}", _BOLD, color and r.name in on_path)
        note = terminal_safe(r.note)
        if r.start is None or r.end is None:
            blank = f"  {'':>8}" if dispatched else ""
            lines.append(f"  {mark} {name}  {'':<{width}}  {'':>8}{blank}  {'':>8}  {note or 'not started'}")
            continue
        ready = r.start if r.ready is None else min(r.ready, r.start)
        a, b = column(ready), column(r.start)
        c = max(column(r.end), b + 1)
        if c > width:
            b, c = width - 1, width
            a = min(a, b)
        glyph = _RUN.get(r.status, "█")
        dispatch = min(max(r.dispatch, 0.0), max(r.end - r.start, 0.0))
        d = min(max(column(r.start + dispatch), b), c - 1) if dispatch > 0 else b
        painted = _COLOR.get(r.status, "")
        if r.first is None:
            run_part = _paint(glyph * (c - d), painted, color)
        else:  # the first chunk's column, within the run
            f = min(max(column(r.first), d), c - 1)
            run_part = (
                _paint(glyph * (f - d), painted, color)
                + _paint(_FIRST, _BOLD, color)
                + _paint(glyph * (c - f - 1), painted, color)
            )
        bar = (
            " " * a
            + _paint(_WAIT * (b - a), _COLOR["wait"], color)
            + _paint(_DISPATCH * (d - b), _COLOR["wait"], color)
            + run_part
            + " " * (width - c)
        )
        wait = format_seconds(max(r.start - ready, 0.0))
        ran = format_seconds(max(r.end - r.start - dispatch, 0.0))
        sent = f"  {format_seconds(dispatch):>8}" if dispatched else ""
        line = f"  {mark} {name}  {bar}  {wait:>8}{sent}  {ran:>8}"
        if note:
            line += "  " + _paint(note, _COLOR.get(r.status, ""), color)
        lines.append(line)
    if critical_path:
        lines.append("  critical path (*): " + " → ".join(terminal_safe(name) for name in critical_path))
    return "\n".join(lines)


def _ordered(rows: Iterable[TimelineRow]) -> list[TimelineRow]:
    started = sorted((r for r in rows if r.start is not None), key=lambda r: (r.start, r.name))
    return started + [r for r in rows if r.start is None]


def timeline_of_result(results: RunResult, *, width: int = DEFAULT_WIDTH, color: bool | None = None) -> str:
    """The timeline of a ``RunResult`` (see ``RunResult.timeline``)."""
    rows: list[TimelineRow] = []
    for name, r in results.items():
        error_type = None if r.error is None else error_type_name(r.error)
        note = outcome_note(r.category, r.status.value, stage_note(r), error_type)
        rows.append(
            TimelineRow(
                name,
                r.status.value,
                r.ready_at,
                r.started_at,
                r.ended_at,
                note,
                r.dispatch,
                r.first_chunk_at,
                r.category,
            )
        )
    status = _RUN_STATUS[results.category]
    return _run_timeline(
        results, results.pipeline_name, status, rows, width, use_color() if color is None else color
    )


def record_rows(record: RunRecord) -> list[TimelineRow]:
    """The rows of the stages a ``RunRecord`` holds, noted as ``outcome_note`` says (in stored order)."""
    return [
        TimelineRow(
            s.name,
            s.status,
            s.started_at - s.wait,
            s.started_at,
            s.ended_at,
            outcome_note(s.category, s.status, s.error, s.error_type),
            s.dispatch,
            s.first_chunk_at,
            s.category,
        )
        for s in record.stages
    ]


def timeline_of_record(record: RunRecord, *, width: int = DEFAULT_WIDTH, color: bool = False) -> str:
    """The timeline of a stored ``RunRecord`` (``stageflow runs show``)."""
    return _run_timeline(record, record.pipeline, record.status, record_rows(record), width, color)


def _run_timeline(
    run: RunResult | RunRecord, pipeline: str, status: str, rows: list[TimelineRow], width: int, color: bool
) -> str:
    """The timeline of a run, given its stages' rows: the stages that never started (a failed or cancelled
    run) are drawn too, so every stage the graph declares is."""
    never_started = [TimelineRow(name, "", None, None, None) for name in run.not_started]
    return render_timeline(
        pipeline=pipeline,
        run_id=str(run.run_id),
        status=status,
        result=run.category,
        start=run.started_at,
        end=run.ended_at,
        rows=_ordered([*rows, *never_started]),
        critical_path=run.critical_path,
        width=width,
        color=color,
    )
