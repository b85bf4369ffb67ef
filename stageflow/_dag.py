"""The DAG's value types and helpers: what the builder makes, the graph runs and interceptors see.

``StageSpec`` (one ``with_stage()`` call, as given), ``StageInfo`` (a built stage), ``Topology`` (each
stage's dependencies and children by index), ``validate()`` (names, dependencies, cycles: a topological
order and the topology) and ``mermaid()``. The builder (``_pipeline``), the graph (``_graph``), the
scheduler and the interceptors import them from here; nothing here imports any of those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from ._errors import (
    CycleError,
    DuplicateStageError,
    PipelineDefinitionError,
    SelfDependencyError,
    UnknownDependencyError,
)
from ._types import StageKind

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from ._retry import RetryPolicy
    from ._streams import Streaming

__all__ = (
    "StageInfo",
    "StageSpec",
    "Topology",
    "UnifiedStageSpec",
    "Vertex",
    "mermaid",
    "validate",
)

_NO_CONFIG: Mapping[str, Any] = MappingProxyType({})


class Vertex(Protocol):
    """What ``validate()`` reads of a stage: a ``StageSpec`` or a ``StageInfo``."""

    @property
    def name(self) -> str: ...

    @property
    def dependencies(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One ``with_stage()`` call, as given: validated at ``build()``.

    ``Pipeline.stages`` maps names to these. In ``StageGraph.stage_specs``, ``runner`` is the stage's
    awaitable call instead (``await spec.runner(ctx)``).
    """

    name: str
    runner: Any
    kind: StageKind
    dependencies: tuple[str, ...] = ()
    conditional: bool = False
    config: Mapping[str, Any] = field(default_factory=dict)
    retry: RetryPolicy | None = None
    executor: Executor | None = None
    timeout: float | None = None
    stream: Streaming | None = None
    streams: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, weakref_slot=True)
