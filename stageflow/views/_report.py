"""A self-contained HTML report of stored runs (``stageflow report DB --output FILE.html``).

One file, no scripts, no network: inline CSS and inline SVG only, so it opens from ``file://`` and
offline. Per pipeline: the DAG, per-stage statistics across the runs (p50/p95/p99 run time and wait,
retries, critical-path share; dispatch time when a sync stage went to an executor; time to first chunk
when a stage streamed), the run's time to first output across the runs and where it went (when a run
streamed), a table of the runs, and per run a Gantt chart with what happened to every stage that failed,
was skipped or cancelled, or took more than one attempt.

Its size is bounded by the number of runs and stages, not by what they stored: a message (an error, a
skip or cancel reason) is cut after ``MESSAGE_LIMIT`` characters and any other stored text (names, ids,
kinds, error types) after ``NAME_LIMIT``, each with a visible marker saying how much was left out.

It is over 500 lines because the report is one self-contained document: its statistics, sections and
inline styles are generated together so that the page stays consistent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from html import escape

from stageflow._results import format_seconds
from stageflow._store import RunRecord, StageRecord

from ._svg import (
    CRITICAL_STROKE,
    DISPATCH_FILL,
    FIRST_CHUNK_STROKE,
    STATUS_STYLES,
    WAIT_FILL,
    DagNode,
    dag_nodes,
    dag_svg,
    gantt_svg,
)
from ._timeline import (
    TimelineRow,
    outcome_detail,
    outcome_word,
    record_rows,
    run_outcome,
)

__all__ = (
    "MESSAGE_LIMIT",
    "NAME_LIMIT",
    "FirstOutputStats",
    "FirstOutputStep",
    "StageStats",
    "bounded",
    "first_output_stats",
    "percentile",
    "render_report",
    "stage_stats",
)

MESSAGE_LIMIT = 1000
"""Characters of a stored message (error, skip or cancel reason) the report shows; the rest is cut."""
NAME_LIMIT = 200
"""Characters of any other stored text (pipeline, stage and error type names, run ids) the report shows."""

_CSS = (
    """
body { font-family: system-ui, sans-serif; margin: 1rem; color: #212121; max-width: 1100px;
  overflow-wrap: anywhere; }
@media (min-width: 700px) { body { margin: 2rem; } }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ccc; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; overflow-wrap: normal; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.path { min-width: 12rem; }
tr.failed td.status, tr.cancelled td.status { font-weight: bold; }
.run { margin: 1.5rem 0; } .run h3 { font-size: 1rem; margin-bottom: 0.3rem; }
.legend > span { margin-right: 1rem; white-space: nowrap; }
.swatch { display: inline-block; width: 0.9rem; height: 0.9rem;
  vertical-align: middle; margin-right: 0.3rem; border-radius: 2px; }
