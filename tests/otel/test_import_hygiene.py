"""stageflow_otel depends only on stageflow's public names, and its interceptors are reachable lazily."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import ast
import importlib
from pathlib import Path

import stageflow_otel

PACKAGE = Path(stageflow_otel.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
PUBLIC_MODULES = (
    "stageflow",
    "stageflow.context",
    "stageflow.interceptors",
    "stageflow.stages",
    "stageflow.testing",
)


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def violations(path: Path) -> list[str]:
    """Every use of a private ``stageflow`` module or name in one source file, as ``line: text``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "stageflow" and any(_private(p) for p in parts):
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            parts = node.module.split(".")
            if parts[0] != "stageflow":
                continue
            if any(_private(p) for p in parts) or node.module not in PUBLIC_MODULES:
                found.append(f"{node.lineno}: from {node.module} import ...")
                continue
            public = set(getattr(importlib.import_module(node.module), "__all__", ())) | {"__version__"}
            found.extend(
                f"{node.lineno}: from {node.module} import {alias.name}"
                for alias in node.names
                if alias.name not in public
            )
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id == "stageflow":
                found.append(f"{node.lineno}: stageflow.{node.attr}")
    return found


class TestImportHygiene:
    """No ``stageflow._x`` anywhere in stageflow_otel."""

    def test_sources_found(self) -> None:
        """The scan sees the interceptor modules."""
        names = {p.name for p in SOURCES}
        assert {"__init__.py", "_tracing.py", "_metrics.py", "_logging.py", "semconv.py"} <= names

    @pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
    def test_only_public_stageflow_names(self, path: Path) -> None:
        """The module imports only names listed in a public stageflow module's ``__all__``."""
        assert violations(path) == []

    def test_detects_private_imports(self, tmp_path: Path) -> None:
        """The scan flags private modules, private names and names missing from ``__all__``."""
        bad = tmp_path / "bad.py"
        bad.write_text(
            "import stageflow._graph\n"
            "from stageflow._graph import StageGraph\n"
            "from stageflow import _events\n"
            "from stageflow.interceptors import _builtins\n"
            "import stageflow\n"
            "x = stageflow._results\n"
        )
        assert violations(bad) == [
            "1: import stageflow._graph",
            "2: from stageflow._graph import ...",
            "3: from stageflow import _events",
            "4: from stageflow.interceptors import _builtins",
            "6: stageflow._results",
        ]


class TestPublicSurface:
    """``stageflow_otel.__all__`` and the lazy names of ``stageflow.interceptors``."""

    def test_all_is_a_tuple_of_existing_names(self) -> None:
        """Every name in ``__all__`` exists, and the interceptor API is listed."""
        assert isinstance(stageflow_otel.__all__, tuple)
        assert [n for n in stageflow_otel.__all__ if not hasattr(stageflow_otel, n)] == []
        assert {
            "TracingInterceptor",
            "MetricsInterceptor",
            "LoggingInterceptor",
            "add_trace_context",
            "inject_context",
        } <= set(stageflow_otel.__all__)

    @pytest.mark.parametrize("name", ["TracingInterceptor", "MetricsInterceptor", "LoggingInterceptor"])
    def test_lazy_import_from_stageflow_interceptors(self, name: str) -> None:
        """``stageflow.interceptors`` hands out the very same class as ``stageflow_otel``."""
        interceptors = importlib.import_module("stageflow.interceptors")
        assert getattr(interceptors, name) is getattr(stageflow_otel, name)

    def test_priorities(self) -> None:
        """Tracing wraps metrics, which wraps logging, so metrics and logs happen inside the spans."""
        assert (
            stageflow_otel.TracingInterceptor.priority,
            stageflow_otel.MetricsInterceptor.priority,
            stageflow_otel.LoggingInterceptor.priority,
        ) == (10, 20, 30)
