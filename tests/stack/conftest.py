"""Fixtures for the stack tests: the parsed compose file, collector, Prometheus and Grafana configs."""

from __future__ import annotations

from typing import Any

import pytest

from ._assets import COLLECTOR, COMPOSE_FILE, load_yaml
from ._stack import stack_binary


@pytest.fixture(name="compose", scope="session")
def _compose() -> dict[str, Any]:
    """docker-compose.yml, parsed."""
    document: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return document


@pytest.fixture(name="services", scope="session")
def _services(compose: dict[str, Any]) -> dict[str, Any]:
    """The compose services by name."""
    services: dict[str, Any] = compose["services"]
    return services


@pytest.fixture(name="otelcol", scope="session")
def _otelcol() -> dict[str, Any]:
    """collector/otelcol.yaml, parsed."""
    document: dict[str, Any] = load_yaml(COLLECTOR / "otelcol.yaml")
    return document


@pytest.fixture(name="prometheus_config", scope="session")
def _prometheus_config() -> dict[str, Any]:
    """collector/prometheus.yml, parsed."""
    document: dict[str, Any] = load_yaml(COLLECTOR / "prometheus.yml")
    return document


@pytest.fixture(name="datasources", scope="session")
def _datasources() -> dict[str, dict[str, Any]]:
    """The provisioned Grafana datasources by UID."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((COLLECTOR / "grafana" / "provisioning" / "datasources").glob("*.yml")):
        for datasource in load_yaml(path)["datasources"]:
            found[datasource["uid"]] = datasource
    return found


@pytest.fixture(name="promtool", scope="session")
def _promtool() -> str:
    """Path of Prometheus 3's promtool built by collector/build-stack.sh (skips without it, fails in CI)."""
    return stack_binary("promtool")
