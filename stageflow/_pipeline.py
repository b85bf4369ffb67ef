"""The immutable, fluent pipeline builder: ``Pipeline.with_stage()``/``compose()``/``build()``.

The stage descriptions it produces (``StageSpec``, ``StageInfo``) and the DAG checks are in ``_dag``;
``build()`` hands them to ``StageGraph`` (loaded then: the builder imports the graph, never the reverse).
It is over 500 lines because every check ``with_stage()`` and ``build()`` make on what a user passes (names,
kinds, runners, executors, streams, config) lives here, next to the one call that takes it, with its
message.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from itertools import count as _counter
from itertools import islice
from types import FunctionType, MappingProxyType
from typing import TYPE_CHECKING, Any

from ._checks import finite_number
from ._dag import _NO_CONFIG, StageInfo, StageSpec, _new_info, _new_spec, mermaid, validate
from ._errors import (
    DuplicateStageError,
    InvalidExecutorError,
    InvalidRunnerError,
    InvalidStageKindError,
    InvalidStageNameError,
    PipelineDefinitionError,
    _unencodable,
)
from ._runner import DEFAULT_CANCEL_GRACE, StageRunner
from ._types import StageKind, StageOutput

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from ._context import StageContext
    from ._graph import StageGraph
    from ._interceptors import Interceptor
    from ._retry import RetryPolicy
    from ._store import RunStore
    from ._streams import Streaming

__all__ = ("Pipeline",)

StageCall = Callable[["StageContext"], Awaitable[StageOutput]]
_CO_COROUTINE = inspect.CO_COROUTINE
_new = object.__new__
_CO_GENERATORS = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR


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


_ASYNC, _SYNC, _STREAM = "async", "sync", "stream"


def _check_runner(name: str, runner: object) -> str:
    """Refuse what cannot be a stage; say how it runs: ``"async"`` (on the event loop), ``"sync"`` (off it,
    in a thread or on an executor) or ``"stream"`` (an async generator: a streaming stage)."""
    if type(runner) is FunctionType:
        flags = runner.__code__.co_flags
        if flags & _CO_COROUTINE:
            return _ASYNC  # an ``async def`` function: the common case, decided without inspect's generality
        if not flags & _CO_GENERATORS:
            return _SYNC  # a plain function: a sync stage
    if _streams(name, runner, runner, "it is a generator function"):
        return _STREAM
    if not inspect.isclass(runner) and inspect.iscoroutinefunction(runner):
        return _ASYNC  # e.g. a functools.partial of an async function
    execute = getattr(runner, "execute", None)
    if execute is None:
        if inspect.isclass(runner) or not callable(runner):
            raise InvalidRunnerError(name, runner, "it has no execute() method")
        call = getattr(type(runner), "__call__", None)  # noqa: B004 - the class's, not the instance's
        if inspect.iscoroutinefunction(call):
            return _ASYNC  # an object with ``async def __call__(self, ctx)``
        if _streams(name, runner, call, "its __call__ is a generator"):
            return _STREAM
        return _SYNC  # a callable object or a builtin/partial of a plain function: a sync stage
    if _streams(name, runner, execute, "its execute() is a generator"):
        return _STREAM
    return _ASYNC if inspect.iscoroutinefunction(execute) else _SYNC


def _streams(name: str, runner: object, function: object, which: str) -> bool:
    """Whether ``function`` (``runner`` itself, its ``__call__`` or its ``execute``) is an async generator
    function: a streaming stage. Refuse a plain generator function; ``which`` says which function the
    message names ('it is a generator function')."""
    if inspect.isasyncgenfunction(function):
        return True
    if inspect.isgeneratorfunction(function):
        raise InvalidRunnerError(
            name,
            runner,
            f"{which} (it yields); a stage returns one StageOutput, and a streaming stage is an "
            "'async def' that yields",
        )
    return False


def _check_executor(name: str | None, executor: object) -> None:
    """Refuse, at ``with_stage``/``build``, an ``executor=`` that cannot run work."""
    from concurrent.futures import Executor

    from ._offload import executor_is_shut_down

    if not isinstance(executor, Executor):
        raise InvalidExecutorError(
            name,
            executor,
            "it is not a concurrent.futures.Executor; pass a ThreadPoolExecutor, a ProcessPoolExecutor, "
            "Dask's client.get_executor() or stageflow.adapters.ray.RayExecutor()",
        )
    if executor_is_shut_down(executor):
        raise InvalidExecutorError(
            name, executor, "it was shut down and accepts no work; pass a running executor"
        )


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
        executor: Executor | None = None,
        timeout: float | None = None,
        stream: Streaming | None = None,
        streams: Sequence[str] = (),
    ) -> Pipeline:
        """A new pipeline with one more stage.

        Args:
            name: the stage's unique name.
            runner: a stage class (instantiated once at ``build()`` as ``runner(**config)``), an object with
                ``async def execute(ctx)``, or an ``async def fn(ctx)``; or their sync forms (a plain
                ``def execute``, a plain ``def fn(ctx)``), which run off the event loop, on ``executor``.
            kind: the stage's ``StageKind``.
            dependencies: names of the stages whose outputs it needs; it starts once they all finished
                (``None`` means none, as in stageflow-core 0.9.1).
            conditional: skip this stage (without running it) when any dependency was skipped.
            config: stage configuration: constructor keywords for a stage class, and settings that
                interceptors read (``StageInfo.config``).
            retry: run the stage again under this policy when it returns ``StageOutput.retry`` or raises.
            executor: where this sync stage runs: any ``concurrent.futures.Executor`` (a thread pool, a
                process pool, Dask's ``client.get_executor()``, ``stageflow.adapters.ray.RayExecutor``);
                default ``build(executor=...)``, else the graph's own thread pool. An async stage runs on
                the event loop and takes no executor.
            timeout: seconds each attempt may run before it fails with ``StageTimeoutError`` (enforced by
                the engine, without an interceptor; a sync stage's work is then stopped or abandoned as on
                cancellation); ``None`` (the default) for none.
            stream: how this streaming stage (an async generator that yields chunks) buffers and
                aggregates them; default ``Streaming()`` (a buffer of 16, the aggregate a list under
                ``"chunks"``).
            streams: dependencies whose streams this stage consumes: it starts at their first chunk and
                reads them with ``ctx.inputs.stream(name)``; each must be among ``dependencies`` and stream.

        Raises:
            InvalidStageNameError, InvalidStageKindError, InvalidRunnerError, PipelineDefinitionError.
            InvalidExecutorError: ``executor`` is not an executor, is shut down, or the stage is async.
            DuplicateStageError: the pipeline already has a stage called ``name``.

        .. versionchanged:: 0.10
           A duplicate name is rejected here, not at ``build()``.
        """
        if not isinstance(name, str) or not name or (not name.isascii() and _unencodable(name)):
            raise InvalidStageNameError(name)
        stage_kind = kind if type(kind) is StageKind else _check_kind(name, kind)
        how = _check_runner(name, runner)
        if executor is not None:
            _check_executor(name, executor)
            if how != _SYNC:
                raise InvalidExecutorError(
                    name,
                    executor,
                    f"the stage is {'a streaming' if how == _STREAM else 'an'} async stage and runs on the "
                    "event loop, where an executor has nothing to do; make it a plain 'def' (or its "
                    "execute() a plain 'def') to run it on this executor",
                )
        if stream is not None:
            from ._streams import Streaming  # loaded by the first stage that sets stream=

            if not isinstance(stream, Streaming):
                msg = f"stage {name!r} has stream={stream!r}; pass a stageflow.Streaming(...) or None"
                raise PipelineDefinitionError(msg)
            if how != _STREAM:
                msg = (
                    f"stage {name!r} has stream={stream!r} but does not stream: make it an 'async def' that "
                    "yields chunks, or drop stream="
                )
                raise PipelineDefinitionError(msg)
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
        consumed = _check_streams(name, streams, deps)
        if type(conditional) is not bool:
            msg = f"stage {name!r} has conditional={conditional!r}; pass True or False"
            raise PipelineDefinitionError(msg)
        if config is not None and not isinstance(config, Mapping):
            msg = f"stage {name!r} has config={config!r}; pass a mapping of settings or None"
            raise PipelineDefinitionError(msg)
        if timeout is not None and (not finite_number(timeout) or timeout <= 0):
            msg = f"stage {name!r} has timeout={timeout!r}; pass seconds as a finite number > 0, or None"
            raise PipelineDefinitionError(msg)
        if retry is not None:
            from ._retry import RetryPolicy  # loaded by the first stage that sets retry=

            if not isinstance(retry, RetryPolicy):
                msg = f"stage {name!r} has retry={retry!r}; pass a RetryPolicy or None"
                raise PipelineDefinitionError(msg)
        spec = _new_spec(
            name,
            runner,
            stage_kind,
            deps,
            conditional,
            {} if config is None else dict(config),
            retry,
            executor,
            None if timeout is None else float(timeout),
            stream,
            consumed,
        )
        count = self._count
        names = self._names
        position = names.get(name)
        if position is not None and position < count:
            raise DuplicateStageError(name)
        claims = self._claims
        if next(claims) != count:  # the table grew past us: copy our part of it (see ``__slots__``)
            names = _first(names, count)
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
        names = _first(names, count)  # a table of its own: compose() is not the hot path
        for spec in theirs:
            names[spec.name] = count
            last, count = _Link(spec, last), count + 1
        return self._with(last, count, names)

    def build(
        self,
        interceptors: Iterable[Interceptor] | None = (),
        *,
        run_store: RunStore | None = None,
        executor: Executor | None = None,
        max_threads: int | None = None,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
    ) -> StageGraph:
        """Validate the pipeline and build an immutable, reusable ``StageGraph``.

        Args:
            interceptors: interceptors wrapped around every stage, ordered by ``priority`` (lower = outer);
                ``None`` means none.
            run_store: record every run of the graph in this ``RunStore``.
            executor: where sync stages without an ``executor=`` of their own run; default the graph's own
                thread pool.
            max_threads: the size of the graph's own thread pool (made when a sync stage first runs);
                default ``min(32, os.cpu_count() + 4)``.
            cancel_grace: seconds a cancelled sync stage waits for its running work to end before it is
                reported abandoned (default 1.0).

        Raises:
            DuplicateStageError, SelfDependencyError, UnknownDependencyError, CycleError,
            InvalidRunnerError (a stage class could not be instantiated with its config),
            InvalidExecutorError, UnpicklableStageError (a stage routed to another process does not pickle),
            TypeError (``interceptors`` is not an iterable of interceptors).

        A graph in which a stage's ``config`` sets ``timeout`` but no interceptor enforces timeouts
        (``Interceptor.enforces``, e.g. ``TimeoutInterceptor``) warns (``UserWarning``) at its first run:
        nothing would enforce that timeout.
        """
        from ._graph import GraphPlan, StageGraph

        if interceptors is None:
            interceptors = ()
        elif not isinstance(interceptors, Iterable):
            msg = (
                f"build(interceptors={interceptors!r}) takes an iterable of interceptors, "
                f"e.g. build(interceptors=[{interceptors!r}])"
            )
            raise TypeError(msg)
        interceptors = list(interceptors)
        if executor is not None:
            _check_executor(None, executor)
        threads = _check_threads(max_threads)
        grace = _check_grace(cancel_grace)
        specs = self._specs()
        order, topology = validate(specs)
        infos = tuple(map(partial(_built_info, self.name, executor), specs))
        if any(info.streams for info in infos):
            _check_stream_producers(infos)
        plan = GraphPlan(
            self.name,
            infos,
            order,
            topology,
            interceptors,
            run_store,
            max_threads=threads,
            cancel_grace=grace,
        )
        return StageGraph._from_plan(plan)

    def to_mermaid(self) -> str:
        """The DAG as a Mermaid flowchart (validated like ``build()``, without instantiating stages)."""
        specs = self._specs()
        validate(specs)
        return mermaid(specs)


# The slots' own setters: the only way to fill a Pipeline, whose ``__setattr__`` refuses every change.
_set_name = Pipeline.__dict__["name"].__set__
_set_last = Pipeline.__dict__["_last"].__set__
_set_count = Pipeline.__dict__["_count"].__set__


def _first(names: dict[str, int], count: int) -> dict[str, int]:
    """A copy of the first ``count`` entries of a shared name table, which another thread may be
    appending to meanwhile (its owner's ``with_stage``). An append during the copy makes the iteration
    raise (the dict changed size; a garbage collection inside the copy can let that thread run): the
    first ``count`` entries never change, so copying again is exact."""
    while True:
        try:
            return dict(islice(names.items(), count))
        except RuntimeError:
            continue


_set_names = Pipeline.__dict__["_names"].__set__
_set_claims = Pipeline.__dict__["_claims"].__set__
_set_view = Pipeline.__dict__["_view"].__set__


def _check_threads(max_threads: object) -> int:
    from ._offload import default_thread_count

    if max_threads is None:
        return default_thread_count()
    if type(max_threads) is not int or max_threads < 1:
        msg = f"build(max_threads={max_threads!r}) is invalid; pass a positive int such as 8, or None"
        raise PipelineDefinitionError(msg)
    return max_threads


def _check_grace(grace: object) -> float:
    if not finite_number(grace) or grace < 0:
        msg = f"build(cancel_grace={grace!r}) is invalid; pass seconds as a finite number >= 0, such as 1.0"
        raise PipelineDefinitionError(msg)
    return float(grace)


def _streaming(stream: Streaming | None) -> Streaming:
    """A streaming stage's ``Streaming``: its own, else the default."""
    from ._streams import DEFAULT_STREAMING

    return stream or DEFAULT_STREAMING


def _built_info(pipeline: str, default: Executor | None, spec: StageSpec) -> StageInfo:
    """The ``StageInfo`` of one spec at ``build()``: instantiated, its executor resolved and checked."""
    runner = _instantiate(spec)
    how = _check_runner(spec.name, spec.runner)
    sync = how == _SYNC
    executor = (spec.executor or default) if sync else None
    config = MappingProxyType(dict(spec.config)) if spec.config else _NO_CONFIG
    if executor is not None:
        from ._offload import check_picklable, is_in_process

        if not is_in_process(executor):
            check_picklable(spec.name, runner, config, executor)
    return _new_info(
        spec.name,
        spec.kind,
        spec.dependencies,
        spec.conditional,
        config,
        runner,
        pipeline,
        spec.retry,
        executor,
        sync,
        spec.timeout,
        _streaming(spec.stream) if how == _STREAM else None,
        spec.streams,
    )


def _check_streams(name: str, streams: object, deps: tuple[str, ...]) -> tuple[str, ...]:
    """The ``streams=`` of a ``with_stage`` call, checked against its dependencies."""
    if type(streams) is tuple and not streams:
        return ()
    if isinstance(streams, str | bytes) or not isinstance(streams, Iterable):
        msg = (
            f"stage {name!r} has streams={streams!r}; pass a sequence of dependency names, "
            f"e.g. streams=({streams!r},)"
        )
        raise PipelineDefinitionError(msg)
    consumed = tuple(streams)
    for producer in consumed:
        if producer not in deps:
            msg = (
                f"stage {name!r} consumes the stream of {producer!r}, which is not among its dependencies "
                f"{deps!r}; add {producer!r} to dependencies"
            )
            raise PipelineDefinitionError(msg)
    if len(set(consumed)) < len(consumed):
        msg = f"stage {name!r} lists a stream twice in streams={consumed!r}; list each once"
        raise PipelineDefinitionError(msg)
    return consumed


def _check_stream_producers(infos: Sequence[StageInfo]) -> None:
    """Refuse, at ``build()``, a consumer of a stage that does not stream."""
    by_name = {info.name: info for info in infos}
    for info in infos:
        for producer in info.streams:
            if by_name[producer].streaming is None:
                msg = (
                    f"stage {info.name!r} consumes the stream of {producer!r}, but {producer!r} does not "
                    f"stream (it returns one StageOutput); make {producer!r} an 'async def' that yields "
                    f"chunks, or drop {producer!r} from the streams of {info.name!r}"
                )
                raise PipelineDefinitionError(msg)


_INTERCEPTOR_KEYS = frozenset({"timeout"})
"""``config`` keys interceptors read: a stage class gets them (and dotted keys such as
``gen_ai.operation.name``) only if its constructor takes them."""


def _for_interceptors(key: str) -> bool:
    """Whether a config key is for interceptors and telemetry: ``timeout``, or a dotted name such as
    ``gen_ai.operation.name`` (which no constructor parameter can be called)."""
    return key in _INTERCEPTOR_KEYS or not key.isidentifier()


def _constructor_config(runner: type, config: Mapping[str, Any]) -> Mapping[str, Any]:
    """``config`` without the interceptors' keys that ``runner``'s constructor does not take."""
    if not any(_for_interceptors(k) for k in config):
        return config
    try:
        parameters = inspect.signature(runner).parameters
    except (TypeError, ValueError):
        return config
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return config
    return {k: v for k, v in config.items() if not _for_interceptors(k) or k in parameters}


def _instantiate(spec: StageSpec) -> Any:
    runner = spec.runner
    if not inspect.isclass(runner):
        return runner
    try:
        return runner(**_constructor_config(runner, spec.config))
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
