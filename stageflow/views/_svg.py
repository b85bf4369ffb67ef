"""SVG drawings of a pipeline's DAG and of a run's Gantt chart, standalone or inline in HTML.

Both are plain SVG 1.1 built from strings (no scripts, no external references), so they render offline
and from ``file://``. Hovering any box shows its numbers through an SVG ``<title>``.

The DAG is laid out in layers (Sugiyama style): one column per dependency depth, and every edge that
spans several columns gets a lane in each column it passes, so no edge is ever drawn across a box.

It is over 500 lines because the layered layout and the two drawings share their geometry and escaping
helpers; splitting them would spread one coordinate system over modules.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from html import escape

from stageflow._results import format_seconds

from ._timeline import TimelineRow, outcome_word

__all__ = (
    "CRITICAL_STROKE",
    "DISPATCH_FILL",
    "FIRST_CHUNK_STROKE",
    "STATUS_STYLES",
    "WAIT_FILL",
    "DagNode",
    "StatusStyle",
    "dag_nodes",
    "dag_svg",
    "gantt_svg",
)

_SVG_NS = 'xmlns="http://www.w3.org/2000/svg"'
_NODE_W, _NODE_H, _GAP_X, _GAP_Y, _PAD = 150, 44, 56, 18, 12
_LANE_GAP = 12
"""The least distance between an edge's lane through a column and a box or another lane there."""
_ORDER_SWEEPS, _PLACE_ROUNDS = 12, 4
_WORK_BUDGET = 300_000
"""Segment visits the layout spends improving order and placement: fewer rounds for dense DAGs, whose
lanes grow with edges times the columns they span."""


@dataclass(frozen=True, slots=True)
class StatusStyle:
    """How one stage status is drawn: its words, its bar's fill and the colour of text about it."""

    label: str
    fill: str
    text: str
    """Readable on white (contrast at least 4.5:1), and of the same hue as ``fill``."""


STATUS_STYLES: Mapping[str, StatusStyle] = {
    "ok": StatusStyle("ok", "#4caf50", "#2e7d32"),
    "fail": StatusStyle("failed", "#e53935", "#b71c1c"),
    "skip": StatusStyle("skipped", "#bdbdbd", "#616161"),
    "cancel": StatusStyle("cancelled", "#ffb300", "#8a5300"),
}
"""Every status's drawing style: the Gantt chart, the report's legend and its text all read it."""
WAIT_FILL = "#b0bec5"
"""The fill of a wait bar (ready → start)."""
CRITICAL_STROKE = "#e65100"
"""The outline of a stage on the critical path."""
DISPATCH_FILL = "#546e7a"
"""The fill of a dispatch bar (a sync stage's work going to its executor and back)."""
FIRST_CHUNK_STROKE = "#1a237e"
"""The colour of the mark at a streaming stage's first chunk."""


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


def _n(value: float) -> str:
    """A coordinate as SVG text: at most one decimal, no trailing zeros."""
    return f"{round(value, 1):g}"


def _back_edges(count: int, children: Sequence[Sequence[int]]) -> set[tuple[int, int]]:
    """The edges closing a cycle in a depth-first search in declaration order (none in a built graph).

    A stored run is only as trustworthy as the database it came from; drawing a cyclic one must not hang
    or fail, so these edges are laid out reversed and drawn with the arrow at their start.
    """
    state = [0] * count  # 0 unseen, 1 on the stack, 2 done
    back: set[tuple[int, int]] = set()
    for root in range(count):
        if state[root]:
            continue
        state[root] = 1
        stack = [(root, iter(children[root]))]
        while stack:
            node, pending = stack[-1]
            for child in pending:
                if state[child] == 1:
                    back.add((node, child))
                elif state[child] == 0:
                    state[child] = 1
                    stack.append((child, iter(children[child])))
                    break
            else:
                state[node] = 2
                stack.pop()
    return back


