"""A self-contained HTML report of stored runs (``stageflow report DB --output FILE.html``).

One file, no scripts, no network: inline CSS and inline SVG only, so it opens from ``file://`` and
offline. Per pipeline: the DAG, per-stage statistics across the runs (p50/p95/p99 duration and wait,
retries, critical-path share), a table of the runs, and per run a Gantt chart with what happened to every
stage that failed, was skipped or cancelled, or took more than one attempt.

Its size is bounded by the number of runs and stages, not by what they stored: a message (an error, a
skip or cancel reason) is cut after ``MESSAGE_LIMIT`` characters and any other stored text (names, ids,
kinds, error types) after ``NAME_LIMIT``, each with a visible marker saying how much was left out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from html import escape

from ._store import RunRecord, StageRecord
from ._svg import CRITICAL_STROKE, STATUS_STYLES, WAIT_FILL, DagNode, dag_nodes, dag_svg, gantt_svg
from ._timeline import TimelineRow, format_seconds

__all__ = (
    "MESSAGE_LIMIT",
    "NAME_LIMIT",
    "StageStats",
    "bounded",
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
    """Runs in which the stage started."""
    failures: int
    retried: int
    """Runs in which the stage took more than one attempt."""
    duration_p50: float
    duration_p95: float
    duration_p99: float
    wait_p50: float
    wait_p95: float
    wait_p99: float
    critical_runs: int
    """Runs whose critical path contains the stage."""
    critical_share: float
    """The stage's wait plus duration on critical paths, as a fraction of those runs' total duration."""


def stage_stats(records: Iterable[RunRecord]) -> list[StageStats]:
    """Per-stage statistics across ``records`` (runs of one pipeline), in first-seen stage order."""
    durations: dict[str, list[float]] = {}
    waits: dict[str, list[float]] = {}
    failures: dict[str, int] = {}
    retried: dict[str, int] = {}
    critical: dict[str, int] = {}
    critical_time: dict[str, float] = {}
    total = 0.0
    for record in records:
        total += record.duration
        path = set(record.critical_path)
        for s in record.stages:
            durations.setdefault(s.name, []).append(s.ended_at - s.started_at)
            waits.setdefault(s.name, []).append(s.wait)
            failures[s.name] = failures.get(s.name, 0) + (s.status == "fail")
            retried[s.name] = retried.get(s.name, 0) + (s.attempts > 1)
            if s.name in path:
                critical[s.name] = critical.get(s.name, 0) + 1
                critical_time[s.name] = critical_time.get(s.name, 0.0) + s.wait + s.ended_at - s.started_at
    return [
        StageStats(
            name,
            len(values),
            failures[name],
            retried[name],
            percentile(values, 50),
            percentile(values, 95),
            percentile(values, 99),
            percentile(waits[name], 50),
            percentile(waits[name], 95),
            percentile(waits[name], 99),
            critical.get(name, 0),
            critical_time.get(name, 0.0) / total if total > 0 else 0.0,
        )
        for name, values in durations.items()
    ]


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
        error=None if record.error is None else _cut(record.error, MESSAGE_LIMIT),
    )


def _message(s: StageRecord) -> str:
    return f"{s.error_type}: {s.error}" if s.error_type else (s.error or "")


def _rows(record: RunRecord) -> list[TimelineRow]:
    rows = [
        TimelineRow(s.name, s.status, s.started_at - s.wait, s.started_at, s.ended_at, _message(s))
        for s in record.stages
    ]
    return sorted(rows, key=lambda r: (r.start or 0.0, r.name))


def _outcome(s: StageRecord) -> str:
    """One line on a stage that failed, was skipped or cancelled, or took more than one attempt."""
    style = STATUS_STYLES.get(s.status)
    said = escape(style.label if style else s.status)
    if s.attempts > 1:
        said += f" after {s.attempts} attempts"
    message = _message(s)
    if message:
        said += f': <span class="message">{escape(message)}</span>'
    elif s.status in ("skip", "cancel"):
        said += " (no reason given)"
    return (
        f'<li data-stage="{escape(s.name)}"><strong>{escape(s.name)}</strong> '
        f'<span class="status-{escape(s.status)}">{said}</span></li>'
    )


def _outcomes(record: RunRecord) -> list[str]:
    """What happened to every stage of ``record`` that did not simply succeed on its first attempt."""
    notable = [s for s in record.stages if s.status != "ok" or s.attempts > 1]
    if not notable:
        return []
    return ['<ul class="outcomes">', *(_outcome(s) for s in notable), "</ul>"]


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


def _stats_row(st: StageStats, runs: int) -> str:
    numbers = (st.duration_p50, st.duration_p95, st.duration_p99, st.wait_p50, st.wait_p95, st.wait_p99)
    return (
        f'<tr data-stage="{escape(st.name)}"><td>{escape(st.name)}</td><td class="num">{st.runs}</td>'
        f'<td class="num">{st.failures}</td><td class="num">{st.retried}</td>'
        + "".join(f'<td class="num">{format_seconds(v)}</td>' for v in numbers)
        + f'<td class="num">{st.critical_runs} ({_pct(st.critical_runs / runs)})</td>'
        f'<td class="num">{_pct(st.critical_share)}</td></tr>'
    )


def _scroll(*html: str) -> list[str]:
    """``html`` in a box that scrolls sideways when it is wider than the page (a phone's screen)."""
    return ['<div class="scroll">', *html, "</div>"]


def _pipeline_section(index: int, name: str, records: Sequence[RunRecord], graph: object | None) -> list[str]:
    anchor = f"pipeline-{_slug(name)}"
    ok = sum(r.status == "completed" for r in records)
    durations = [r.duration for r in records]
    nodes = dag_nodes(graph) if graph is not None else _nodes_from_runs(records)
    source = "as declared" if graph is not None else "as recorded in the runs"
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
        '<div class="scroll"><table class="stats"><thead><tr><th>stage</th><th>runs</th><th>failed</th>'
        "<th>retried</th><th>p50</th><th>p95</th><th>p99</th><th>wait p50</th><th>wait p95</th>"
        "<th>wait p99</th><th>on critical path</th><th>share of run time on the critical path</th></tr>"
        "</thead><tbody>",
    ]
    out.extend(_stats_row(st, len(records)) for st in stage_stats(records))
    out += [
        "</tbody></table></div>",
        "<h3>Runs</h3>",
        '<div class="scroll"><table class="runs"><thead><tr><th>id</th><th>status</th><th>start</th>'
        "<th>duration</th><th>critical path</th></tr></thead><tbody>",
    ]
    for r in records:
        out.append(
            f'<tr class="{escape(r.status)}">'
            f'<td><a href="#run-{_slug(r.run_id)}">{escape(r.run_id)}</a></td>'
            f'<td class="status">{escape(r.status)}</td><td class="num">{_local(r.started_at)}</td>'
            f'<td class="num">{format_seconds(r.duration)}</td>'
            f'<td class="path">{escape(" → ".join(r.critical_path))}</td></tr>'
        )
    out.append("</tbody></table></div>")
    for r in records:
        out += [
            f'<div class="run" id="run-{_slug(r.run_id)}">',
            f"<h3>Run {escape(r.run_id)} · {escape(r.status)} in {format_seconds(r.duration)} · "
            f"{_local(r.started_at)}</h3>",
        ]
        if r.error:
            out.append(f'<p class="error">{escape(r.error)}</p>')
        out += _scroll(
            gantt_svg(
                _rows(r),
                start=r.started_at,
                end=r.ended_at,
                critical_path=r.critical_path,
                title=f"run {r.run_id} of {name}",
                attempts={s.name: s.attempts for s in r.stages},
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
    entries.append(f"{swatch.format(f'border:2px solid {CRITICAL_STROKE}')}critical path (*)")
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
