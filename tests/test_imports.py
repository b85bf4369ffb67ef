"""``import stageflow`` loads what defining a pipeline needs; views, 0.9.1's name tables, the run-time
machinery and heavy standard-library modules load on first use (see tests/benchmarks/imports.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import stageflow
import stageflow.interceptors

ROOT = Path(__file__).resolve().parents[1]

NOT_ON_IMPORT = (
    # views: never loaded by the engine
    "stageflow.views",
    "stageflow.views._cli",
    "stageflow.views._cli_store",
    "stageflow.views._report",
    "stageflow.views._svg",
    "stageflow.views._timeline",
    "stageflow._terminal",
    # 0.9.1's renamed and removed names: loaded when one is asked for
    "stageflow._renamed",
    # what only a built graph, a store, a monitor or an interceptor needs
    "stageflow._graph",
    "stageflow._scheduler",
    "stageflow._store",
    "stageflow._monitor",
    "stageflow._offload",
    "stageflow._config",
    "stageflow._retry",
    "stageflow._streams",
    "stageflow.interceptors",
    "stageflow.adapters",
    # standard-library modules only some paths use; asyncio is imported by the first run or emit
    "asyncio",
    "sqlite3",
    "pathlib",
    "pickle",
    "json",
    "difflib",
    "hashlib",
)


def run_python(code: str) -> Any:
    """Run ``code`` in a fresh interpreter that imports this checkout's stageflow; its JSON output."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, timeout=120
    )
    return json.loads(proc.stdout)


class TestImportStageflow:
    def test_loads_no_view_compat_table_or_run_time_module(self) -> None:
        """After ``import stageflow`` none of the lazily loaded modules is in ``sys.modules``."""
        loaded = run_python(
            "import sys; import stageflow; "
            f"found = [m for m in {list(NOT_ON_IMPORT)!r} if m in sys.modules]; "
            "import json; print(json.dumps(found))"
        )
        assert loaded == []

    def test_defining_and_running_a_pipeline_leaves_the_views_and_tables_alone(self) -> None:
        """A run (and a result's repr) loads the graph, not the views or 0.9.1's tables; ``timeline()``
        loads its renderer then."""
        code = """
import asyncio, json, sys
from stageflow import Pipeline, StageKind, StageOutput

async def hello(ctx):
    return StageOutput.ok(greeting="hi")

async def main():
    graph = Pipeline(name="p").with_stage("hello", hello, StageKind.TRANSFORM).build()
    return await graph.run(input_text="x")

result = asyncio.run(main())  # which reprs its main task, the result included, when it restores SIGINT
repr(result["hello"])
seen = lambda: [m for m in ("stageflow._graph", "stageflow.views._timeline", "stageflow._renamed")
                if m in sys.modules]
ran = seen()
result.timeline(color=False)
print(json.dumps([ran, seen()]))
"""
        assert run_python(code) == [
            ["stageflow._graph"],
            ["stageflow._graph", "stageflow.views._timeline"],
        ]

    def test_a_missing_module_elsewhere_does_not_load_the_tables(self) -> None:
        """The finder for 0.9.1's modules looks at ``stageflow.*`` names only; those load the tables."""
        code = """
import json, sys
import stageflow
try:
    import no_such_module_anywhere
except ImportError:
    pass
other = "stageflow._renamed" in sys.modules
try:
    import stageflow.core
except ImportError as exc:
    message = str(exc)
print(json.dumps([other, "stageflow._renamed" in sys.modules, message.split(":")[0]]))
"""
        assert run_python(code) == [False, True, "No module named 'stageflow.core'"]

    @pytest.mark.parametrize("first", ["outside", "inside"], ids=["outside-a-loop-first", "in-a-loop-first"])
    def test_the_first_emit_binds_the_running_loop_lookup(self, first: str) -> None:
        """A sink's default ``try_emit`` imports asyncio on its first call, outside a loop or in one, and
        from then on calls ``asyncio.get_running_loop`` itself: dropped outside a loop, spawned inside."""
        code = f"""
import json, sys
from stageflow import EventSink, dropped_event_count
from stageflow import _events

class Kept(EventSink):
    def __init__(self):
        self.types = []

    async def emit(self, *, type, data):
        self.types.append(type)

def outside(sink):
    sink.try_emit(type="outside", data=None)

def inside(sink):
    import asyncio

    async def main():
        sink.try_emit(type="inside", data=None)
        await asyncio.sleep(0)

    asyncio.run(main())

before = [_events._running_loop.__name__, "asyncio" in sys.modules]
sink = Kept()
{first}(sink)
{"inside" if first == "outside" else "outside"}(sink)
import asyncio
print(json.dumps(before + [_events._running_loop is asyncio.get_running_loop, sink.types,
                           dropped_event_count(sink)]))
"""
        assert run_python(code) == ["_load_running_loop", False, True, ["inside"], 1]


