"""Paths of the stack's files, YAML loading, and the PromQL name checks derived from ``semconv``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stageflow_otel import semconv

__all__ = (
    "COLLECTOR",
    "COMPOSE_FILE",
    "DASHBOARDS",
    "EXTRA_LABELS",
    "REPO",
    "Selector",
    "load_yaml",
    "parse_promql",
    "promql_problems",
    "semconv_series",
)

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
COLLECTOR = REPO / "collector"
DASHBOARDS = REPO / "dashboards"

EXTRA_LABELS = frozenset({"job", "instance", "otel_scope_name"})
"""Labels every stageflow series may carry besides its semconv attributes (target and scope labels)."""


def load_yaml(path: Path) -> Any:
    """Parse one YAML file."""
    with path.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def semconv_series() -> dict[str, frozenset[str]]:
    """Every Prometheus series name stageflow exports, mapped to the labels it may carry."""
    series: dict[str, frozenset[str]] = {}
    for metric in semconv.METRICS:
        labels = frozenset(semconv.prometheus_label(a) for a in metric.attributes) | EXTRA_LABELS
        for name in metric.prometheus_series:
            series[name] = labels | {"le"} if name.endswith("_bucket") else labels
    return series


@dataclass(frozen=True, slots=True)
class Selector:
    """One vector selector in a PromQL expression: its metric name and the labels it matches on."""

    metric: str | None
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    """The selectors of a PromQL expression and the labels its grouping clauses name."""

    selectors: tuple[Selector, ...]
    grouping: tuple[str, ...]


_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_BRACES = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_IDENT = re.compile(r"(?<![\w.$:])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:]|\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"})


def parse_promql(expr: str) -> ParsedQuery:
    """Extract selectors and grouping labels from a PromQL expression (enough for name checks)."""
    text = _RANGE.sub(" ", _STRING.sub('""', expr))
    grouping: list[str] = []
    for match in _GROUPING.finditer(text):
        grouping += [label.strip() for label in match.group(1).split(",") if label.strip()]
    text = _GROUPING.sub(" ", text)
    selectors: list[Selector] = []
    for match in _BRACES.finditer(text):
        labels = tuple(m.group(1) for m in _MATCHER.finditer(match.group(2)))
        selectors.append(Selector(match.group(1), labels))
    text = _BRACES.sub(" ", text)
    selectors += [Selector(m.group(1), ()) for m in _IDENT.finditer(text) if m.group(1) not in _KEYWORDS]
    return ParsedQuery(tuple(selectors), tuple(grouping))


def promql_problems(expr: str, extra_series: Iterable[str] = ()) -> list[str]:
    """Names in ``expr`` that are not semconv Prometheus series or labels (empty when all are)."""
    known = semconv_series()
    extra = frozenset(extra_series)
    parsed = parse_promql(expr)
    problems: list[str] = []
    usable: set[str] = {"le"} | EXTRA_LABELS
    for selector in parsed.selectors:
        if selector.metric is None:
            problems.append(f"selector without a metric name in {expr!r}")
        elif selector.metric in extra:
            usable |= frozenset().union(*known.values())
        elif selector.metric not in known:
            problems.append(f"metric {selector.metric!r} is not a semconv series")
        else:
            labels = known[selector.metric]
            usable |= labels
            problems += [
                f"label {label!r} is not a label of {selector.metric!r}"
                for label in selector.labels
                if label not in labels
            ]
    problems += [
        f"grouping label {label!r} is not carried by the queried series"
        for label in parsed.grouping
        if label not in usable
    ]
    return problems
