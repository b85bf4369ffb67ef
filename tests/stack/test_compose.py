"""docker-compose.yml: schema-valid, pinned, bound to 127.0.0.1, complete, and wired as documented."""

from __future__ import annotations

import importlib.resources
import json
import re
from typing import Any

import jsonschema

from ._assets import COLLECTOR, COMPOSE_FILE, REPO, load_yaml

PINNED = re.compile(r"^[a-z0-9][\w./-]*:[\w][\w.-]*@sha256:[0-9a-f]{64}$")
REQUIRED = re.compile(r"^\$\{(\w+):\?([^}]+)\}$")
EXPECTED_SERVICES = {"otel-collector", "jaeger", "prometheus", "grafana", "loki", "demo"}
TAG_ONLY = {"jaeger": "jaegertracing/jaeger:2.13.0"}
"""Images pinned by tag alone (no digest of that tag could be found; the compose file says so)."""


def _compose_schema() -> dict[str, Any]:
    """The compose-spec JSON schema vendored by check-jsonschema (pinned in the dev extra)."""
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema


def _images(services: dict[str, Any]) -> dict[str, str]:
    """Every image reference: ``image:`` keys and the FROM lines of inline Dockerfiles."""
    images: dict[str, str] = {}
    for name, service in services.items():
        if "image" in service:
            images[name] = service["image"]
        inline = service.get("build", {}).get("dockerfile_inline", "")
        for index, line in enumerate(re.findall(r"^FROM\s+(\S+)", inline, re.MULTILINE)):
            images[f"{name} (FROM #{index})"] = line
    return images


class TestComposeFile:
    """The compose file as a whole."""

    def test_validates_against_the_compose_spec_schema(self, compose: dict[str, Any]) -> None:
        """docker-compose.yml has no compose-spec schema violations."""
        validator = jsonschema.Draft202012Validator(_compose_schema())
        errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
        assert errors == []

    def test_runs_the_documented_services(self, services: dict[str, Any]) -> None:
        """The stack is collector, Jaeger, Prometheus, Grafana, Loki, and the demo."""
        assert set(services) == EXPECTED_SERVICES

    def test_every_image_is_pinned_by_tag_and_digest(self, services: dict[str, Any]) -> None:
        """Every image, including inline Dockerfile bases, is `name:tag@sha256:<64 hex>`, but Jaeger's.

        Jaeger runs the release CI builds from the Go module proxy, whose digest no public pin gave.
        """
        images = _images(services)
        assert {name: ref for name, ref in images.items() if not PINNED.match(ref)} == TAG_ONLY
        assert len(images) == len(EXPECTED_SERVICES)

    def test_every_published_port_is_bound_to_loopback(self, services: dict[str, Any]) -> None:
        """Published ports are `127.0.0.1:host:container` strings, never all interfaces."""
        ports = [(name, str(p)) for name, s in services.items() for p in s.get("ports", [])]
        assert ports
        assert [(name, p) for name, p in ports if not p.startswith("127.0.0.1:")] == []

    def test_every_bind_mounted_host_path_exists(self, services: dict[str, Any]) -> None:
        """Each `./path:/container` volume names a file or directory in the repo."""
        mounts = [
            (name, v.split(":")[0])
            for name, s in services.items()
            for v in s.get("volumes", [])
            if v[0] == "."
        ]
        assert mounts
        assert [(name, path) for name, path in mounts if not (REPO / path).exists()] == []

    def test_named_volumes_are_declared(self, compose: dict[str, Any], services: dict[str, Any]) -> None:
        """Named volumes used by services are declared at the top level."""
        named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if v[0] != "."}
        assert named == set(compose["volumes"])

    def test_inline_dockerfile_copies_existing_paths(self, services: dict[str, Any]) -> None:
        """The demo's inline Dockerfile copies only files that exist in the build context."""
        inline = services["demo"]["build"]["dockerfile_inline"]
        sources = [
            p for line in re.findall(r"^COPY\s+(.+)$", inline, re.MULTILINE) for p in line.split()[:-1]
        ]
        assert sources
        assert [p for p in sources if not (REPO / p).exists()] == []


class TestHealth:
    """Healthchecks and start order."""

    def test_every_service_has_a_healthcheck_or_is_probed_by_prometheus(
        self, services: dict[str, Any]
    ) -> None:
        """Services whose image has no shell are probed by Prometheus's healthcheck, the rest by their own."""
        probe = " ".join(services["prometheus"]["healthcheck"]["test"])
        missing = []
        for name, service in services.items():
            check = service.get("healthcheck", {})
            if check.get("disable"):
                if f"http://{name}:" not in probe:
                    missing.append(name)
            elif not check.get("test"):
                missing.append(name)
        assert missing == []

    def test_dependencies_name_existing_services(self, services: dict[str, Any]) -> None:
        """Every `depends_on` entry is a service of this file."""
        deps = {d for s in services.values() for d in s.get("depends_on", {})}
        assert deps <= set(services)


