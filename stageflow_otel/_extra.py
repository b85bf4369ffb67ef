"""Fail the import of ``stageflow_otel`` with the install command when the ``otel`` extra is missing."""

from __future__ import annotations

import importlib.util

__all__ = ("INSTALL_HINT", "missing_modules")

INSTALL_HINT = "pip install 'stageflow-core[otel]'"
"""The command that installs what stageflow_otel needs."""

_REQUIRED = ("opentelemetry.sdk", "opentelemetry.exporter.otlp", "prometheus_client", "structlog")


def missing_modules() -> list[str]:
    """The modules of the ``otel`` extra that cannot be imported."""
    missing = []
    for name in _REQUIRED:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # the parent package itself is missing
            found = False
        if not found:
            missing.append(name)
    return missing


_missing = missing_modules()
if _missing:
    msg = (
        f"stageflow_otel needs the 'otel' extra, which is not installed (missing: {', '.join(_missing)}); "
        f"install it with {INSTALL_HINT}"
    )
    raise ImportError(msg, name=_missing[0])