.error { font-family: monospace; }
.outcomes { margin: 0.3rem 0; padding-left: 1.2rem; font-size: 0.9rem; }
.outcomes .message { font-family: monospace; }
.first-output { margin: 0.3rem 0; font-size: 0.9rem; }
.not-started { color: #616161; }
"""
    + f"tr.failed td.status, .error {{ color: {STATUS_STYLES['fail'].text}; }}\n"
    + f"tr.cancelled td.status {{ color: {STATUS_STYLES['cancel'].text}; }}\n"
    + "".join(f".status-{status} {{ color: {style.text}; }}\n" for status, style in STATUS_STYLES.items())
)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolating linearly between closest ranks.

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside 0-100.
    """
    if not values:
        msg = "percentile of no values"
        raise ValueError(msg)
    if not 0 <= q <= 100:
        msg = f"percentile must be between 0 and 100, got {q!r}"
        raise ValueError(msg)
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class StageStats:
    """One stage across a set of runs of one pipeline."""

    name: str
    runs: int
    """Runs in which the stage started (skipped ones included: see ``skipped``)."""
    failures: int
    retried: int
    """Runs in which the stage took more than one attempt."""
    duration_p50: float | None
    """Percentiles of the duration, like every percentile here over the runs in which the stage ran:
    started and was not skipped (a skip, conditional or a fallback, takes no time worth counting). ``None``
    when it was skipped in every run.

    .. versionchanged:: 0.11
        Over the runs in which the stage ran; skipped runs counted before.
    """
    duration_p95: float | None
    duration_p99: float | None
    wait_p50: float | None
    wait_p95: float | None
    wait_p99: float | None
    critical_runs: int
    """Runs whose critical path contains the stage."""
    critical_share: float
    """The stage's wait plus duration on critical paths, as a fraction of those runs' total duration."""
    run_p50: float | None = None
    """Percentiles of the run time: the duration less the dispatch time.

    .. versionadded:: 0.11
    """
    run_p95: float | None = None
    run_p99: float | None = None
    dispatch_p50: float | None = None
    """Percentiles of the dispatch time (a sync stage's work going to its executor and back).

    .. versionadded:: 0.11
    """
    dispatch_p95: float | None = None
    dispatch_p99: float | None = None
    dispatched: int = 0
    """Runs in which the stage's work went to an executor (its dispatch time is above zero).

    .. versionadded:: 0.11
    """
    streamed: int = 0
    """Runs in which the stage yielded at least one chunk.

    .. versionadded:: 0.11
    """
    ttfc_p50: float | None = None
    """Percentiles of the time to first chunk across the runs in which the stage streamed, else ``None``.

    .. versionadded:: 0.11
    """
    ttfc_p95: float | None = None
    ttfc_p99: float | None = None
    skipped: int = 0
    """Runs in which the stage was skipped: conditionally, or by an interceptor's fallback (its reason
    says which).

    .. versionadded:: 0.11
    """


def _percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    return percentile(values, 50), percentile(values, 95), percentile(values, 99)


def _maybe_percentiles(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    return _percentiles(values) if values else (None, None, None)


def stage_stats(records: Iterable[RunRecord]) -> list[StageStats]:
    """Per-stage statistics across ``records`` (runs of one pipeline), in first-seen stage order.

    Times are over the runs in which each stage ran (``StageStats.duration_p50``); skips are counted.
    """
    started: dict[str, int] = {}
    skipped: dict[str, int] = {}
    durations: dict[str, list[float]] = {}
    waits: dict[str, list[float]] = {}
    runs: dict[str, list[float]] = {}
    dispatches: dict[str, list[float]] = {}
    ttfcs: dict[str, list[float]] = {}
    failures: dict[str, int] = {}
    retried: dict[str, int] = {}
    critical: dict[str, int] = {}
    critical_time: dict[str, float] = {}
    total = 0.0
    for record in records:
        total += record.duration
        path = set(record.critical_path)
        for s in record.stages:
            started[s.name] = started.get(s.name, 0) + 1
            failures[s.name] = failures.get(s.name, 0) + (s.status == "fail")
            retried[s.name] = retried.get(s.name, 0) + (s.attempts > 1)
            if s.name in path:
                critical[s.name] = critical.get(s.name, 0) + 1
                critical_time[s.name] = critical_time.get(s.name, 0.0) + s.wait + s.ended_at - s.started_at
            if _skipped(s):
                skipped[s.name] = skipped.get(s.name, 0) + 1
                continue
            durations.setdefault(s.name, []).append(s.ended_at - s.started_at)
            waits.setdefault(s.name, []).append(s.wait)
            runs.setdefault(s.name, []).append(s.run_time)
            dispatches.setdefault(s.name, []).append(s.dispatch)
            if s.chunks and s.time_to_first_chunk is not None:
                ttfcs.setdefault(s.name, []).append(s.time_to_first_chunk)
    return [
        StageStats(
            name,
            count,
            failures[name],
            retried[name],
            *_maybe_percentiles(durations.get(name, ())),
            *_maybe_percentiles(waits.get(name, ())),
            critical.get(name, 0),
            critical_time.get(name, 0.0) / total if total > 0 else 0.0,
            *_maybe_percentiles(runs.get(name, ())),
            *_maybe_percentiles(dispatches.get(name, ())),
            sum(d > 0 for d in dispatches.get(name, ())),
            len(ttfcs.get(name, ())),
            *_maybe_percentiles(ttfcs.get(name, ())),
            skipped.get(name, 0),
        )
        for name, count in started.items()
    ]


def _skipped(stage: StageRecord) -> bool:
    """Whether the stage was skipped (its category, or its status in a record made without one)."""
    if stage.category is not None:
        return str(stage.category) == "skip"
    return stage.status == "skip"


@dataclass(frozen=True, slots=True)
class FirstOutputStep:
    """One stage on the runs' first-output paths: the seconds it contributed to the time to first output.

    .. versionadded:: 0.11
    """

    name: str
    runs: int
    """Runs whose first-output path passes through the stage."""
    p50: float
    p95: float
    p99: float
    share: float
    """The stage's seconds on those paths, as a fraction of the runs' total time to first output."""


@dataclass(frozen=True, slots=True)
class FirstOutputStats:
    """The time to first output across a set of runs of one pipeline, and where it went.

    .. versionadded:: 0.11
    """

    runs: int
    """Runs that had a first output."""
    p50: float
    p95: float
    p99: float
    steps: tuple[FirstOutputStep, ...]
    """The stages on the first-output paths, in the order of the most recent run's path, then first seen."""


def first_output_stats(records: Iterable[RunRecord]) -> FirstOutputStats | None:
    """The time to first output across ``records`` (runs of one pipeline, most recent first) and each
    stage's part of it; ``None`` when no run had a first output.

    .. versionadded:: 0.11
    """
    totals: list[float] = []
    parts: dict[str, list[float]] = {}
    for record in records:
        ttfo = record.time_to_first_output
        if ttfo is None:
            continue
        totals.append(ttfo)
        for name, seconds in record.first_output_path:
            parts.setdefault(name, []).append(seconds)
    if not totals:
        return None
    whole = sum(totals)
    steps = tuple(
        FirstOutputStep(name, len(values), *_percentiles(values), sum(values) / whole if whole > 0 else 0.0)
        for name, values in parts.items()
    )
    return FirstOutputStats(len(totals), *_percentiles(totals), steps)


_CUT_TAIL = " more characters not shown]"


def _cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and a marker saying how many more were left out.

    Text a store already cut ends with the same marker; the new one counts what both left out.
    """
    if len(text) <= limit:
        return text
    omitted = len(text) - limit
    if text.endswith(_CUT_TAIL):
        start = text.rfind("… [")
        earlier = text[start + 3 : -len(_CUT_TAIL)].replace(",", "")
        if start >= limit and earlier.isascii() and earlier.isdigit():
            omitted = start - limit + int(earlier)
    return f"{text[:limit]}… [{omitted:,}{_CUT_TAIL}"


def _cut_stage(s: StageRecord) -> StageRecord:
    return replace(
        s,
        name=_cut(s.name, NAME_LIMIT),
        kind=_cut(s.kind, NAME_LIMIT),
        status=_cut(s.status, NAME_LIMIT),
        error=None if s.error is None else _cut(s.error, MESSAGE_LIMIT),
        error_type=None if s.error_type is None else _cut(s.error_type, NAME_LIMIT),
        dependencies=tuple(_cut(d, NAME_LIMIT) for d in s.dependencies),
        work=None if s.work is None else _cut(s.work, NAME_LIMIT),
    )


def bounded(record: RunRecord) -> RunRecord:
    """``record`` as the report shows it: messages cut at ``MESSAGE_LIMIT``, other text at ``NAME_LIMIT``.

    A cut string ends with ``… [N more characters not shown]``.
    """
    return replace(
        record,
        run_id=_cut(record.run_id, NAME_LIMIT),
        pipeline=_cut(record.pipeline, NAME_LIMIT),
        status=_cut(record.status, NAME_LIMIT),
        stages=tuple(_cut_stage(s) for s in record.stages),
        critical_path=tuple(_cut(name, NAME_LIMIT) for name in record.critical_path),
        first_output_path=tuple((_cut(name, NAME_LIMIT), sec) for name, sec in record.first_output_path),
        error=None if record.error is None else _cut(record.error, MESSAGE_LIMIT),
        category=None if record.category is None else _cut(str(record.category), NAME_LIMIT),
        not_started=tuple(_cut(name, NAME_LIMIT) for name in record.not_started),
    )


def _rows(record: RunRecord) -> list[TimelineRow]:
    """The Gantt chart's rows: the stages by start, then the stages that never started."""
    rows = sorted(record_rows(record), key=lambda r: (r.start or 0.0, r.name))
    return rows + [TimelineRow(name, "", None, None, None) for name in record.not_started]


def _outcome(s: StageRecord) -> str:
    """One line on a stage that failed, was skipped or cancelled, or took more than one attempt."""
    style = STATUS_STYLES.get(s.status)
    said = escape(outcome_word(s.category, s.status) or (style.label if style else s.status))
    if s.attempts > 1:
        said += f" after {s.attempts} attempts"
    if s.work is not None:
        said += f" (its work {escape(s.work)})"
    message = outcome_detail(s.category, s.status, s.error, s.error_type)
    if message:
        said += f': <span class="message">{escape(message)}</span>'
    elif s.status in ("skip", "cancel"):
        said += " (no reason given)"
    return (
        f'<li data-stage="{escape(s.name)}"><strong>{escape(s.name)}</strong> '
        f'<span class="status-{escape(s.status)}">{said}</span></li>'
    )


def _outcomes(record: RunRecord) -> list[str]:
    """What happened to every stage of ``record`` that did not simply succeed on its first attempt, and
    the stages that never started."""
    notable = [s for s in record.stages if s.status != "ok" or s.attempts > 1 or s.work is not None]
    if not notable and not record.not_started:
        return []
    return [
        '<ul class="outcomes">',
        *(_outcome(s) for s in notable),
        *(
            f'<li data-stage="{escape(name)}"><strong>{escape(name)}</strong> '
            '<span class="not-started">not started</span></li>'
            for name in record.not_started
        ),
        "</ul>",
    ]


def _nodes_from_runs(records: Sequence[RunRecord]) -> list[DagNode]:
    """The DAG as the recorded runs saw it: every stage that ran, with its recorded dependencies."""
    nodes: dict[str, DagNode] = {}
    for record in records:  # most recent first: the latest topology wins
        for s in record.stages:
            nodes.setdefault(s.name, DagNode(s.name, s.kind, s.dependencies))
    return list(nodes.values())


def _slug(text: str) -> str:
    """``text`` reduced to characters safe in an HTML id and a URL fragment."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in text)


def _local(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"


def _seconds(value: float | None) -> str:
    return "–" if value is None else format_seconds(value)


def _stats_row(st: StageStats, runs: int, *, dispatched: bool, streamed: bool) -> str:
    numbers: tuple[float | None, ...] = (
        st.run_p50,
        st.run_p95,
        st.run_p99,
        st.wait_p50,
        st.wait_p95,
        st.wait_p99,
    )
    if dispatched:  # "–" for a stage that never went to an executor
        numbers += (st.dispatch_p50, st.dispatch_p95, st.dispatch_p99) if st.dispatched else (None,) * 3
    if streamed:
        numbers += (st.ttfc_p50, st.ttfc_p95, st.ttfc_p99)
    return (
        f'<tr data-stage="{escape(st.name)}"><td>{escape(st.name)}</td><td class="num">{st.runs}</td>'
        f'<td class="num">{st.failures}</td><td class="num">{st.skipped}</td>'
        f'<td class="num">{st.retried}</td>'
        + "".join(f'<td class="num">{_seconds(v)}</td>' for v in numbers)
        + f'<td class="num">{st.critical_runs} ({_pct(st.critical_runs / runs)})</td>'
        f'<td class="num">{_pct(st.critical_share)}</td></tr>'
    )


def _stats_head(*, dispatched: bool, streamed: bool) -> str:
    names = ["stage", "runs", "failed", "skipped", "retried", "run p50", "run p95", "run p99"]
    names += ["wait p50", "wait p95", "wait p99"]
    if dispatched:
        names += ["dispatch p50", "dispatch p95", "dispatch p99"]
    if streamed:
        names += ["TTFC p50", "TTFC p95", "TTFC p99"]
    names += ["on critical path", "share of run time on the critical path"]
    return "<thead><tr>" + "".join(f"<th>{name}</th>" for name in names) + "</tr></thead>"


def _first_output_section(stats: FirstOutputStats) -> list[str]:
    """The time to first output across the runs, and a table of where it went."""
    quantiles = ", ".join(
        f"p{q} {format_seconds(v)}" for q, v in ((50, stats.p50), (95, stats.p95), (99, stats.p99))
    )
    rows = [
        f'<tr data-step="{escape(step.name)}"><td>{escape(step.name)}</td><td class="num">{step.runs}</td>'
        + "".join(f'<td class="num">{format_seconds(v)}</td>' for v in (step.p50, step.p95, step.p99))
        + f'<td class="num">{_pct(step.share)}</td></tr>'
        for step in stats.steps
    ]
    return [
        "<h3>Time to first output</h3>",
        f"<p class=\"first-output\">From each run's start to its first output (the final stage's first "
        f"chunk, or its end when it does not stream), across {_count(stats.runs, 'run')}: {quantiles}.</p>",
        '<div class="scroll"><table class="first-output"><thead><tr><th>stage</th><th>runs</th>'
        "<th>p50</th><th>p95</th><th>p99</th><th>share of the time to first output</th></tr></thead>"
        "<tbody>",
        *rows,
        "</tbody></table></div>",
    ]


def _first_output_line(record: RunRecord) -> str:
    """Where one run's time to first output went."""
    ttfo = record.time_to_first_output
    if ttfo is None:
        return ""
    steps = " → ".join(f"{escape(name)} {format_seconds(sec)}" for name, sec in record.first_output_path)
    return f'<p class="first-output">Time to first output {format_seconds(ttfo)}: {steps}.</p>'


def _scroll(*html: str) -> list[str]:
    """``html`` in a box that scrolls sideways when it is wider than the page (a phone's screen)."""
    return ['<div class="scroll">', *html, "</div>"]


def _pipeline_section(index: int, name: str, records: Sequence[RunRecord], graph: object | None) -> list[str]:
    anchor = f"pipeline-{_slug(name)}"
    ok = sum(r.status == "completed" for r in records)
    durations = [r.duration for r in records]
    nodes = dag_nodes(graph) if graph is not None else _nodes_from_runs(records)
    source = "as declared" if graph is not None else "as recorded in the runs"
    dispatched = any(s.dispatch > 0 for r in records for s in r.stages)
    streamed = any(r.streamed for r in records)
    first_output = first_output_stats(records) if streamed else None
    out = [
        f'<section class="pipeline" id="{anchor}">',
        f"<h2>Pipeline {escape(name)}</h2>",
        f"<p>{_count(len(records), 'run')}, {ok} completed; run duration "
        + ", ".join(f"p{q} {format_seconds(percentile(durations, q))}" for q in (50, 95, 99))
        + ".</p>",
        f"<h3>DAG ({source}; the latest run's critical path highlighted)</h3>",
        *_scroll(
            dag_svg(nodes, title=f"pipeline {name}", highlight=records[0].critical_path, ident=f"dag{index}")
        ),
        "<h3>Stages across the runs</h3>",
        '<div class="scroll"><table class="stats">'
        + _stats_head(dispatched=dispatched, streamed=streamed)
        + "<tbody>",
    ]
    out.extend(
        _stats_row(st, len(records), dispatched=dispatched, streamed=streamed) for st in stage_stats(records)
    )
    out.append("</tbody></table></div>")
    if first_output is not None:
        out += _first_output_section(first_output)
    out += [
        "<h3>Runs</h3>",
        '<div class="scroll"><table class="runs"><thead><tr><th>id</th><th>status</th><th>result</th>'
        "<th>start</th>"
        f"<th>duration</th>{'<th>first output</th>' if streamed else ''}<th>critical path</th></tr></thead>"
        "<tbody>",
    ]
    for r in records:
        ttfo = r.time_to_first_output
        first = f'<td class="num">{_seconds(ttfo)}</td>' if streamed else ""
        out.append(
            f'<tr class="{escape(r.status)}">'
            f'<td><a href="#run-{_slug(r.run_id)}">{escape(r.run_id)}</a></td>'
            f'<td class="status">{escape(r.status)}</td><td class="result">{escape(r.category or "")}</td>'
            f'<td class="num">{_local(r.started_at)}</td>'
            f'<td class="num">{format_seconds(r.duration)}</td>{first}'
            f'<td class="path">{escape(" → ".join(r.critical_path))}</td></tr>'
        )
    out.append("</tbody></table></div>")
    for r in records:
        out += [
            f'<div class="run" id="run-{_slug(r.run_id)}">',
            f"<h3>Run {escape(r.run_id)} · {escape(run_outcome(r.status, r.category))} in "
            f"{format_seconds(r.duration)} · "
            f"{_local(r.started_at)}</h3>",
        ]
        if r.error:
            out.append(f'<p class="error">{escape(r.error)}</p>')
        if r.streamed:
            out.append(_first_output_line(r))
        out += _scroll(
            gantt_svg(
                _rows(r),
                start=r.started_at,
                end=r.ended_at,
                critical_path=r.critical_path,
                title=f"run {r.run_id} of {name}",
                attempts={s.name: s.attempts for s in r.stages},
                chunks={s.name: s.chunks for s in r.stages if s.chunks},
            )
        )
        out += [*_outcomes(r), "</div>"]
    out.append("</section>")
    return out


def _legend() -> str:
    swatch = '<span class="swatch" style="{}"></span>'
    entries = [f"{swatch.format(f'background:{WAIT_FILL}')}wait (ready → start)"]
    entries += [
        f'{swatch.format(f"background:{style.fill}")}<span class="status-{status}">{style.label}</span>'
        for status, style in STATUS_STYLES.items()
    ]
    entries.append(f"{swatch.format(f'background:{DISPATCH_FILL}')}dispatch (to the executor and back)")
    entries.append(f"{swatch.format(f'border:2px solid {CRITICAL_STROKE}')}critical path (*)")
    entries.append(
        f'<span class="swatch" style="width:3px;background:{FIRST_CHUNK_STROKE}"></span>first chunk (streams)'
    )
    return '<p class="legend">' + "".join(f"<span>{e}</span>" for e in entries) + "</p>"


def render_report(records: Sequence[RunRecord], *, graphs: Sequence[object] = (), source: str = "") -> str:
    """The HTML report of ``records`` (any order; shown most recent first, grouped by pipeline).

    Stored text is shown cut to ``MESSAGE_LIMIT``/``NAME_LIMIT`` characters (see ``bounded``), so the
    page's size depends on how many runs and stages it shows, not on what they stored.

    Args:
        records: the runs to show.
        graphs: ``StageGraph``s whose declared DAG to draw for the pipeline of the same name; other
            pipelines' DAGs are drawn from their runs' recorded dependencies.
        source: where the runs came from (shown in the heading).
    """
    by_pipeline: dict[str, list[RunRecord]] = {}
    for record in sorted(records, key=lambda r: r.started_at, reverse=True):
        shown = bounded(record)
        by_pipeline.setdefault(shown.pipeline, []).append(shown)
    declared = {_cut(str(getattr(g, "name", "")), NAME_LIMIT): g for g in graphs}
    title = f"stageflow runs{f' — {source}' if source else ''}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>{_count(len(records), 'run')} of {_count(len(by_pipeline), 'pipeline')}; "
        f"generated {_local(time.time())}.</p>",
        _legend(),
    ]
    if not records:
        out.append('<p class="empty">The store holds no runs yet.</p>')
    else:
        out.append("<ul>")
        out += [
            f'<li><a href="#pipeline-{_slug(name)}">{escape(name)}</a>: {_count(len(runs), "run")}</li>'
            for name, runs in by_pipeline.items()
        ]
        out.append("</ul>")
    for index, (name, runs) in enumerate(by_pipeline.items()):
        out += _pipeline_section(index, name, runs, declared.get(name))
    out.append("</body></html>")
    return "\n".join(out) + "\n"
