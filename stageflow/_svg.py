"""SVG drawings of a pipeline's DAG and of a run's Gantt chart, standalone or inline in HTML.

Both are plain SVG 1.1 built from strings (no scripts, no external references), so they render offline
and from ``file://``. Hovering any box shows its numbers through an SVG ``<title>``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from html import escape

from ._timeline import TimelineRow, format_seconds

__all__ = ("DagNode", "dag_nodes", "dag_svg", "gantt_svg")

_SVG_NS = 'xmlns="http://www.w3.org/2000/svg"'
_NODE_W, _NODE_H, _GAP_X, _GAP_Y, _PAD = 150, 44, 56, 18, 12
_FILL = {"ok": "#4caf50", "fail": "#e53935", "skip": "#bdbdbd", "cancel": "#ffb300"}


@dataclass(frozen=True, slots=True)
class DagNode:
    """One stage of a DAG drawing."""

    name: str
    kind: str
    dependencies: tuple[str, ...]
    conditional: bool = False


def dag_nodes(graph: object) -> list[DagNode]:
    """The ``DagNode``s of a ``StageGraph`` (anything whose ``stages`` are ``StageInfo``-like)."""
    return [
        DagNode(s.name, str(getattr(s.kind, "value", s.kind)), tuple(s.dependencies), bool(s.conditional))
        for s in getattr(graph, "stages")  # noqa: B009 - typed as object: any graph-like value
    ]


def _depths(nodes: Sequence[DagNode]) -> dict[str, int]:
    depth: dict[str, int] = {}
    known = {n.name for n in nodes}
    remaining = list(nodes)
    while remaining:  # nodes come from a built (acyclic) graph or a stored run; unknown deps are ignored
        progressed = False
        for node in list(remaining):
            deps = [d for d in node.dependencies if d in known]
            if all(d in depth for d in deps):
                depth[node.name] = 1 + max((depth[d] for d in deps), default=-1)
                remaining.remove(node)
                progressed = True
        if not progressed:  # a cycle cannot come from a built graph; draw what is left in one column
            for node in remaining:
                depth[node.name] = 1 + max(depth.values(), default=-1)
            break
    return depth


def dag_svg(
    nodes: Sequence[DagNode],
    *,
    title: str = "",
    highlight: Collection[str] = (),
    css_class: str = "dag",
    ident: str = "dag",
) -> str:
    """The DAG as SVG: columns by dependency depth, edges from each dependency to its dependents.

    Args:
        nodes: the stages, in declaration order.
        title: the drawing's accessible title (e.g. the pipeline's name).
        highlight: stage names drawn emphasised (e.g. a critical path).
        css_class: the ``class`` of the ``<svg>`` element.
        ident: a prefix for the drawing's element ids, unique within one HTML page.
    """
    arrow = f"{escape(ident)}-arrow"
    depth = _depths(nodes)
    columns: dict[int, list[DagNode]] = {}
    for node in nodes:
        columns.setdefault(depth[node.name], []).append(node)
    pos: dict[str, tuple[int, int]] = {}
    for col, members in columns.items():
        for row, node in enumerate(members):
            pos[node.name] = (_PAD + col * (_NODE_W + _GAP_X), _PAD + row * (_NODE_H + _GAP_Y))
    width = _PAD * 2 + max(len(columns), 1) * (_NODE_W + _GAP_X) - _GAP_X
    height = _PAD * 2 + max((len(m) for m in columns.values()), default=1) * (_NODE_H + _GAP_Y) - _GAP_Y
    parts = [
        f'<svg {_SVG_NS} class="{escape(css_class)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title or "pipeline DAG")}">',
        f"<title>{escape(title or 'pipeline DAG')}</title>",
        f'<defs><marker id="{arrow}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
    ]
    for node in nodes:
        x2, y2 = pos[node.name]
        for dep in node.dependencies:
            if dep not in pos:
                continue
            x1, y1 = pos[dep]
            sx, sy, ex, ey = x1 + _NODE_W, y1 + _NODE_H // 2, x2, y2 + _NODE_H // 2
            mid = (sx + ex) // 2
            dash = ' stroke-dasharray="5 4"' if node.conditional else ""
            parts.append(
                f'<path class="edge" data-from="{escape(dep)}" data-to="{escape(node.name)}" '
                f'd="M {sx} {sy} C {mid} {sy}, {mid} {ey}, {ex} {ey}" fill="none" stroke="#555" '
                f'stroke-width="1.5"{dash} marker-end="url(#{arrow})"/>'
            )
    for node in nodes:
        x, y = pos[node.name]
        hot = node.name in highlight
        deps = ", ".join(node.dependencies) or "none"
        tip = f"{node.name} ({node.kind}{', conditional' if node.conditional else ''}); depends on: {deps}"
        parts.append(
            f'<g class="node{" critical" if hot else ""}" data-stage="{escape(node.name)}">'
            f"<title>{escape(tip)}</title>"
            f'<rect x="{x}" y="{y}" width="{_NODE_W}" height="{_NODE_H}" '
            f'rx="{14 if node.conditional else 4}" '
            f'fill="{"#fff3e0" if hot else "#f5f7fa"}" stroke="{"#e65100" if hot else "#607d8b"}" '
            f'stroke-width="{2.5 if hot else 1.2}"/>'
            f'<text x="{x + _NODE_W // 2}" y="{y + 18}" text-anchor="middle" font-family="sans-serif" '
            f'font-size="13" font-weight="bold">{escape(_clip(node.name, 20))}</text>'
            f'<text x="{x + _NODE_W // 2}" y="{y + 34}" text-anchor="middle" font-family="sans-serif" '
            f'font-size="11" fill="#555">{escape(node.kind)}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def gantt_svg(
    rows: Sequence[TimelineRow],
    *,
    start: float,
    end: float,
    critical_path: Collection[str] = (),
    title: str = "",
    width: int = 720,
) -> str:
    """A run's Gantt chart as SVG: per stage a wait bar (ready → start) and a run bar (start → end).

    Run bars are coloured by status (``class="run ok|fail|skip|cancel"``), critical-path stages outlined
    (``class="... critical"``); each bar's ``<title>`` gives its numbers.
    """
    label_w, row_h, axis_h = 130, 22, 22
    plot_w = width - label_w - _PAD * 2
    total = end - start
    scale = plot_w / total if total > 0 else 0.0
    height = axis_h + row_h * max(len(rows), 1) + _PAD * 2
    on_path = set(critical_path)

    def x(t: float) -> float:
        return round(label_w + _PAD + max(0.0, min(t - start, total)) * scale, 2)

    parts = [
        f'<svg {_SVG_NS} class="gantt" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title or "run timeline")}">',
        f"<title>{escape(title or 'run timeline')}</title>",
    ]
    for i in range(5):
        tx = label_w + _PAD + plot_w * i / 4
        parts.append(
            f'<line x1="{tx:.2f}" y1="{_PAD + axis_h - 4}" x2="{tx:.2f}" y2="{height - _PAD}" '
            'stroke="#e0e0e0"/>'
            f'<text x="{tx:.2f}" y="{_PAD + 10}" text-anchor="{"end" if i == 4 else "middle"}" '
            'font-family="sans-serif" '
            f'font-size="10" fill="#666">{escape(format_seconds(total * i / 4))}</text>'
        )
    for i, r in enumerate(rows):
        y = _PAD + axis_h + i * row_h
        hot = r.name in on_path
        bold = ' font-weight="bold"' if hot else ""
        parts.append(
            f'<g class="stage{" critical" if hot else ""}" data-stage="{escape(r.name)}">'
            f'<text x="{_PAD}" y="{y + 15}" font-family="sans-serif" font-size="12"'
            f"{bold}>{'* ' if hot else ''}{escape(_clip(r.name, 16))}</text>"
        )
        if r.start is None or r.end is None:
            parts.append(
                f'<text class="not-started" x="{label_w + _PAD}" y="{y + 15}" font-family="sans-serif" '
                f'font-size="11" fill="#999">{escape(r.note or "not started")}</text></g>'
            )
            continue
        ready = r.start if r.ready is None else min(r.ready, r.start)
        wait, ran = r.start - ready, r.end - r.start
        if wait > 0:
            parts.append(
                f'<rect class="wait" x="{x(ready)}" y="{y + 8}" '
                f'width="{max(x(r.start) - x(ready), 0.5):.2f}" height="6" fill="#b0bec5">'
                f"<title>{escape(r.name)} waited {escape(format_seconds(wait))} for its dependencies</title>"
                "</rect>"
            )
        note = f"; {r.note}" if r.note else ""
        tip = (
            f"{r.name}: {r.status}, ran {format_seconds(ran)} (from {format_seconds(r.start - start)} to "
            f"{format_seconds(r.end - start)}), waited {format_seconds(wait)}{note}"
        )
        stroke = ' stroke="#e65100" stroke-width="2"' if hot else ""
        parts.append(
            f'<rect class="run {escape(r.status)}{" critical" if hot else ""}" x="{x(r.start)}" y="{y + 3}" '
            f'width="{max(x(r.end) - x(r.start), 1.5):.2f}" height="16" rx="2" '
            f'fill="{_FILL.get(r.status, "#4caf50")}"{stroke}><title>{escape(tip)}</title></rect>'
        )
        if r.status in ("fail", "skip", "cancel"):
            mark = {"fail": "✗ failed", "skip": "skipped", "cancel": "cancelled"}[r.status]
            after = x(r.end) + 4 + 7 * len(mark) <= width - _PAD  # else left of the bar
            mx, anchor = (x(r.end) + 4, "start") if after else (x(r.start) - 4, "end")
            parts.append(
                f'<text class="mark" x="{mx:.2f}" y="{y + 15}" text-anchor="{anchor}" '
                f'font-family="sans-serif" font-size="11" fill="#b71c1c">{mark}</text>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
