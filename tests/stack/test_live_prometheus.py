"""A real Prometheus scraping the real demo: every dashboard query returns data, exemplars, rules, loopback.

The module starts ``python -m stageflow_otel demo`` (no ``OTEL_*`` variables: only its ``/metrics``) and
a ``prometheus`` server (Prometheus 3, built by ``collector/build-stack.sh``) configured from
``collector/prometheus.yml`` with the ``stageflow-demo`` job pointed at the demo, then queries
Prometheus's HTTP API. Both processes listen on 127.0.0.1 only and are stopped by pid at the end; the
demo must exit 0 on SIGTERM.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ._assets import COLLECTOR, load_yaml
from ._live import Child, PrometheusAPI, free_port, listening_sockets, wait_until, write_prometheus_config
from ._stack import stack_binary
from .dashboards import PanelQuery, each_variable, label_values_query, panel_queries

JOB = "stageflow-demo"
PIPELINE = "voice-assistant"
RATE_INTERVAL = "15s"
"""``$__rate_interval``: Grafana's usual value (at least four scrape intervals; we scrape every 1 s)."""
TIME_RANGE = "5m"
READY_TIMEOUT = 60.0
DATA_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0

PANELS = list(panel_queries(JOB, PIPELINE, rate_interval=RATE_INTERVAL, time_range=TIME_RANGE))
EXPECTED_VARIABLES = {"service": [JOB], "pipeline": [PIPELINE]}
HEX_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")

KEY_SERIES = (
    f'stageflow_pipeline_run_duration_seconds_count{{job="{JOB}", stageflow_run_result="success"}}',
    f'stageflow_pipeline_run_errors_total{{job="{JOB}"}}',
    f'stageflow_stage_duration_seconds_count{{job="{JOB}", error_type!=""}}',
    f'stageflow_stage_wait_duration_seconds_count{{job="{JOB}"}}',
    f'stageflow_stage_critical_path_duration_seconds_count{{job="{JOB}"}}',
    f'stageflow_stage_skips_total{{job="{JOB}"}}',
    f'stageflow_circuit_breaker_state{{job="{JOB}"}}',
)
"""Series the demo emits within its first runs; rates over them need a few scrapes of each."""
MIN_SCRAPES = 4


def _panel_id(query: PanelQuery) -> str:
    return f"{query.dashboard.removesuffix('.json')}/{query.panel}/{query.ref_id}"


@dataclass(frozen=True, slots=True)
class LiveStack:
    """The running demo and Prometheus, and the API of the latter."""

    demo: Child
    prometheus: Child
    api: PrometheusAPI
    metrics_port: int
    web_port: int
    started: float


def _two_free_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def _has_key_series(api: PrometheusAPI) -> bool:
    """Whether Prometheus holds ``MIN_SCRAPES`` samples of each of ``KEY_SERIES`` from the last minute."""
    return all(
        any(float(s["value"][1]) >= MIN_SCRAPES for s in api.query(f"count_over_time({series}[1m])"))
        for series in KEY_SERIES
    )


def _rule_names(kind: str) -> set[str]:
    """Names of the ``record`` or ``alert`` rules in collector/rules/*.yml."""
    names: set[str] = set()
    for path in sorted((COLLECTOR / "rules").glob("*.yml")):
        for group in load_yaml(path)["groups"]:
            names |= {rule[kind] for rule in group["rules"] if kind in rule}
    return names


def _failure(message: str, *children: Child) -> str:
    logs = "\n".join(f"--- {c.name} (pid {c.pid}) output:\n{c.output()}" for c in children)
    return f"{message}\n{logs}"


@pytest.fixture(name="stack", scope="module")
def _stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """The demo and a Prometheus scraping it every second, running until the module's tests are done."""
    prometheus_bin = stack_binary("prometheus")
    directory = tmp_path_factory.mktemp("live-prometheus")
    metrics_port, web_port = _two_free_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    started = time.time()
    demo = Child(
        "demo",
        [
            sys.executable,
            "-m",
            "stageflow_otel",
            "demo",
            "--metrics-port",
            str(metrics_port),
            "--speed",
            "0.05",
            "--seed",
            "7",
            "--quiet",
        ],
        directory / "demo.log",
        env,
        cwd=directory,
    )
    prometheus: Child | None = None
    try:
        config = write_prometheus_config(directory, job=JOB, target=f"127.0.0.1:{metrics_port}")
        prometheus = Child(
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
                "--enable-feature=exemplar-storage",
            ],
            directory / "prometheus.log",
            cwd=directory,
        )
        api = PrometheusAPI(f"http://127.0.0.1:{web_port}")
        alive = (demo, prometheus)
        if not wait_until(lambda: api.ready() or not all(c.running() for c in alive), timeout=READY_TIMEOUT):
            pytest.fail(_failure(f"Prometheus not ready within {READY_TIMEOUT} s", *alive))
        if not all(c.running() for c in alive):
            pytest.fail(_failure("a process exited early", *alive))
        if not wait_until(
            lambda: not demo.running() or _has_key_series(api), timeout=DATA_TIMEOUT, interval=0.5
        ):
            pytest.fail(_failure(f"the demo's key series not scraped within {DATA_TIMEOUT} s", *alive))
        if not demo.running():
            pytest.fail(_failure("the demo exited early", *alive))
        yield LiveStack(demo, prometheus, api, metrics_port, web_port, started)
    finally:
        server_code = prometheus.stop(STOP_TIMEOUT) if prometheus is not None else 0
        demo_code = demo.stop(STOP_TIMEOUT)
    assert (demo_code, server_code) == (0, 0), _failure(
        "exit codes after SIGTERM (demo, prometheus)", demo, *([prometheus] if prometheus else [])
    )


