"""dashboards/*.json: well-formed layouts, provisioned datasources, variables, and semconv-only queries."""

from __future__ import annotations

import re
from itertools import combinations
from typing import Any

import pytest

from stageflow_otel import semconv

from ._assets import COLLECTOR, DASHBOARDS, load_yaml, parse_promql, promql_problems
from .dashboards import iter_panels, load_dashboards, panel_queries, variable_queries

ALL = load_dashboards()
NAMES = sorted(ALL)
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")
REQUIRED_VARIABLES = {
    "stageflow-overview.json": ["service", "pipeline"],
    "stageflow-stages.json": ["service", "pipeline"],
}


def _datasource_uids(value: Any) -> list[str]:
    """Every datasource UID referenced anywhere under ``value``."""
    found: list[str] = []
    if isinstance(value, dict):
        datasource = value.get("datasource")
        if isinstance(datasource, dict) and "uid" in datasource:
            found.append(datasource["uid"])
        for item in value.values():
            found += _datasource_uids(item)
    elif isinstance(value, list):
        for item in value:
            found += _datasource_uids(item)
    return found


def _strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    """``(path, string)`` for every string under ``value`` (keys included)."""
    if isinstance(value, dict):
        return [(f"{path}.{k}", k) for k in value] + [
            item for k, v in value.items() for item in _strings(v, f"{path}.{k}")
        ]
    if isinstance(value, list):
        return [item for i, v in enumerate(value) for item in _strings(v, f"{path}[{i}]")]
    return [(path, value)] if isinstance(value, str) else []


def _overlaps(a: dict[str, int], b: dict[str, int]) -> bool:
    """Whether two gridPos rectangles intersect."""
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


class TestInventory:
    """The three dashboards exist and are provisioned."""

    def test_the_three_dashboards_exist(self) -> None:
        """Pipeline overview, stage drill-down and telemetry health are in dashboards/."""
        assert NAMES == ["stageflow-overview.json", "stageflow-stages.json", "stageflow-telemetry.json"]

    def test_uids_are_unique(self) -> None:
        """Every dashboard has its own uid."""
        uids = [d["uid"] for d in ALL.values()]
        assert len(set(uids)) == len(uids) == len(NAMES)

    def test_provider_path_is_where_compose_mounts_dashboards(self, services: dict[str, Any]) -> None:
        """The Grafana file provider reads the directory compose mounts dashboards/ on."""
        provider = load_yaml(COLLECTOR / "grafana" / "provisioning" / "dashboards" / "stageflow.yml")
        path = provider["providers"][0]["options"]["path"]
        assert f"./{DASHBOARDS.name}:{path}:ro" in services["grafana"]["volumes"]


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
class TestLayout:
    """Panels are uniquely identified and laid out on Grafana's 24-column grid."""

    def test_panel_ids_are_unique(self, name: str) -> None:
        """No two panels share an id."""
        ids = [p["id"] for p in iter_panels(ALL[name])]
        assert len(set(ids)) == len(ids)

    def test_panels_fit_in_24_columns(self, name: str) -> None:
        """Every gridPos has positive size and ends within column 24."""
        bad = [
            p["title"]
            for p in iter_panels(ALL[name])
            if p["gridPos"]["w"] <= 0 or p["gridPos"]["h"] <= 0 or p["gridPos"]["x"] + p["gridPos"]["w"] > 24
        ]
        assert bad == []

    def test_panels_do_not_overlap(self, name: str) -> None:
        """No two panels' rectangles intersect."""
        panels = list(iter_panels(ALL[name]))
        overlapping = [
            (a["title"], b["title"])
            for a, b in combinations(panels, 2)
            if _overlaps(a["gridPos"], b["gridPos"])
        ]
        assert overlapping == []

    def test_every_panel_has_a_title_and_a_query(self, name: str) -> None:
        """Each panel has a title and at least one target with an expression and a refId."""
        bad = [
            p.get("title")
            for p in iter_panels(ALL[name])
            if not p.get("title")
            or not p.get("targets")
            or any(not t.get("expr") or not t.get("refId") for t in p["targets"])
        ]
        assert bad == []


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
class TestQueries:
    """Queries use provisioned datasources, defined variables and semconv names only."""

    def test_datasource_uids_are_provisioned(self, name: str, datasources: dict[str, dict[str, Any]]) -> None:
        """Every datasource a dashboard references has a provisioned UID."""
        assert set(_datasource_uids(ALL[name])) - set(datasources) == set()

    def test_variables_used_are_defined(self, name: str) -> None:
        """Every `$var` in a query is a template variable or a Grafana built-in."""
        defined = {v["name"] for v in ALL[name]["templating"]["list"]}
        used = {
            m.group(1) or m.group(2)
            for q in panel_queries("s", "p")
            if q.dashboard == name
            for m in re.finditer(r"\$\{(\w+)[^}]*\}|\$(\w+)", q.raw_expr)
        }
        assert used - defined - {"__rate_interval", "__range", "__interval"} == set()

    def test_panel_queries_use_only_semconv_names(self, name: str) -> None:
        """Every metric and label in every panel query is derived from stageflow_otel.semconv."""
        problems = {
            f"{q.panel}/{q.ref_id}": promql_problems(q.raw_expr)
            for q in panel_queries("s", "p")
            if q.dashboard == name
        }
        assert {where: p for where, p in problems.items() if p} == {}

    def test_variable_queries_use_only_semconv_names(self, name: str) -> None:
        """Template variables read label values of semconv series."""
        problems = []
        for dashboard, _variable, query in variable_queries():
            if dashboard != name:
                continue
            match = LABEL_VALUES.match(query)
            assert match is not None, query
            problems += promql_problems(match.group(1)) + promql_problems(
                f"sum by ({match.group(2)}) ({match.group(1)})"
            )
        assert problems == []

    def test_resolved_queries_have_no_variables_left(self, name: str) -> None:
        """Resolving for a service and a pipeline leaves no `$` in any query."""
        leftovers = [
            q.expr
            for q in panel_queries("stageflow-demo", "checkout.v2")
            if q.dashboard == name and "$" in q.expr
        ]
        assert leftovers == []


