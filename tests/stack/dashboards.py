"""Every query of every provisioned dashboard, with its template variables resolved.

Used by the static dashboard tests and meant for the live test that runs each panel query against a real
Prometheus scraping a stageflow process::

    for query in panel_queries(service="stageflow-demo", pipeline="checkout"):
        assert prometheus.query(query.expr), (query.dashboard, query.panel)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ._assets import DASHBOARDS

__all__ = (
    "PanelQuery",
    "each_variable",
    "iter_panels",
    "label_values_query",
    "load_dashboards",
    "panel_queries",
    "resolve",
    "variable_queries",
)


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One query of one panel: where it is, its raw expression, and the expression ready to run."""

    dashboard: str
    panel: str
    ref_id: str
    raw_expr: str
    expr: str
    instant: bool


def load_dashboards(directory: Path = DASHBOARDS) -> dict[str, dict[str, Any]]:
    """Every dashboard JSON in ``directory``, keyed by file name."""
    return {
        path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(directory.glob("*.json"))
    }


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, including those nested in rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def resolve(expr: str, variables: Mapping[str, str]) -> str:
    """Substitute Grafana ``$var`` / ``${var}`` references; unknown names raise ``KeyError``."""

    def substitute(match: re.Match[str]) -> str:
        return variables[match.group(1) or match.group(2)]

    return _VARIABLE.sub(substitute, expr)


def panel_queries(
    service: str,
    pipeline: str,
    *,
    rate_interval: str = "1m",
    time_range: str = "5m",
    interval: str = "15s",
    directory: Path = DASHBOARDS,
) -> Iterator[PanelQuery]:
    """Every panel target of every dashboard, resolved for one ``job`` and one pipeline name.

    Args:
        service: Value of ``$service`` (the Prometheus ``job`` label).
        pipeline: Value of ``$pipeline``, a ``stageflow_pipeline_name`` (regex-escaped: used with ``=~``).
        rate_interval: Value of ``$__rate_interval``.
        time_range: Value of ``$__range`` (the dashboard's time range).
        interval: Value of ``$__interval``.
        directory: Where the dashboard JSON files are.
    """
    variables = {
        "service": service,
        "pipeline": re.escape(pipeline).replace("\\", "\\\\"),
        "__rate_interval": rate_interval,
        "__range": time_range,
        "__interval": interval,
    }
    for name, dashboard in load_dashboards(directory).items():
        for panel in iter_panels(dashboard):
            for target in panel.get("targets", []):
                raw = target["expr"]
                yield PanelQuery(
                    dashboard=name,
                    panel=panel["title"],
                    ref_id=target["refId"],
                    raw_expr=raw,
                    expr=resolve(raw, variables),
                    instant=bool(target.get("instant", False)),
                )


def variable_queries(directory: Path = DASHBOARDS) -> Iterator[tuple[str, str, str]]:
    """``(dashboard, variable name, query)`` for every query-type template variable."""
    for name, dashboard in load_dashboards(directory).items():
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                query = variable["query"]
                yield name, variable["name"], query["query"] if isinstance(query, dict) else query


_LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")


def each_variable() -> pytest.MarkDecorator:
    """Parametrizes a test over ``variable_queries()`` as ``(dashboard, name, query)``, one id a variable."""
    variables = list(variable_queries())
    return pytest.mark.parametrize(
        ("dashboard", "name", "query"),
        variables,
        ids=[f"{d.removesuffix('.json')}/{n}" for d, n, _ in variables],
    )


def label_values_query(query: str, service: str) -> tuple[str | None, str]:
    """The series selector (``None`` when absent) and the label of a ``label_values([selector, ]label)``
    variable query, with ``$service`` set to ``service``."""
    match = _LABEL_VALUES.match(resolve(query, {"service": service}))
    assert match is not None, query
    selector, label = match.groups()
    return selector, label