class TestServices:
    """The settings each service must have."""

    def test_prometheus_stores_exemplars(self, services: dict[str, Any]) -> None:
        """Prometheus runs with exemplar storage and without an unused remote-write receiver."""
        command = services["prometheus"]["command"]
        assert "--enable-feature=exemplar-storage" in command
        assert "--web.enable-remote-write-receiver" not in command

    def test_grafana_admin_password_is_required_from_the_environment(self, services: dict[str, Any]) -> None:
        """Grafana's admin password is `${GRAFANA_ADMIN_PASSWORD:?message}`: no default, and compose stops
        with a message naming the variable while it is unset or empty."""
        value = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
        match = REQUIRED.match(value)
        assert match is not None, value
        assert (match.group(1), "GRAFANA_ADMIN_PASSWORD" in match.group(2)) == (
            "GRAFANA_ADMIN_PASSWORD",
            True,
        )

    def test_no_grafana_setting_has_a_default_value(self, services: dict[str, Any]) -> None:
        """No Grafana variable falls back to a default (`${VAR:-x}`, `${VAR-x}`) a password could hide in."""
        values = [str(v) for v in services["grafana"]["environment"].values()]
        assert [v for v in values if re.search(r"\$\{\w+:?-", v)] == []

    def test_grafana_has_no_anonymous_access(self, services: dict[str, Any]) -> None:
        """Anonymous access is off: every user signs in."""
        environment = services["grafana"]["environment"]
        assert (environment["GF_AUTH_ANONYMOUS_ENABLED"], "GF_AUTH_ANONYMOUS_ORG_ROLE" in environment) == (
            "false",
            False,
        )

    def test_loki_is_not_published(self, services: dict[str, Any]) -> None:
        """Loki has no published port: nothing outside the compose network can write to it."""
        assert services["loki"].get("ports", []) == []

    def test_loki_refuses_requests_without_a_tenant(self) -> None:
        """Loki runs multi-tenant (`auth_enabled: true`): a request without X-Scope-OrgID is refused."""
        assert load_yaml(COLLECTOR / "loki" / "config.yaml")["auth_enabled"] is True

    def test_the_collector_writes_and_grafana_reads_one_tenant(
        self, otelcol: dict[str, Any], datasources: dict[str, dict[str, Any]]
    ) -> None:
        """The collector's Loki exporter sends X-Scope-OrgID; Grafana's Loki datasource reads that tenant."""
        written = otelcol["exporters"]["otlp_http/loki"]["headers"]
        loki = datasources["loki"]
        header = loki["jsonData"]["httpHeaderName1"]
        read = {header: loki["secureJsonData"]["httpHeaderValue1"]}
        assert (written, read) == ({"X-Scope-OrgID": "stageflow"}, {"X-Scope-OrgID": "stageflow"})

    def test_demo_runs_stageflow_otel_against_the_collector(self, services: dict[str, Any]) -> None:
        """The demo is opt-in (a profile) and runs `python -m stageflow_otel demo` against the collector."""
        demo = services["demo"]
        assert demo["profiles"] == ["demo"]
        assert demo["command"][:4] == ["python", "-m", "stageflow_otel", "demo"]
        assert demo["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"

    def test_demo_metrics_port_matches_its_scrape_target(
        self, services: dict[str, Any], prometheus_config: dict[str, Any]
    ) -> None:
        """Prometheus scrapes the demo's /metrics on the port the demo is told to serve."""
        demo = services["demo"]
        port = demo["command"][demo["command"].index("--metrics-port") + 1]
        jobs = {job["job_name"]: job for job in prometheus_config["scrape_configs"]}
        targets = jobs["stageflow-demo"]["static_configs"][0]["targets"]
        assert targets == [f"demo:{port}"]
        assert demo["environment"]["OTEL_EXPORTER_PROMETHEUS_PORT"] == port

    def test_demo_exports_events_as_log_records_for_loki(self, services: dict[str, Any]) -> None:
        """Events are span events by default; the demo switches log records on so Loki shows them too."""
        assert services["demo"]["environment"]["STAGEFLOW_EVENT_LOG_RECORDS"] == "true"

    def test_demo_paths_do_not_share_a_job(
        self, services: dict[str, Any], prometheus_config: dict[str, Any]
    ) -> None:
        """The demo's OTLP service.name (the collector path's `job`) differs from its direct scrape job."""
        jobs = {job["job_name"] for job in prometheus_config["scrape_configs"]}
        assert services["demo"]["environment"]["OTEL_SERVICE_NAME"] not in jobs

    def test_compose_file_is_at_the_repo_root(self) -> None:
        """`docker compose up` from the repo root finds the file."""
        assert COMPOSE_FILE.parent == REPO
