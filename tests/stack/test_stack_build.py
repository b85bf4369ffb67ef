"""The slim collector's manifest, the pinned releases, and the built consumers themselves.

Static: collector/builder-config.yaml lists exactly the components collector/otelcol.yaml uses, at the
collector release docker-compose.yml runs; the Jaeger and Prometheus module versions build-stack.sh pins
are the releases compose runs. With the binaries (collector/build-stack.sh): ``otelcol validate`` accepts
the shipped config unmodified, and ``otelcol components`` confirms the manifest's component names.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ._assets import COLLECTOR, load_yaml
from ._stack import stack_binary, stack_built, stack_paths

MANIFEST = load_yaml(COLLECTOR / "builder-config.yaml")
KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")
CONTRIB = "github.com/open-telemetry/opentelemetry-collector-contrib"
MODULE_TYPES = {
    # The component type each manifest module registers in 0.161.0 (confirmed live by
    # `otelcol components` in TestBuiltCollector).
    "go.opentelemetry.io/collector/receiver/otlpreceiver": "otlp",
    "go.opentelemetry.io/collector/processor/memorylimiterprocessor": "memory_limiter",
    "go.opentelemetry.io/collector/processor/batchprocessor": "batch",
    "go.opentelemetry.io/collector/exporter/otlpexporter": "otlp_grpc",
    "go.opentelemetry.io/collector/exporter/otlphttpexporter": "otlp_http",
    f"{CONTRIB}/exporter/prometheusexporter": "prometheus",
    f"{CONTRIB}/connector/spanmetricsconnector": "span_metrics",
    f"{CONTRIB}/extension/healthcheckextension": "health_check",
}
JAEGER_RELEASES = {"v1.76.0": "2.13.0"}
"""Jaeger tags each release twice on one commit: the v1.x module version and the v2.y release."""


def _modules(kind: str) -> list[tuple[str, str]]:
    """``(module, version)`` of each manifest entry of one kind."""
    return [tuple(entry["gomod"].split()) for entry in MANIFEST.get(kind) or []]


def _used_types(otelcol: dict[str, Any], kind: str) -> set[str]:
    return {name.split("/", 1)[0] for name in otelcol.get(kind) or {}}


def _image_tag(services: dict[str, Any], service: str) -> str:
    return str(services[service]["image"]).split("@", 1)[0].rsplit(":", 1)[1]


class TestManifest:
    """collector/builder-config.yaml against collector/otelcol.yaml and docker-compose.yml."""

    @pytest.mark.parametrize("kind", KINDS)
    def test_lists_exactly_the_components_the_config_uses(self, otelcol: dict[str, Any], kind: str) -> None:
        """Per kind, the manifest's component types are the config's, no more, no fewer."""
        listed = sorted(MODULE_TYPES[module] for module, _ in _modules(kind))
        assert listed == sorted(_used_types(otelcol, kind))

    def test_every_module_is_the_release_compose_runs(self, services: dict[str, Any]) -> None:
        """dist.version and every module version are the collector-contrib image's tag."""
        tag = _image_tag(services, "otel-collector")
        versions = {version for kind in KINDS for _, version in _modules(kind)}
        assert (MANIFEST["dist"]["version"], versions) == (tag, {f"v{tag}"})

    def test_builds_under_the_cache_name_the_script_prints(self) -> None:
        """build-stack.sh reads the collector version from the manifest."""
        assert stack_paths()["collector_version"] == MANIFEST["dist"]["version"]


class TestPinnedReleases:
    """The Jaeger and Prometheus modules build-stack.sh builds are the releases compose runs."""

    def test_jaeger_module_is_the_compose_release(self, services: dict[str, Any]) -> None:
        """Jaeger module v1.76.0 is release 2.13.0, the compose image's tag."""
        module = stack_paths()["jaeger_module_version"]
        assert JAEGER_RELEASES[module] == _image_tag(services, "jaeger")

    def test_jaeger_changelog_names_both_tags(self) -> None:
        """The module's own CHANGELOG heads the release with both of its tags."""
        module = stack_paths()["jaeger_module_version"]
        changelog = (
            Path(stack_paths()["gomodcache"]) / f"github.com/jaegertracing/jaeger@{module}/CHANGELOG.md"
        )
        text = stack_built(changelog, "Jaeger's module source").read_text(encoding="utf-8")
        assert re.search(rf"^{re.escape(module)} / v{re.escape(JAEGER_RELEASES[module])} \(", text, re.M)

    def test_prometheus_module_is_the_compose_release(self, services: dict[str, Any]) -> None:
        """Prometheus module v0.314.0 is release 3.14.0, the compose image's tag (v3.14.0)."""
        module = stack_paths()["prometheus_module_version"]
        assert f"v3.{module.removeprefix('v0.3')}" == _image_tag(services, "prometheus")

    def test_prometheus_changelog_heads_with_the_release(self) -> None:
        """The module's own CHANGELOG's first release heading is 3.14.0."""
        module = stack_paths()["prometheus_module_version"]
        changelog = (
            Path(stack_paths()["gomodcache"]) / f"github.com/prometheus/prometheus@{module}/CHANGELOG.md"
        )
        text = stack_built(changelog, "Prometheus's module source").read_text(encoding="utf-8")
        first = re.search(r"^## (\S+) /", text, re.M)
        assert first is not None and first.group(1) == f"3.{module.removeprefix('v0.3')}"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)


class TestBuiltCollector:
    """The slim collector build-stack.sh built from the manifest."""

    def test_validate_accepts_the_shipped_config(self) -> None:
        """``otelcol validate --config collector/otelcol.yaml`` (the file as shipped) exits 0, silent."""
        done = _run(stack_binary("otelcol"), "validate", f"--config={COLLECTOR / 'otelcol.yaml'}")
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")

    def test_validate_rejects_a_config_naming_a_missing_component(self, tmp_path: Path) -> None:
        """The same command fails on a component the slim build lacks (the check can fail)."""
        config = (COLLECTOR / "otelcol.yaml").read_text(encoding="utf-8")
        broken = tmp_path / "otelcol.yaml"
        broken.write_text(config.replace("  batch:\n", "  batch:\n  tail_sampling:\n", 1), encoding="utf-8")
        done = _run(stack_binary("otelcol"), "validate", f"--config={broken}")
        assert done.returncode != 0 and "tail_sampling" in done.stderr, done

    def test_components_are_the_manifest_types(self) -> None:
        """``otelcol components`` lists, per kind, the types MODULE_TYPES gives the manifest's modules."""
        done = _run(stack_binary("otelcol"), "components")
        assert done.returncode == 0, done.stderr
        built = load_yaml_text(done.stdout)
        got = {
            kind: sorted((c["module"].split()[0], c["name"]) for c in built.get(kind) or []) for kind in KINDS
        }
        expected = {kind: sorted((m, MODULE_TYPES[m]) for m, _ in _modules(kind)) for kind in KINDS}
        assert got == expected

    def test_reports_the_compose_release(self, services: dict[str, Any]) -> None:
        """``otelcol --version`` is the collector-contrib image's tag."""
        done = _run(stack_binary("otelcol"), "--version")
        assert done.stdout.split() == ["otelcol-stageflow", "version", _image_tag(services, "otel-collector")]


def load_yaml_text(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)
