"""The immutable, fluent pipeline builder and the stage descriptions it produces."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import count as _counter
from itertools import islice
from types import FunctionType, MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias

from ._errors import (
    CycleError,
    DuplicateStageError,
    InvalidRunnerError,
    InvalidStageKindError,
    InvalidStageNameError,
    PipelineDefinitionError,
    SelfDependencyError,
    UnknownDependencyError,
    _unencodable,
)
from ._retry import RetryPolicy
from ._runner import StageRunner
from ._types import StageKind, StageOutput

if TYPE_CHECKING:
    from ._context import StageContext
    from ._graph import StageGraph
    from ._interceptors import Interceptor
    from ._store import RunStore

__all__ = ("Pipeline", "StageInfo", "StageSpec", "UnifiedStageSpec")

StageCall = Callable[["StageContext"], Awaitable[StageOutput]]
_NO_CONFIG: Mapping[str, Any] = MappingProxyType({})
_CO_COROUTINE = inspect.CO_COROUTINE


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
    """

    name: str
    kind: StageKind
    dependencies: tuple[str, ...]
    conditional: bool
    config: Mapping[str, Any]
    runner: Any
    pipeline: str
    retry: RetryPolicy | None = None


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
) -> StageSpec:
    """``StageSpec(name, runner, kind, dependencies, conditional, config, retry)``, faster."""
    s_name, s_runner, s_kind, s_deps, s_cond, s_config, s_retry = _SPEC_SET
    spec: StageSpec = _new(StageSpec)
    s_name(spec, name)
    s_runner(spec, runner)
    s_kind(spec, kind)
    s_deps(spec, dependencies)
    s_cond(spec, conditional)
    s_config(spec, config)
    s_retry(spec, retry)
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
) -> StageInfo:
    """``StageInfo(name, kind, dependencies, conditional, config, runner, pipeline, retry)``, faster."""
    s_name, s_kind, s_deps, s_cond, s_config, s_runner, s_pipeline, s_retry = _INFO_SET
    info: StageInfo = _new(StageInfo)
    s_name(info, name)
    s_kind(info, kind)
    s_deps(info, dependencies)
    s_cond(info, conditional)
    s_config(info, config)
    s_runner(info, runner)
    s_pipeline(info, pipeline)
    s_retry(info, retry)
    return info


class _Link:
    __slots__ = ("prev", "spec")

    def __init__(self, spec: StageSpec, prev: _Link | None) -> None:
        self.spec = spec
        self.prev = prev


def _check_kind(name: str, kind: object) -> StageKind:
    if isinstance(kind, StageKind):
        return kind
    if isinstance(kind, str):
        try:
            return StageKind(kind)
        except ValueError:
            pass
    raise InvalidStageKindError(name, kind, [f"StageKind.{k.name}" for k in StageKind])


def _check_runner(name: str, runner: object) -> None:
    if type(runner) is FunctionType and runner.__code__.co_flags & _CO_COROUTINE:
        return  # an ``async def`` function: the common case, decided without inspect's generality
    if inspect.isclass(runner) or not inspect.iscoroutinefunction(runner):
        execute = getattr(runner, "execute", None)
        if execute is None:
            if inspect.isasyncgenfunction(runner):
                problem = "it is an async generator function (it yields); a stage returns one StageOutput"
            elif inspect.isclass(runner) or not callable(runner):
                problem = "it has no execute() method"
            else:
                problem = "it is a plain (not async) function"
            raise InvalidRunnerError(name, runner, problem)
        if inspect.isasyncgenfunction(execute):
            raise InvalidRunnerError(
                name,
                runner,
                "its execute() is an async generator (it yields); a stage returns one StageOutput",
            )
        if not inspect.iscoroutinefunction(execute):
            raise InvalidRunnerError(name, runner, "its execute() is not 'async def'")


