"""collector/prometheus.yml and collector/rules: promtool-valid, unit-tested, and named from semconv."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from ._assets import COLLECTOR, load_yaml, promql_problems

RULE_FILES = sorted((COLLECTOR / "rules").glob("*.yml"))
RULE_TESTS = sorted((COLLECTOR / "rules" / "tests").glob("*.yml"))
REQUIRED_ALERTS = {
    "StageErrorRatioHigh",
    "CircuitBreakerOpen",
    "TelemetryEventsDropped",
    "TelemetrySpansDropped",
}
REQUIRED_RECORDS = {"stageflow:stage_error_ratio:rate5m", "stageflow:pipeline_run_duration_seconds:p95_5m"}


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool from collector/ (rule_files paths are relative to prometheus.yml)."""
    return subprocess.run(
        [promtool, *args], cwd=COLLECTOR, capture_output=True, text=True, timeout=120, check=False
    )


def _rules() -> list[dict[str, Any]]:
    """Every rule of every rule file."""
    return [rule for path in RULE_FILES for group in load_yaml(path)["groups"] for rule in group["rules"]]


class TestPromtool:
    """promtool accepts the configuration and the rules, and the rule unit tests pass."""

    def test_check_config(self, promtool: str) -> None:
        """`promtool check config prometheus.yml` succeeds (it also checks the rule files it names)."""
        result = _promtool(promtool, "check", "config", "prometheus.yml")
        assert result.returncode == 0, result.stdout + result.stderr

    def test_check_rules(self, promtool: str) -> None:
        """`promtool check rules` succeeds on every rule file."""
        result = _promtool(promtool, "check", "rules", *(str(p) for p in RULE_FILES))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_rule_unit_tests_pass(self, promtool: str) -> None:
        """`promtool test rules` passes for every unit-test file."""
        assert RULE_TESTS
        result = _promtool(promtool, "test", "rules", *(str(p) for p in RULE_TESTS))
        assert result.returncode == 0, result.stdout + result.stderr


class TestRules:
    """What the rules define and query."""

    def test_required_records_and_alerts_exist(self) -> None:
        """The stage error ratio and run p95 records and the four alerts are defined."""
        rules = _rules()
        assert {r["record"] for r in rules if "record" in r} == REQUIRED_RECORDS
        assert {r["alert"] for r in rules if "alert" in r} == REQUIRED_ALERTS

    def test_rules_query_only_semconv_names(self) -> None:
        """Rule expressions use semconv series and labels, or series recorded by these rules."""
        records = [r["record"] for r in _rules() if "record" in r]
        problems = {r.get("record") or r["alert"]: promql_problems(r["expr"], records) for r in _rules()}
        assert {name: p for name, p in problems.items() if p} == {}

    def test_alerts_have_summary_and_severity(self) -> None:
        """Every alert carries a severity label and summary/description annotations."""
        alerts = [r for r in _rules() if "alert" in r]
        incomplete = [
            a["alert"]
            for a in alerts
            if "severity" not in a.get("labels", {})
            or {"summary", "description"} - set(a.get("annotations", {}))
        ]
        assert incomplete == []

    @pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS), ids=sorted(REQUIRED_ALERTS))
    def test_each_alert_is_unit_tested_firing_and_not_firing(self, alert: str) -> None:
        """Each alert has a unit test expecting it to fire and one expecting silence."""
        cases = [
            case
            for path in RULE_TESTS
            for test in load_yaml(path)["tests"]
            for case in test.get("alert_rule_test", [])
            if case["alertname"] == alert
        ]
        assert {bool(case.get("exp_alerts")) for case in cases} == {True, False}

    def test_each_record_is_unit_tested(self) -> None:
        """Each recording rule's output is checked by a promql_expr_test."""
        exprs = " ".join(
            case["expr"]
            for path in RULE_TESTS
            for test in load_yaml(path)["tests"]
            for case in test.get("promql_expr_test", [])
        )
        assert {record for record in REQUIRED_RECORDS if record not in exprs} == set()


class TestScrapeConfig:
    """prometheus.yml loads the rules and scrapes both metric paths."""

    def test_rule_files_glob_matches_the_rule_files(self, prometheus_config: dict[str, Any]) -> None:
        """The relative rule_files globs pick up exactly the repo's rule files."""
        matched = sorted(p for pattern in prometheus_config["rule_files"] for p in COLLECTOR.glob(pattern))
        assert matched == RULE_FILES

    def test_scrape_jobs(self, prometheus_config: dict[str, Any]) -> None:
        """The collector exporter, the collector's own telemetry and the demo's /metrics are scraped."""
        jobs = [job["job_name"] for job in prometheus_config["scrape_configs"]]
        assert jobs == ["otel-collector", "otel-collector-internal", "stageflow-demo"]