def _layers(count: int, edges: Sequence[tuple[int, int]]) -> list[int]:
    """Each node's column: the length of the longest dependency chain leading to it (edges acyclic)."""
    preds: list[list[int]] = [[] for _ in range(count)]
    children: list[list[int]] = [[] for _ in range(count)]
    indegree = [0] * count
    for u, v in edges:
        preds[v].append(u)
        children[u].append(v)
        indegree[v] += 1
    layer = [0] * count
    ready = deque(i for i in range(count) if indegree[i] == 0)
    while ready:
        node = ready.popleft()
        layer[node] = 1 + max((layer[p] for p in preds[node]), default=-1)
        for child in children[node]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    return layer


def _crossings(columns: Sequence[Sequence[int]], pos: Sequence[int], nexts: Sequence[Sequence[int]]) -> int:
    """How many pairs of segments between neighbouring columns cross, with the columns in this order."""
    total = 0
    for column in columns:
        seen: list[int] = []
        for item in column:
            targets = sorted(pos[t] for t in nexts[item])
            total += sum(len(seen) - bisect_right(seen, t) for t in targets)
            for t in targets:
                insort(seen, t)
    return total


def _order(
    columns: list[list[int]], prevs: Sequence[Sequence[int]], nexts: Sequence[Sequence[int]], sweeps: int
) -> list[list[int]]:
    """Columns reordered by barycenter sweeps, keeping the order with the fewest edge crossings."""
    pos = [0] * len(prevs)
    for column in columns:
        for p, item in enumerate(column):
            pos[item] = p

    def sweep(indices: range, neighbours: Sequence[Sequence[int]]) -> None:
        for k in indices:
            column = columns[k]
            keys = {
                item: sum(pos[j] for j in neighbours[item]) / len(neighbours[item])
                if neighbours[item]
                else pos[item]
                for item in column
            }
            column.sort(key=keys.__getitem__)  # stable: ties keep their order
            for p, item in enumerate(column):
                pos[item] = p

    best = [list(c) for c in columns]
    fewest = _crossings(columns, pos, nexts)
    for _ in range(sweeps):
        if fewest == 0:
            break
        sweep(range(1, len(columns)), prevs)
        sweep(range(len(columns) - 2, -1, -1), nexts)
        crossings = _crossings(columns, pos, nexts)
        if crossings < fewest:
            best, fewest = [list(c) for c in columns], crossings
    return best