class StageInfo:
    """A built stage, as interceptors see it.

    Attributes:
        name: the stage name.
        kind: its kind.
        dependencies: the names of the stages it depends on, in declaration order.
        conditional: whether it is skipped when a dependency was skipped.
        config: the ``config`` given to ``with_stage`` (read-only).
        runner: the object whose ``execute`` runs (the instance built from a stage class), or the function.
        pipeline: the pipeline's name.
        retry: the stage's retry policy, if any.
        executor: where a sync stage runs: its own ``executor=``, else ``build(executor=...)``, else
            ``None`` (the graph's own thread pool); always ``None`` for an async stage.
        sync: whether the stage is a plain (not async) function or ``execute``, run off the event loop.
        timeout: the ``timeout=`` given to ``with_stage``: seconds each attempt may take, or ``None``.
        streaming: how a streaming stage (an async generator) buffers and aggregates its chunks, else
            ``None``.
        streams: the dependencies whose streams the stage consumes (it starts at their first chunk).
    """

    name: str
    kind: StageKind
    dependencies: tuple[str, ...]
    conditional: bool
    config: Mapping[str, Any]
    runner: Any
    pipeline: str
    retry: RetryPolicy | None = None
    executor: Executor | None = None
    sync: bool = False
    timeout: float | None = None
    streaming: Streaming | None = None
    streams: tuple[str, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        # to another process: the read-only config travels as a dict; the executor stays behind
        return (
            _info_from_pickle,
            (
                self.name,
                self.kind,
                self.dependencies,
                self.conditional,
                dict(self.config),
                self.runner,
                self.pipeline,
                self.retry,
                self.sync,
            ),
        )


def _info_from_pickle(
    name: str,
    kind: StageKind,
    dependencies: tuple[str, ...],
    conditional: bool,
    config: dict[str, Any],
    runner: Any,
    pipeline: str,
    retry: RetryPolicy | None,
    sync: bool,
) -> StageInfo:
    """A ``StageInfo`` rebuilt in another process (without its executor)."""
    return _new_info(
        name,
        kind,
        dependencies,
        conditional,
        MappingProxyType(config) if config else _NO_CONFIG,
        runner,
        pipeline,
        retry,
        None,
        sync,
    )


UnifiedStageSpec = StageSpec
"""stageflow-core 0.9.1's name of ``StageSpec`` (same fields, in the same order)."""


# Building 10,000 stages makes 10,000 of each frozen dataclass: these set the slots directly, which costs
# less than half of the generated ``__init__`` (one ``object.__setattr__`` call per field).
_new = object.__new__


_SPEC_SET = tuple(vars(StageSpec)[f.name].__set__ for f in fields(StageSpec))


_INFO_SET = tuple(vars(StageInfo)[f.name].__set__ for f in fields(StageInfo))


def _new_spec(
    name: str,
    runner: Any,
    kind: StageKind,
    dependencies: tuple[str, ...],
    conditional: bool,
    config: Mapping[str, Any],
    retry: RetryPolicy | None,
    executor: Executor | None = None,
    timeout: float | None = None,
    stream: Streaming | None = None,
    streams: tuple[str, ...] = (),
) -> StageSpec:
    """``StageSpec(name, runner, kind, dependencies, conditional, config, retry, ...)``, faster."""
    (
        s_name,
        s_runner,
        s_kind,
        s_deps,
        s_cond,
        s_config,
        s_retry,
        s_executor,
        s_timeout,
        s_stream,
        s_streams,
    ) = _SPEC_SET
    spec: StageSpec = _new(StageSpec)
    s_name(spec, name)
    s_runner(spec, runner)
    s_kind(spec, kind)
    s_deps(spec, dependencies)
    s_cond(spec, conditional)
    s_config(spec, config)
    s_retry(spec, retry)
    s_executor(spec, executor)
    s_timeout(spec, timeout)
    s_stream(spec, stream)
    s_streams(spec, streams)
    return spec


def _new_info(
    name: str,
    kind: StageKind,
    dependencies: tuple[str, ...],
    conditional: bool,
    config: Mapping[str, Any],
    runner: Any,
    pipeline: str,
    retry: RetryPolicy | None,
    executor: Executor | None = None,
    sync: bool = False,
    timeout: float | None = None,
    streaming: Streaming | None = None,
    streams: tuple[str, ...] = (),
) -> StageInfo:
    """``StageInfo(name, kind, dependencies, conditional, config, runner, pipeline, retry, ...)``, faster."""
    (
        s_name,
        s_kind,
        s_deps,
        s_cond,
        s_config,
        s_runner,
        s_pipeline,
        s_retry,
        s_executor,
        s_sync,
        s_timeout,
        s_streaming,
        s_streams,
    ) = _INFO_SET
    info: StageInfo = _new(StageInfo)
    s_name(info, name)
    s_kind(info, kind)
    s_deps(info, dependencies)
    s_cond(info, conditional)
    s_config(info, config)
    s_runner(info, runner)
    s_pipeline(info, pipeline)
    s_retry(info, retry)
    s_executor(info, executor)
    s_sync(info, sync)
    s_timeout(info, timeout)
    s_streaming(info, streaming)
    s_streams(info, streams)
    return info


Topology: TypeAlias = tuple[list[tuple[int, ...]], list[list[int]]]
"""Per stage (by index): its distinct dependencies' indices, in declaration order; and its children's."""


def validate(specs: Sequence[Vertex]) -> tuple[tuple[int, ...], Topology]:
    """Check names and dependencies; return a topological order of ``specs`` (indices) and the topology."""
    index = {spec.name: i for i, spec in enumerate(specs)}
    if len(index) < len(specs):
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise DuplicateStageError(spec.name)
            seen.add(spec.name)
    position = index.__getitem__
    dep_index: list[tuple[int, ...]] = []
    add = dep_index.append
    for i, spec in enumerate(specs):
        try:
            mine = tuple(map(position, spec.dependencies))
        except KeyError:
            raise _dependency_error(spec, index) from None
        if i in mine:
            raise _dependency_error(spec, index)
        if len(mine) > 1 and len(set(mine)) < len(mine):
            mine = tuple(dict.fromkeys(mine))
        add(mine)
    return _topological_order(specs, index, dep_index)


def _dependency_error(spec: Vertex, index: Mapping[str, int]) -> PipelineDefinitionError:
    """The error for the first bad dependency of ``spec`` (there is one)."""
    for dep in spec.dependencies:
        if dep == spec.name:
            return SelfDependencyError(spec.name)
        if dep not in index:
            return UnknownDependencyError(spec.name, dep, index)
    msg = f"stage {spec.name!r} has no bad dependency"  # pragma: no cover - callers make sure it has
    raise AssertionError(msg)


def _topological_order(
    specs: Sequence[Vertex], index: Mapping[str, int], dep_index: list[tuple[int, ...]]
) -> tuple[tuple[int, ...], Topology]:
    """Kahn's algorithm; on a cycle, raise ``CycleError`` with one cycle's path."""
    n = len(specs)
    indegree = list(map(len, dep_index))
    children: list[list[int]] = [[] for _ in range(n)]
    for i, mine in enumerate(dep_index):
        for d in mine:
            children[d].append(i)
    ready = [i for i in range(n) if indegree[i] == 0]
    order: list[int] = []
    push = ready.append
    while ready:
        i = ready.pop()
        order.append(i)
        for c in children[i]:
            left = indegree[c] - 1
            indegree[c] = left
            if not left:
                push(c)
    if len(order) < n:
        raise CycleError(_find_cycle(specs, index, {i for i in range(n) if indegree[i] > 0}))
    return tuple(order), (dep_index, children)


def _find_cycle(specs: Sequence[Vertex], index: Mapping[str, int], stuck: set[int]) -> list[str]:
    # Every stuck stage has a stuck dependency, so walking dependencies must revisit a stage.
    start = min(stuck)
    seen: dict[int, int] = {}
    path: list[int] = []
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(index[d] for d in specs[node].dependencies if index[d] in stuck)
    cycle = path[seen[node] :]
    # path follows "depends on" edges; show it in execution direction (dependency -> dependent)
    names = [specs[i].name for i in reversed(cycle)]
    return [*names, names[0]]


def mermaid(specs: Sequence[StageSpec | StageInfo]) -> str:
    """The DAG of ``specs`` as a Mermaid flowchart (conditional stages drawn as hexagons)."""
    ids = {s.name: f"s{i}" for i, s in enumerate(specs)}
    lines = ["flowchart TD"]
    for s in specs:
        # one line per label: a line break in a name (which would end the Mermaid statement) and quotes
        # become Mermaid entity codes
        name = s.name.replace('"', "#quot;").replace("\n", "#10;").replace("\r", "#13;")
        label = f"{name}<br/>{s.kind.value}"
        shape = f'{{{{"{label}"}}}}' if s.conditional else f'["{label}"]'
        lines.append(f"    {ids[s.name]}{shape}")
    for s in specs:
        for dep in s.dependencies:
            if dep not in ids:
                raise UnknownDependencyError(s.name, dep, ids)
            arrow = "-.->" if s.conditional else "-->"
            lines.append(f"    {ids[dep]} {arrow} {ids[s.name]}")
    return "\n".join(lines) + "\n"