class TestVariables:
    """The `service` and `pipeline` template variables."""

    @pytest.mark.parametrize("name", sorted(REQUIRED_VARIABLES), ids=sorted(REQUIRED_VARIABLES))
    def test_service_and_pipeline_variables(self, name: str) -> None:
        """Pipeline dashboards offer `service` (the job label) then `pipeline` (stageflow_pipeline_name)."""
        variables = {v["name"]: v["query"]["query"] for v in ALL[name]["templating"]["list"]}
        assert list(variables) == REQUIRED_VARIABLES[name]
        assert variables["service"].endswith(", job)")
        assert variables["pipeline"].endswith(", stageflow_pipeline_name)")

    def test_telemetry_dashboard_filters_by_service(self) -> None:
        """Telemetry health metrics carry no pipeline label, so that dashboard only has `service`."""
        assert [v["name"] for v in ALL["stageflow-telemetry.json"]["templating"]["list"]] == ["service"]


class TestContent:
    """The panels the stack promises."""

    @pytest.mark.parametrize(
        ("name", "titles"),
        [
            (
                "stageflow-overview.json",
                {
                    "Runs/s by result",
                    "Run error ratio",
                    "Run duration p50 / p95 / p99",
                    "Active runs",
                    "Event loop lag p50 / p99",
                    "Event loop utilization",
                    "Time to first output p50 / p95 / p99",
                },
            ),
            (
                "stageflow-stages.json",
                {
                    "Stage duration p50 / p95 / p99",
                    "Stage wait time p95",
                    "Critical-path share",
                    "Skips",
                    "Errors by error type",
                    "Circuit breaker state",
                    "Events/s by stage and event",
                    "Dispatch time p95",
                    "Abandoned work (range)",
                    "Event loop blocks by stage",
                    "Event loop blocked time by stage",
                    "Time to first chunk p50 / p95 / p99",
                },
            ),
            (
                "stageflow-telemetry.json",
                {
                    "Events dropped (range)",
                    "Spans dropped (range)",
                    "Export failures (range)",
                    "Log records dropped (range)",
                    "Metric points dropped (range)",
                    "Span links truncated (range)",
                    "Telemetry lost/s by signal and cause",
                    "Run store write duration p50 / p99",
                    "Run records dropped (range)",
                },
            ),
        ],
        ids=["overview", "stages", "telemetry"],
    )
    def test_promised_panels_exist(self, name: str, titles: set[str]) -> None:
        """Each dashboard has the panels its description promises."""
        assert titles - {p["title"] for p in iter_panels(ALL[name])} == set()

    def test_duration_percentiles_show_exemplars(self) -> None:
        """Stage and run duration percentile targets request exemplars (links to traces)."""
        targets = [
            t
            for name in ("stageflow-overview.json", "stageflow-stages.json")
            for p in iter_panels(ALL[name])
            if "duration p50" in p["title"].lower()
            for t in p["targets"]
        ]
        assert len(targets) == 6
        assert all(t.get("exemplar") is True for t in targets)

    def test_time_to_first_percentiles_use_the_streaming_histograms(self) -> None:
        """The time-to-first panels query the semconv histograms, p50/p95/p99, with exemplars."""
        found = {
            p["title"]: [
                (t["expr"].split("(")[0], t["expr"].split("(rate(")[1].split("{")[0], t["exemplar"])
                for t in p["targets"]
            ]
            for name in ("stageflow-overview.json", "stageflow-stages.json")
            for p in iter_panels(ALL[name])
            if p["title"].startswith("Time to first")
        }
        output = semconv.PIPELINE_RUN_TIME_TO_FIRST_OUTPUT.prometheus + "_bucket"
        chunk = semconv.STAGE_TIME_TO_FIRST_CHUNK_METRIC.prometheus + "_bucket"
        assert found == {
            "Time to first output p50 / p95 / p99": [("histogram_quantile", output, True)] * 3,
            "Time to first chunk p50 / p95 / p99": [("histogram_quantile", chunk, True)] * 3,
        }
        quantiles = [
            t["expr"].split(",")[0]
            for name in ("stageflow-overview.json", "stageflow-stages.json")
            for p in iter_panels(ALL[name])
            if p["title"].startswith("Time to first")
            for t in p["targets"]
        ]
        assert (
            quantiles == ["histogram_quantile(0.5", "histogram_quantile(0.95", "histogram_quantile(0.99"] * 2
        )

    def test_panel_queries_helper_covers_every_target(self) -> None:
        """panel_queries yields one entry per target of every panel."""
        targets = sum(len(p["targets"]) for d in ALL.values() for p in iter_panels(d))
        assert len(list(panel_queries("s", "p"))) == targets