LAZY = [name for name in stageflow.__all__ if name in stageflow._LAZY]


class TestLazyNames:
    def test_the_lazy_names_are_in_all(self) -> None:
        """Every lazily loaded public name is exported; none is a 0.9.1 leftover."""
        assert set(stageflow._LAZY) <= set(stageflow.__all__)
        assert len(LAZY) == len(stageflow._LAZY) == 39

    @pytest.mark.parametrize("name", LAZY)
    def test_each_resolves_to_its_modules_object(self, name: str) -> None:
        """``stageflow.X`` is the object its module defines, and stays in the module once read."""
        import importlib

        value = getattr(stageflow, name)
        module = importlib.import_module(stageflow._LAZY[name])
        assert value is getattr(module, name)
        assert vars(stageflow)[name] is value

    def test_dir_lists_them_before_they_load(self) -> None:
        """``dir(stageflow)`` (what completion shows) lists every exported name, loaded or not."""
        names = run_python("import json, stageflow; print(json.dumps(dir(stageflow)))")
        assert set(stageflow.__all__) <= set(names)
        assert {"StageGraph", "SQLiteRunStore", "Pipeline", "__version__"} <= set(names)

    def test_an_unknown_name_is_an_attribute_error(self) -> None:
        """A name that is neither exported nor 0.9.1's raises the usual ``AttributeError``."""
        with pytest.raises(AttributeError, match="module 'stageflow' has no attribute 'Nope'"):
            stageflow.Nope  # noqa: B018

    def test_interceptors_module_names(self) -> None:
        """``stageflow.interceptors`` exports the built-ins, the same objects ``stageflow`` re-exports."""
        assert stageflow.interceptors.TimeoutInterceptor is stageflow.TimeoutInterceptor
        assert stageflow.interceptors.BaseInterceptor is stageflow.BaseInterceptor


def _imported(module: str) -> set[str]:
    """The ``stageflow`` modules ``stageflow/<module>.py`` imports, at any level, ``TYPE_CHECKING`` too."""
    import ast

    tree = ast.parse((ROOT / "stageflow" / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stageflow."):
            found.add(node.module.removeprefix("stageflow."))
    return found


class TestLayering:
    def test_the_dag_module_imports_no_builder_graph_scheduler_or_interceptor(self) -> None:
        """``_dag`` is the bottom layer: the builder, the graph and the interceptors import it."""
        assert _imported("_dag") & {"_pipeline", "_graph", "_scheduler", "_interceptors"} == set()

    def test_the_graph_and_scheduler_never_import_the_builder(self) -> None:
        """The builder imports the graph (in ``build()``); the graph and its scheduler never the builder."""
        assert (_imported("_graph") | _imported("_scheduler")) & {"_pipeline"} == set()
        assert {"_dag", "_scheduler"} <= _imported("_graph")

    def test_the_builder_interceptors_and_graph_take_the_dag_types_from_one_module(self) -> None:
        """``StageInfo`` comes from ``_dag`` to every module that names it."""
        users = ("_pipeline", "_graph", "_scheduler", "_interceptors", "interceptors/_builtins")
        assert [m for m in users if "_dag" not in _imported(m)] == []