class TestDashboardPanels:
    """Every panel query of every provisioned dashboard returns data from the live demo."""

    @pytest.mark.parametrize("query", PANELS, ids=[_panel_id(q) for q in PANELS])
    def test_panel_query_returns_data(self, stack: LiveStack, query: PanelQuery) -> None:
        """The resolved query succeeds and yields at least one finite sample.

        A quantile or ratio over a 15 s window is NaN while that window holds no new sample (a scrape
        late on a loaded machine): polled, as a dashboard refreshes."""
        assert wait_until(lambda: bool(stack.api.finite(query.expr)), timeout=DATA_TIMEOUT, interval=1.0), (
            f"no data: {query.expr} -> {stack.api.query(query.expr)}"
        )


class TestTemplateVariables:
    """The dashboards' template variables offer the demo's job and pipeline."""

    @each_variable()
    def test_variable_query_returns_the_expected_values(
        self, stack: LiveStack, dashboard: str, name: str, query: str
    ) -> None:
        """``label_values(selector, label)`` lists exactly the demo's job or pipeline."""
        selector, label = label_values_query(query, JOB)
        assert stack.api.label_values(label, selector) == EXPECTED_VARIABLES[name]


class TestExemplars:
    """Histogram samples carry exemplars that link to traces."""

    def test_stage_duration_buckets_have_trace_id_exemplars(self, stack: LiveStack) -> None:
        """Exemplars of the stage duration buckets have a 32-hex-digit trace_id within their bucket."""
        series = stack.api.exemplars(
            f'stageflow_stage_duration_seconds_bucket{{job="{JOB}"}}', stack.started, time.time() + 1
        )
        exemplars = [(s["seriesLabels"], e) for s in series for e in s["exemplars"]]
        assert exemplars, series
        bad_ids = [
            e["labels"] for _, e in exemplars if not HEX_TRACE_ID.match(e["labels"].get("trace_id", ""))
        ]
        outside = [
            (labels["le"], e["value"]) for labels, e in exemplars if float(e["value"]) > float(labels["le"])
        ]
        assert (bad_ids, outside) == ([], [])


class TestRules:
    """The recording and alerting rules of collector/rules load and evaluate."""

    def test_every_rule_is_loaded_and_healthy(self, stack: LiveStack) -> None:
        """``/api/v1/rules`` lists every rule of the rule files, each evaluated with health ok."""
        expected = _rule_names("record") | _rule_names("alert")
        assert wait_until(
            lambda: all(r["health"] == "ok" for r in stack.api.rules()), timeout=DATA_TIMEOUT, interval=0.5
        ), stack.api.rules()
        rules = stack.api.rules()
        assert sorted(r["name"] for r in rules) == sorted(expected)
        assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []

    @pytest.mark.parametrize("record", sorted(_rule_names("record")))
    def test_recording_rule_produces_series(self, stack: LiveStack, record: str) -> None:
        """Each recorded series exists for the demo's job and pipeline."""
        selector = f'{record}{{job="{JOB}", stageflow_pipeline_name="{PIPELINE}"}}'
        assert wait_until(lambda: bool(stack.api.finite(selector)), timeout=DATA_TIMEOUT, interval=0.5), (
            selector
        )


class TestNetwork:
    """The processes the test started listen on loopback only."""

    def test_nothing_listens_outside_loopback(self, stack: LiveStack) -> None:
        """Every listening socket of the demo and Prometheus is bound to 127.0.0.1, on the chosen ports."""
        found = {c.name: listening_sockets(c.pid) for c in (stack.demo, stack.prometheus)}
        outside = {name: [s for s in sockets if s[1] != "127.0.0.1"] for name, sockets in found.items()}
        ports = {name: sorted(port for _, _, port in sockets) for name, sockets in found.items()}
        assert (outside, ports) == (
            {"demo": [], "prometheus": []},
            {"demo": [stack.metrics_port], "prometheus": [stack.web_port]},
        )