class TestDatasourceLinks:
    """Cross-links between the provisioned datasources."""

    def test_exemplars_link_to_jaeger_by_trace_id(self, datasources: dict[str, dict[str, Any]]) -> None:
        """Prometheus exemplars' `trace_id` label opens the trace in the Jaeger datasource."""
        destinations = datasources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
        assert [(d["name"], d["datasourceUid"]) for d in destinations] == [("trace_id", "jaeger")]

    def test_traces_link_to_metrics_and_logs(self, datasources: dict[str, dict[str, Any]]) -> None:
        """Jaeger links spans to Prometheus and to Loki."""
        json_data = datasources["jaeger"]["jsonData"]
        assert (
            json_data["tracesToMetrics"]["datasourceUid"],
            json_data["tracesToLogsV2"]["datasourceUid"],
        ) == (
            "prometheus",
            "loki",
        )

    def test_jaeger_links_never_use_service_name(self, datasources: dict[str, dict[str, Any]]) -> None:
        """No link tag or query names ``service.name``: Jaeger's API never returns it as a span tag."""
        json_data = datasources["jaeger"]["jsonData"]
        assert [path for path, value in _strings(json_data) if "service.name" in value] == []

    def test_logs_link_filters_on_the_trace_id_alone(self, datasources: dict[str, dict[str, Any]]) -> None:
        """The Loki query's only variable is the trace id; its stream selector matches every service."""
        logs = datasources["jaeger"]["jsonData"]["tracesToLogsV2"]
        assert (logs["customQuery"], re.findall(r"\$\$\{([^}]*)\}", logs["query"])) == (
            True,
            ["__trace.traceId"],
        )
        assert logs["query"] == '{service_name=~".+"} | trace_id="$${__trace.traceId}"'

    def test_metrics_link_queries_the_spanmetrics_of_the_span(
        self, datasources: dict[str, dict[str, Any]], otelcol: dict[str, Any]
    ) -> None:
        """Metric links map span tags to the collector's spanmetrics dimensions, and query only those.

        Spanmetrics exist once per span on the collector path, so a link never adds the same stage
        twice when a process also serves its own /metrics (the job filter it would need is unknowable
        from the span).
        """
        link = datasources["jaeger"]["jsonData"]["tracesToMetrics"]
        dimensions = [d["name"] for d in otelcol["connectors"]["span_metrics"]["dimensions"]]
        assert [(t["key"], t["value"]) for t in link["tags"]] == [
            (name, semconv.prometheus_label(name)) for name in dimensions
        ]
        families = {"traces_span_metrics_calls_total", "traces_span_metrics_duration_milliseconds_bucket"}
        labels = {"le", "status_code", "span_name", "span_kind", "service_name"}
        for query in link["queries"]:
            parsed = parse_promql(query["query"])
            assert {s.metric for s in parsed.selectors} <= families, query
            assert set(parsed.grouping) <= labels, query
            assert "{$$__tags}" in query["query"], query

    def test_logs_link_to_jaeger(self, datasources: dict[str, dict[str, Any]]) -> None:
        """Loki's `trace_id` structured metadata becomes a link to the Jaeger datasource."""
        fields = datasources["loki"]["jsonData"]["derivedFields"]
        assert [(f["matcherRegex"], f["datasourceUid"]) for f in fields] == [("trace_id", "jaeger")]
