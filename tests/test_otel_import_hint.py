"""``stageflow.interceptors`` resolves the OpenTelemetry interceptors lazily, with an install hint."""

from __future__ import annotations

import subprocess
import sys

import pytest

HIDE_OTEL = "import sys; sys.modules['stageflow_otel'] = None\n"


class TestOtelImportHint:
    @pytest.mark.parametrize("name", ["TracingInterceptor", "MetricsInterceptor", "LoggingInterceptor"])
    def test_missing_extra_names_the_install_command(self, name: str) -> None:
        """Without stageflow_otel the import fails with an ImportError that says how to install it."""
        code = HIDE_OTEL + (
            "try:\n"
            f"    from stageflow.interceptors import {name}\n"
            "except ImportError as exc:\n"
            "    print(type(exc).__name__, exc.name, exc)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.startswith(
            f"ImportError {name} {name} lives in the OpenTelemetry companion package; install it with "
            "pip install 'stageflow-core[otel]' ("
        )

    def test_core_import_does_not_import_otel(self) -> None:
        """Importing stageflow and stageflow.interceptors loads no OpenTelemetry module."""
        code = (
            "import sys, stageflow, stageflow.interceptors\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('opentelemetry', 'stageflow_otel', 'structlog', 'prometheus_client')))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out == "[]\n"

    def test_installed_extra_resolves_to_the_otel_classes(self) -> None:
        """With the extra installed the names are stageflow_otel's classes."""
        pytest.importorskip("opentelemetry.sdk")
        import stageflow_otel
        from stageflow.interceptors import LoggingInterceptor, MetricsInterceptor, TracingInterceptor

        assert (TracingInterceptor, MetricsInterceptor, LoggingInterceptor) == (
            stageflow_otel.TracingInterceptor,
            stageflow_otel.MetricsInterceptor,
            stageflow_otel.LoggingInterceptor,
        )

    def test_unknown_name_is_an_attribute_error(self) -> None:
        """Other missing names raise AttributeError naming the module."""
        import stageflow.interceptors

        with pytest.raises(AttributeError, match=r"module 'stageflow.interceptors' has no attribute 'Nope'"):
            stageflow.interceptors.Nope  # noqa: B018