def _fit(desired: Sequence[float], gaps: Sequence[float]) -> list[float]:
    """Positions closest to ``desired`` (least squares) with ``gaps[i]`` at least between items i and i+1.

    With ``offset[i]`` the sum of the gaps before item i, ``y[i] - offset[i]`` must not decrease: an
    isotonic regression of ``desired[i] - offset[i]``, solved exactly by pooling adjacent violators.
    """
    if not desired:
        return []
    offsets = [0.0]
    for gap in gaps:
        offsets.append(offsets[-1] + gap)
    blocks: list[list[float]] = []  # [sum, count] of pooled values
    for want, offset in zip(desired, offsets, strict=True):
        blocks.append([want - offset, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, n = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += n
    fitted = [total / n for total, n in blocks for _ in range(int(n))]
    return [y + offset for y, offset in zip(fitted, offsets, strict=True)]


@dataclass(frozen=True, slots=True)
class _Route:
    source: str
    target: str
    path: str
    reversed: bool


@dataclass(frozen=True, slots=True)
class _Layout:
    width: int
    height: int
    boxes: dict[str, tuple[float, float]]
    """Each stage's box, by its top-left corner."""
    routes: list[_Route]
    """One per dependency, in declaration order."""


def _layout(nodes: Sequence[DagNode]) -> _Layout:
    """Columns by dependency depth, lanes for long edges, rows ordered and placed to keep edges short."""
    index = {node.name: i for i, node in enumerate(nodes)}
    count = len(nodes)
    declared = [  # unknown and self dependencies cannot be drawn
        (index[dep], index[node.name])
        for node in nodes
        for dep in dict.fromkeys(node.dependencies)
        if dep in index and dep != node.name
    ]
    children: list[list[int]] = [[] for _ in range(count)]
    for u, v in declared:
        children[u].append(v)
    back = _back_edges(count, children)
    forward = [(v, u) if (u, v) in back else (u, v) for u, v in declared]
    layer = _layers(count, forward)

    # items: the stages (0 .. count-1), then one lane per column an edge passes through
    item_layer = list(layer)
    chains: list[list[int]] = []
    for u, v in forward:
        chain = [u]
        for k in range(layer[u] + 1, layer[v]):
            chain.append(len(item_layer))
            item_layer.append(k)
        chains.append([*chain, v])
    items = len(item_layer)
    half = [_NODE_H / 2 if i < count else 0.0 for i in range(items)]
    prevs: list[list[int]] = [[] for _ in range(items)]
    nexts: list[list[int]] = [[] for _ in range(items)]
    for chain in chains:
        for a, b in zip(chain, chain[1:], strict=False):
            nexts[a].append(b)
            prevs[b].append(a)
    columns: list[list[int]] = [[] for _ in range(max(layer, default=0) + 1)]
    for item, k in enumerate(item_layer):
        columns[k].append(item)
    rounds = _WORK_BUDGET // max(sum(len(n) for n in nexts), 1)
    columns = _order(columns, prevs, nexts, max(1, min(_ORDER_SWEEPS, rounds // 3)))

    def gaps(column: Sequence[int]) -> list[float]:
        return [
            half[a] + half[b] + (_GAP_Y if a < count and b < count else _LANE_GAP)
            for a, b in zip(column, column[1:], strict=False)
        ]

    y = [0.0] * items
    for column in columns:
        for item, centre in zip(column, _fit([0.0] * len(column), gaps(column)), strict=True):
            y[item] = centre

    def place(indices: range, neighbours: Sequence[Sequence[int]]) -> None:
        for k in indices:
            column = columns[k]
            desired = [
                sum(y[j] for j in neighbours[i]) / len(neighbours[i]) if neighbours[i] else y[i]
                for i in column
            ]
            for item, centre in zip(column, _fit(desired, gaps(column)), strict=True):
                y[item] = centre

    for _ in range(max(1, min(_PLACE_ROUNDS, rounds // 6))):  # level with neighbours: down, then up
        place(range(1, len(columns)), prevs)
        place(range(len(columns) - 2, -1, -1), nexts)
    top = min((y[i] - half[i] for i in range(items)), default=0.0)
    y = [round(v - top + _PAD) for v in y]
    bottom = max((y[i] + half[i] for i in range(items)), default=_NODE_H + _PAD)

    def x(item: int) -> int:
        return _PAD + item_layer[item] * (_NODE_W + _GAP_X)

    def ports(ends: Sequence[tuple[int, int, int]]) -> dict[int, float]:
        """Per chain, where it leaves or enters a stage: spread along the side, ordered by the far end."""
        by_stage: dict[int, list[tuple[float, int]]] = {}
        for chain_index, stage, far in ends:
            by_stage.setdefault(stage, []).append((y[far], chain_index))
        spread: dict[int, float] = {}
        for stage, touching in by_stage.items():
            touching.sort()
            for rank, (_, chain_index) in enumerate(touching):
                spread[chain_index] = y[stage] - _NODE_H / 2 + _NODE_H * (rank + 1) / (len(touching) + 1)
        return spread

    out_port = ports([(c, chain[0], chain[1]) for c, chain in enumerate(chains)])
    in_port = ports([(c, chain[-1], chain[-2]) for c, chain in enumerate(chains)])
    routes = []
    for c, ((u, v), chain) in enumerate(zip(declared, chains, strict=True)):
        px, py = float(x(chain[0]) + _NODE_W), out_port[c]
        path = [f"M {_n(px)} {_n(py)}"]
        for item in chain[1:]:
            qx, qy = float(x(item)), in_port[c] if item == chain[-1] else float(y[item])
            mid = (px + qx) / 2  # every control point lies in the gap between the two columns
            path.append(f"C {_n(mid)} {_n(py)}, {_n(mid)} {_n(qy)}, {_n(qx)} {_n(qy)}")
            px, py = qx, qy
            if item != chain[-1]:  # a lane: straight through its column, clear of every box there
                px += _NODE_W
                path.append(f"L {_n(px)} {_n(py)}")
        routes.append(_Route(nodes[u].name, nodes[v].name, " ".join(path), (u, v) in back))
    width = _PAD * 2 + len(columns) * (_NODE_W + _GAP_X) - _GAP_X
    boxes = {node.name: (float(x(i)), y[i] - _NODE_H / 2) for i, node in enumerate(nodes)}
    return _Layout(width, round(bottom + _PAD), boxes, routes)


def dag_svg(
    nodes: Sequence[DagNode],
    *,
    title: str = "",
    highlight: Collection[str] = (),
    css_class: str = "dag",
    ident: str = "dag",
) -> str:
    """The DAG as SVG: columns by dependency depth, edges from each dependency to its dependents.

    An edge spanning several columns runs through a lane of its own in each column between, so edges
    never pass behind a box; rows are ordered to cross few edges and placed to keep edges straight.

    Args:
        nodes: the stages, in declaration order (a repeated name keeps its first node).
        title: the drawing's accessible title (e.g. the pipeline's name).
        highlight: stage names drawn emphasised (e.g. a critical path).
        css_class: the ``class`` of the ``<svg>`` element.
        ident: a prefix for the drawing's element ids, unique within one HTML page.
    """
    unique: dict[str, DagNode] = {}
    for node in nodes:
        unique.setdefault(node.name, node)
    nodes = list(unique.values())
    layout = _layout(nodes)
    arrow = f"{escape(ident)}-arrow"
    width, height = layout.width, layout.height
    parts = [
        f'<svg {_SVG_NS} class="{escape(css_class)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title or "pipeline DAG")}">',
        f"<title>{escape(title or 'pipeline DAG')}</title>",
        f'<defs><marker id="{arrow}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
    ]
    for route in layout.routes:
        dash = ' stroke-dasharray="5 4"' if unique[route.target].conditional else ""
        marker = "marker-start" if route.reversed else "marker-end"
        parts.append(
            f'<path class="edge" data-from="{escape(route.source)}" data-to="{escape(route.target)}" '
            f'd="{route.path}" fill="none" stroke="#555" stroke-width="1.5"{dash} {marker}="url(#{arrow})"/>'
        )
    for node in nodes:
        x, y = layout.boxes[node.name]
        hot = node.name in highlight
        deps = ", ".join(node.dependencies) or "none"
        tip = f"{node.name} ({node.kind}{', conditional' if node.conditional else ''}); depends on: {deps}"
        parts.append(
            f'<g class="node{" critical" if hot else ""}" data-stage="{escape(node.name)}">'
            f"<title>{escape(tip)}</title>"
            f'<rect x="{_n(x)}" y="{_n(y)}" width="{_NODE_W}" height="{_NODE_H}" '
            f'rx="{14 if node.conditional else 4}" '
            f'fill="{"#fff3e0" if hot else "#f5f7fa"}" stroke="{CRITICAL_STROKE if hot else "#607d8b"}" '
            f'stroke-width="{2.5 if hot else 1.2}"/>'
            f'<text x="{_n(x + _NODE_W / 2)}" y="{_n(y + 18)}" text-anchor="middle" font-family="sans-serif" '
            f'font-size="13" font-weight="bold">{escape(_clip(node.name, 20))}</text>'
            f'<text x="{_n(x + _NODE_W / 2)}" y="{_n(y + 34)}" text-anchor="middle" font-family="sans-serif" '
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
    attempts: Mapping[str, int] | None = None,
    chunks: Mapping[str, int] | None = None,
) -> str:
    """A run's Gantt chart as SVG: per stage a wait bar (ready → start), a dispatch bar (a sync stage's
    work going to its executor and back: start → start + dispatch, ``class="dispatch"``) and a run bar
    (the rest, to the end).

    Run bars are coloured by status (``class="run ok|fail|skip|cancel"``), critical-path stages outlined
    (``class="... critical"``); each bar's ``<title>`` gives its numbers. A streaming stage's first chunk
    is a mark across its bar (``class="first-chunk"``; ``chunks``: stage name → chunks yielded). A
    failed, skipped or cancelled stage, and a stage that took more than one attempt (``attempts``: stage
    name → attempts), gets a label beside its bar (``class="mark fail|skip|cancel|ok"``) in its status's
    text colour, worded by its outcome category (``✗ timed out``).
    """
    label_w, row_h, axis_h = 130, 22, 22
    plot_w = width - label_w - _PAD * 2
    total = end - start
    scale = plot_w / total if total > 0 else 0.0
    height = axis_h + row_h * max(len(rows), 1) + _PAD * 2
    on_path = set(critical_path)
    tries = attempts or {}
    yielded = chunks or {}

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
                f'width="{max(x(r.start) - x(ready), 0.5):.2f}" height="6" fill="{WAIT_FILL}">'
                f"<title>{escape(r.name)} waited {escape(format_seconds(wait))} for its dependencies</title>"
                "</rect>"
            )
        dispatch = min(max(r.dispatch, 0.0), max(ran, 0.0))
        began = r.start + dispatch  # the stage's own code, after its dispatch
        if dispatch > 0:
            parts.append(
                f'<rect class="dispatch" x="{x(r.start)}" y="{y + 3}" '
                f'width="{max(x(began) - x(r.start), 0.5):.2f}" height="16" fill="{DISPATCH_FILL}">'
                f"<title>{escape(r.name)}: dispatch {escape(format_seconds(dispatch))} (its work going to "
                "its executor and back)</title></rect>"
            )
        n = tries.get(r.name, 1)
        retried = f", {n} attempts" if n > 1 else ""
        note = f"; {r.note}" if r.note else ""
        sent = f", dispatch {format_seconds(dispatch)}" if dispatch > 0 else ""
        streamed = ""
        if r.first is not None:
            count = yielded.get(r.name, 0)
            said = f"{count} chunk{'' if count == 1 else 's'}, " if count else ""
            streamed = f", {said}first after {format_seconds(r.first - r.start)}"
        tip = (
            f"{r.name}: {r.status}{retried}, ran {format_seconds(ran - dispatch)} "
            f"(from {format_seconds(began - start)} to {format_seconds(r.end - start)}), "
            f"waited {format_seconds(wait)}{sent}{streamed}{note}"
        )
        style = STATUS_STYLES.get(r.status, STATUS_STYLES["ok"])
        stroke = f' stroke="{CRITICAL_STROKE}" stroke-width="2"' if hot else ""
        parts.append(
            f'<rect class="run {escape(r.status)}{" critical" if hot else ""}" x="{x(began)}" y="{y + 3}" '
            f'width="{max(x(r.end) - x(began), 1.5):.2f}" height="16" rx="2" '
            f'fill="{style.fill}"{stroke}><title>{escape(tip)}</title></rect>'
        )
        if r.first is not None:
            fx = x(min(max(r.first, began), r.end))
            parts.append(
                f'<line class="first-chunk" x1="{fx:.2f}" y1="{y + 1}" x2="{fx:.2f}" y2="{y + 21}" '
                f'stroke="{FIRST_CHUNK_STROKE}" stroke-width="2.5"><title>{escape(r.name)}: first chunk '
                f"after {escape(format_seconds(r.first - r.start))}</title></line>"
            )
        mark = _mark(r.status, r.category, n)
        if mark:
            after = x(r.end) + 4 + 7 * len(mark) <= width - _PAD  # else left of the bar
            mx, anchor = (x(r.end) + 4, "start") if after else (x(r.start) - 4, "end")
            parts.append(
                f'<text class="mark {escape(r.status)}" x="{mx:.2f}" y="{y + 15}" text-anchor="{anchor}" '
                f'font-family="sans-serif" font-size="11" fill="{style.text}">{escape(mark)}</text>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _mark(status: str, category: str | None, attempts: int) -> str:
    """The label beside a run bar: ``✗`` and the outcome's word for a failed stage (``✗ failed``,
    ``✗ error``, ``✗ timed out``), ``skipped``, ``cancelled``, ``N attempts``, or none."""
    word = outcome_word(category, status)
    label = f"✗ {word}" if status == "fail" else word
    if attempts <= 1:
        return label
    return f"{label} after {attempts} attempts" if label else f"{attempts} attempts"