class Pipeline:
    """An immutable DAG of stages, built fluently.

    Every method returns a new ``Pipeline``; adding a stage is O(1). Problems that need the whole graph
    (unknown dependencies, cycles, duplicate names) are reported by ``build()``; problems with one call
    (bad name, kind, runner, dependency list) by that call.

    Example::

        pipeline = (
            Pipeline(name="voice")
            .with_stage("stt", SttStage, StageKind.TRANSFORM)
            .with_stage("llm", LlmStage, StageKind.TRANSFORM, dependencies=("stt",))
        )
        graph = pipeline.build()
    """

    __slots__ = ("_claims", "_count", "_last", "_names", "_view", "name")
    name: str
    _last: _Link | None
    _count: int
    # Stage name -> position, shared by a pipeline and the ones extended from it: a pipeline of ``_count``
    # stages owns the first ``_count`` entries (positions are insertion indices), so ``with_stage`` finds
    # a duplicate in O(1). ``_claims`` hands out the table's next positions, one each: a pipeline whose
    # claim is its own length appends in place; any other (a branch from an older pipeline, or the loser
    # of two threads extending one pipeline) copies its part of the table first. ``next()`` on an
    # ``itertools.count`` is atomic, so this needs no lock.
    _names: dict[str, int]
    _claims: Iterator[int]
    _view: Mapping[str, StageSpec]  # made on first read of ``stages``

    def __init__(self, name: str = "pipeline") -> None:
        if not isinstance(name, str) or not name:
            msg = f"pipeline name {name!r} is invalid; use a non-empty str"
            raise PipelineDefinitionError(msg)
        problem = _unencodable(name)
        if problem is not None:
            msg = f"pipeline name {name!r} is invalid: {problem}"
            raise PipelineDefinitionError(msg)
        _set_name(self, name)
        _set_last(self, None)
        _set_count(self, 0)
        _set_names(self, {})
        _set_claims(self, _counter())

    def __setattr__(self, attribute: str, value: object) -> None:
        msg = f"Pipeline is immutable (cannot set {attribute!r}); with_stage() and compose() return new ones"
        raise AttributeError(msg)

    def __delattr__(self, attribute: str) -> None:
        msg = f"Pipeline is immutable (cannot delete {attribute!r})"
        raise AttributeError(msg)

    def _with(self, last: _Link | None, count: int, names: dict[str, int]) -> Pipeline:
        new = Pipeline.__new__(Pipeline)
        _set_name(new, self.name)
        _set_last(new, last)
        _set_count(new, count)
        _set_names(new, names)
        _set_claims(new, _counter(count))
        return new

    @property
    def stages(self) -> Mapping[str, StageSpec]:
        """The stage specs by name, in the order they were added (a read-only mapping).

        .. versionchanged:: 0.10
           A mapping, as in stageflow-core 0.9.1 (it was a tuple of specs): iterate over
           ``stages.values()`` for the specs.
        """
        try:
            return self._view
        except AttributeError:
            view = MappingProxyType({spec.name: spec for spec in self._specs()})
            _set_view(self, view)
            return view

    def _specs(self) -> tuple[StageSpec, ...]:
        """The stage specs, in the order they were added."""
        specs: list[StageSpec] = []
        link = self._last
        while link is not None:
            specs.append(link.spec)
            link = link.prev
        specs.reverse()
        return tuple(specs)

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, stages={[s.name for s in self._specs()]!r})"

    def with_stage(
        self,
        name: str,
        runner: StageRunner,
        kind: StageKind,
        dependencies: Sequence[str] | None = (),
        conditional: bool = False,
        config: Mapping[str, Any] | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> Pipeline:
        """A new pipeline with one more stage.

        Args:
            name: the stage's unique name.
            runner: a stage class (instantiated once at ``build()`` as ``runner(**config)``), an object with
                ``async def execute(ctx)``, or an ``async def fn(ctx)``.
            kind: the stage's ``StageKind``.
            dependencies: names of the stages whose outputs it needs; it starts once they all finished
                (``None`` means none, as in stageflow-core 0.9.1).
            conditional: skip this stage (without running it) when any dependency was skipped.
            config: stage configuration: constructor keywords for a stage class, and settings that
                interceptors read (``StageInfo.config``).
            retry: run the stage again under this policy when it returns ``StageOutput.retry`` or raises.

        Raises:
            InvalidStageNameError, InvalidStageKindError, InvalidRunnerError, PipelineDefinitionError.
            DuplicateStageError: the pipeline already has a stage called ``name``.

        .. versionchanged:: 0.10
           A duplicate name is rejected here, not at ``build()``.
        """
        if not isinstance(name, str) or not name or (not name.isascii() and _unencodable(name)):
            raise InvalidStageNameError(name)
        stage_kind = kind if type(kind) is StageKind else _check_kind(name, kind)
        _check_runner(name, runner)
        if dependencies is None:  # stageflow-core 0.9.1's default
            dependencies = ()
        elif type(dependencies) is not tuple and (
            isinstance(dependencies, str | bytes | bytearray) or not isinstance(dependencies, Iterable)
        ):
            msg = (
                f"stage {name!r} has dependencies={dependencies!r}; pass a sequence of stage names, "
                f"e.g. dependencies=({dependencies!r},)"
            )
            raise PipelineDefinitionError(msg)
        deps = tuple(dependencies)
        for dep in deps:
            if not isinstance(dep, str) or not dep:
                msg = f"stage {name!r} lists dependency {dep!r}; dependencies are stage names (str)"
                raise PipelineDefinitionError(msg)
        if type(conditional) is not bool:
            msg = f"stage {name!r} has conditional={conditional!r}; pass True or False"
            raise PipelineDefinitionError(msg)
        if config is not None and not isinstance(config, Mapping):
            msg = f"stage {name!r} has config={config!r}; pass a mapping of settings or None"
            raise PipelineDefinitionError(msg)
        if retry is not None and not isinstance(retry, RetryPolicy):
            msg = f"stage {name!r} has retry={retry!r}; pass a RetryPolicy or None"
            raise PipelineDefinitionError(msg)
        spec = _new_spec(
            name, runner, stage_kind, deps, conditional, {} if config is None else dict(config), retry
        )
        count = self._count
        names = self._names
        position = names.get(name)
        if position is not None and position < count:
            raise DuplicateStageError(name)
        claims = self._claims
        if next(claims) != count:  # the table grew past us: copy our part of it (see ``__slots__``)
            names = dict(islice(names.items(), count))
            claims = _counter(count + 1)
        names[name] = count
        new: Pipeline = _new(Pipeline)  # ``self._with(...)``, inlined: this runs once per stage
        _set_name(new, self.name)
        _set_last(new, _Link(spec, self._last))
        _set_count(new, count + 1)
        _set_names(new, names)
        _set_claims(new, claims)
        return new

    def compose(self, other: Pipeline) -> Pipeline:
        """A new pipeline with this pipeline's stages followed by ``other``'s (keeps this name).

        Raises:
            DuplicateStageError: both pipelines define a stage of the same name.
        """
        if not isinstance(other, Pipeline):
            msg = f"compose() takes a Pipeline, got {other!r}"
            raise TypeError(msg)
        theirs = other._specs()
        last, count = self._last, self._count
        names = self._names
        for spec in theirs:
            position = names.get(spec.name)
            if position is not None and position < count:
                raise DuplicateStageError(spec.name, composed=True)
        names = dict(islice(names.items(), count))  # a table of its own: compose() is not the hot path
        for spec in theirs:
            names[spec.name] = count
            last, count = _Link(spec, last), count + 1
        return self._with(last, count, names)

    def build(
        self, interceptors: Iterable[Interceptor] | None = (), *, run_store: RunStore | None = None
    ) -> StageGraph:
        """Validate the pipeline and build an immutable, reusable ``StageGraph``.

        Args:
            interceptors: interceptors wrapped around every stage, ordered by ``priority`` (lower = outer);
                ``None`` means none.
            run_store: record every run of the graph in this ``RunStore``.

        Raises:
            DuplicateStageError, SelfDependencyError, UnknownDependencyError, CycleError,
            InvalidRunnerError (a stage class could not be instantiated with its config),
            TypeError (``interceptors`` is not an iterable of interceptors).

        A graph in which a stage's ``config`` sets ``timeout`` but no ``TimeoutInterceptor`` is attached
        warns (``UserWarning``) at its first run: nothing would enforce that timeout.
        """
        from ._graph import StageGraph

        if interceptors is None:
            interceptors = ()
        elif not isinstance(interceptors, Iterable):
            msg = (
                f"build(interceptors={interceptors!r}) takes an iterable of interceptors, "
                f"e.g. build(interceptors=[{interceptors!r}])"
            )
            raise TypeError(msg)
        interceptors = list(interceptors)
        specs = self._specs()
        order, topology = _validate(specs)
        infos = tuple(
            _new_info(
                spec.name,
                spec.kind,
                spec.dependencies,
                spec.conditional,
                MappingProxyType(dict(spec.config)) if spec.config else _NO_CONFIG,
                _instantiate(spec),
                self.name,
                spec.retry,
            )
            for spec in specs
        )
        return StageGraph(self.name, infos, order, interceptors, run_store, _topology=topology)

    def to_mermaid(self) -> str:
        """The DAG as a Mermaid flowchart (validated like ``build()``, without instantiating stages)."""
        specs = self._specs()
        _validate(specs)
        return _mermaid(specs)


Topology: TypeAlias = tuple[list[tuple[int, ...]], list[list[int]]]
"""Per stage (by index): its distinct dependencies' indices, in declaration order; and its children's."""


# The slots' own setters: the only way to fill a Pipeline, whose ``__setattr__`` refuses every change.
_set_name = Pipeline.__dict__["name"].__set__
_set_last = Pipeline.__dict__["_last"].__set__
_set_count = Pipeline.__dict__["_count"].__set__
_set_names = Pipeline.__dict__["_names"].__set__
_set_claims = Pipeline.__dict__["_claims"].__set__
_set_view = Pipeline.__dict__["_view"].__set__


def _validate(specs: Sequence[StageSpec]) -> tuple[tuple[int, ...], Topology]:
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


def _dependency_error(spec: StageSpec, index: Mapping[str, int]) -> PipelineDefinitionError:
    """The error for the first bad dependency of ``spec`` (there is one)."""
    for dep in spec.dependencies:
        if dep == spec.name:
            return SelfDependencyError(spec.name)
        if dep not in index:
            return UnknownDependencyError(spec.name, dep, index)
    msg = f"stage {spec.name!r} has no bad dependency"  # pragma: no cover - callers make sure it has
    raise AssertionError(msg)


def _instantiate(spec: StageSpec) -> Any:
    runner = spec.runner
    if not inspect.isclass(runner):
        return runner
    try:
        return runner(**spec.config)
    except TypeError as exc:
        raise InvalidRunnerError(
            spec.name, runner, f"{runner.__name__}(**{dict(spec.config)!r}) failed: {exc}"
        ) from exc
    except Exception as exc:  # the stage's own __init__ failed: say which stage
        raise InvalidRunnerError(
            spec.name,
            runner,
            f"{runner.__name__}(**{dict(spec.config)!r}) raised {type(exc).__name__}: {exc}",
        ) from exc


def _topological_order(
    specs: Sequence[StageSpec], index: Mapping[str, int], dep_index: list[tuple[int, ...]]
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


def _find_cycle(specs: Sequence[StageSpec], index: Mapping[str, int], stuck: set[int]) -> list[str]:
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


def _mermaid(specs: Sequence[StageSpec | StageInfo]) -> str:
    ids = {s.name: f"s{i}" for i, s in enumerate(specs)}
    lines = ["flowchart TD"]
    for s in specs:
        label = f"{s.name}<br/>{s.kind.value}".replace('"', "#quot;")
        shape = f'{{{{"{label}"}}}}' if s.conditional else f'["{label}"]'
        lines.append(f"    {ids[s.name]}{shape}")
    for s in specs:
        for dep in s.dependencies:
            if dep not in ids:
                raise UnknownDependencyError(s.name, dep, ids)
            arrow = "-.->" if s.conditional else "-->"
            lines.append(f"    {ids[dep]} {arrow} {ids[s.name]}")
    return "\n".join(lines) + "\n"
