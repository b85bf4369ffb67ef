"""What a stage sees: its inputs, its context, the run's context and the run's timer.

stageflow-core 0.9.1's surface of these classes (keyword constructor, ids as attributes, emitters,
factories) is in ``stageflow._compat``, whose mixins they inherit. The module runs past 500 lines because
each of these four classes documents every attribute a stage reads, and the executor's fast constructor
of a stage's context sits next to the classes it fills.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Unpack
from uuid import UUID

from ._compat import PipelineContextCompat, PipelineTimerCompat, StageContextCompat
from ._errors import StreamInputError, UndeclaredDependencyError
from ._events import get_event_sink
from ._reporting import RunReporter
from ._snapshot import ContextSnapshot

if TYPE_CHECKING:
    from ._compat import PipelineContextKeywords
    from ._dag import StageInfo
    from ._events import EventSink
    from ._graph import StageGraph
    from ._results import RunResult
    from ._streams import StreamReader
    from ._types import StageOutput

__all__ = ("PipelineContext", "PipelineTimer", "StageContext", "StageInputs")

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class _NoDefault:
    """``get_from``'s default when none is given: ``None``, told apart from an explicit ``default=None``."""

    def __repr__(self) -> str:
        return "None"


_NONE: Any = _NoDefault()
_OK = "ok"  # StageStatus.OK's value (a StrEnum: equal to its value)


def _warn_missing_key(reader: str | None, stage: str, key: str, data: Mapping[str, Any]) -> None:
    keys = sorted(k for k in data if isinstance(k, str))
    has = f"its keys: {', '.join(map(repr, keys))}" if keys else "it has no keys"
    from difflib import get_close_matches  # only when a read missed

    close = get_close_matches(key, keys, n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    who = f"stage {reader!r}" if reader else "a stage"
    warnings.warn(
        f"{who} read key {key!r} from stage {stage!r}, whose output has no such key ({has}); get_from "
        f"returns None. {hint}Pass default=... if the key is optional",
        UserWarning,
        stacklevel=3,
    )


_new = object.__new__


class PipelineTimer(PipelineTimerCompat):
    """The clock of one run: a wall-clock start plus a monotonic clock for elapsed times."""

    __slots__ = ("_start", "_start_wall")

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._start_wall = time.time()

    def __reduce__(self) -> tuple[Any, ...]:
        # ``perf_counter`` values mean nothing in another process: the wall-clock start crosses instead
        return (_timer_from_wall, (self._start_wall,))

    @property
    def pipeline_start_ms(self) -> int:
        """Wall-clock start, in milliseconds since the Unix epoch."""
        return int(self._start_wall * 1000)

    @property
    def perf_start(self) -> float:
        """Monotonic start (``time.perf_counter()`` seconds), the origin of the run's stage times.

        .. versionadded:: 0.10
        """
        return self._start

    def now_ms(self) -> int:
        """Wall-clock now, in milliseconds since the Unix epoch (derived from the monotonic clock)."""
        return int((self._start_wall + time.perf_counter() - self._start) * 1000)

    def elapsed_ms(self) -> int:
        """Milliseconds since the timer started."""
        return int((time.perf_counter() - self._start) * 1000)

    def to_wall(self, monotonic: float) -> float:
        """Convert a ``time.perf_counter()`` reading of this run into Unix-epoch seconds."""
        return self._start_wall + (monotonic - self._start)


def _timer_from_wall(start_wall: float) -> PipelineTimer:
    """A run's timer rebuilt in another process from its wall-clock start."""
    timer: PipelineTimer = object.__new__(PipelineTimer)
    timer._start_wall = start_wall
    timer._start = time.perf_counter() - (time.time() - start_wall)
    return timer


class StageInputs:
    """Read-only view of the outputs a stage may read: those of its declared dependencies.

    Only **direct** dependencies are visible; to read a transitive ancestor's output, declare it as a
    dependency too. Reading a stage that is not a declared dependency raises ``UndeclaredDependencyError``
    (when ``strict``, the default). A skipped dependency is visible with its ``StageOutput.skip`` output,
    so ``get_from`` returns the default for keys it did not produce.
    """

    __slots__ = ("_exact", "_prior", "_streams", "declared_deps", "ports", "snapshot", "stage_name", "strict")

    def __init__(
        self,
        snapshot: ContextSnapshot,
        prior_outputs: Mapping[str, StageOutput] | None = None,
        ports: Any = None,
        declared_deps: Collection[str] | None = None,
        stage_name: str | None = None,
        strict: bool = True,
    ) -> None:
        self.snapshot = snapshot
        self._prior: Mapping[str, StageOutput] = _EMPTY if prior_outputs is None else prior_outputs
        self.ports = ports
        self.declared_deps = declared_deps
        self.stage_name = stage_name
        self.strict = strict
        self._exact = False  # True when the outputs present are exactly the declared ones (the executor's)
        self._streams: Mapping[str, Any] = _EMPTY  # the streams this stage consumes, by producer

    @property
    def prior_outputs(self) -> Mapping[str, StageOutput]:
        """The dependencies' outputs by stage name (read-only)."""
        return MappingProxyType(dict(self._prior))

    def stream(self, stage_name: str) -> StreamReader:
        """The chunks of ``stage_name``, a streaming dependency this stage declared in ``streams=``.

        ``async for chunk in ctx.inputs.stream("llm"): ...`` reads them in order as they are produced;
        the loop ends when the producer ends, and raises ``StreamError`` if the producer failed.

        Raises:
            KeyError: this stage does not consume ``stage_name``'s stream (declare it in ``streams=``).

        .. versionadded:: 0.11
        """
        reader = self._streams.get(stage_name)
        if reader is None:
            consumed = ", ".join(map(repr, self._streams)) or "none"
            msg = (
                f"stage {self.stage_name!r} does not consume the stream of {stage_name!r} (it consumes: "
                f"{consumed}); declare it with with_stage(..., dependencies=({stage_name!r},), "
                f"streams=({stage_name!r},))"
            )
            raise KeyError(msg)
        return reader  # type: ignore[no-any-return]

    def _check(self, stage_name: str) -> None:
        declared = self.declared_deps
        if not self.strict or declared is None:
            return
        # in the executor's inputs the outputs present are the declared ones: only a miss needs the
        # (possibly linear) declared lookup; a hand-built one may hold outputs it does not declare
        if self._exact and stage_name in self._prior:
            return
        if stage_name in self._streams:
            msg = (
                f"stage {self.stage_name!r} reads {stage_name!r} as a stream, which has not ended: read its "
                f"chunks with 'async for chunk in ctx.inputs.stream({stage_name!r})'; its whole output "
                "exists only once it has ended"
            )
            raise StreamInputError(msg)
        if stage_name not in declared:
            raise UndeclaredDependencyError(self.stage_name, stage_name, declared)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` in the first dependency output (in dependency order) that has it.

        Raises:
            TypeError: ``key`` is ``None`` or not a str.
            ValueError: ``key`` is empty.
        """
        if type(key) is not str or not key:
            _check_key(key)
        for output in self._prior.values():
            if key in output.data:
                return output.data[key]
        return default

    def get_from(self, stage_name: str, key: str, default: Any = _NONE) -> Any:
        """The value of ``key`` in ``stage_name``'s output, or ``default``.

        When the dependency completed (it was not skipped) without ``key`` and no ``default`` was given,
        the ``None`` returned is most likely a typo: a ``UserWarning`` names the keys it has (and the
        closest one). Pass ``default=`` for a key that is optional, or use ``require_from``, which raises.

        Raises:
            UndeclaredDependencyError: ``stage_name`` is not a declared dependency.
            TypeError: ``key`` is ``None`` or not a str.
            ValueError: ``key`` is empty.

        .. versionchanged:: 0.10
           Warns about a missing key read without a default.
        """
        if type(key) is not str or not key:
            _check_key(key)
        self._check(stage_name)
        output = self._prior.get(stage_name)
        if output is None:
            return None if default is _NONE else default
        data = output.data
        if key in data:
            return data[key]
        if default is not _NONE:
            return default
        if output.status == _OK:
            _warn_missing_key(self.stage_name, stage_name, key, data)
        return None

    def require_from(self, stage_name: str, key: str) -> Any:
        """The value of ``key`` in ``stage_name``'s output.

        Raises:
            UndeclaredDependencyError: ``stage_name`` is not a declared dependency.
            KeyError: the stage produced no output or no ``key``; the message lists the keys it has.
            TypeError: ``key`` is ``None`` or not a str.
            ValueError: ``key`` is empty.
        """
        if type(key) is not str or not key:
            _check_key(key)
        self._check(stage_name)
        output = self._prior.get(stage_name)
        if output is None:
            msg = f"stage {stage_name!r} produced no output visible to {self.stage_name!r}"
            raise KeyError(msg)
        if key not in output.data:
            msg = (
                f"stage {stage_name!r} produced no key {key!r}; its keys: "
                f"{', '.join(repr(k) for k in output.data) or '(none)'}"
            )
            raise KeyError(msg)
        return output.data[key]

    def has_output(self, stage_name: str) -> bool:
        """Whether ``stage_name`` produced an output visible here."""
        self._check(stage_name)
        return stage_name in self._prior

    def get_output(self, stage_name: str) -> StageOutput | None:
        """``stage_name``'s whole ``StageOutput``, or ``None``."""
        self._check(stage_name)
        return self._prior.get(stage_name)

    def __repr__(self) -> str:
        return f"StageInputs(stage_name={self.stage_name!r}, prior_outputs={list(self._prior)!r})"


def _check_key(key: object) -> None:
    """Reject a key that is not a non-empty str (the type and value errors stageflow-core 0.9.1 raised)."""
    if isinstance(key, str):
        if key:
            return  # a str subclass, such as a StrEnum member
        msg = "StageInputs key is empty (''); pass the name of an output key, e.g. get_from('stt', 'text')"
        raise ValueError(msg)
    what = "None" if key is None else f"{key!r} (a {type(key).__name__})"
    msg = (
        f"StageInputs key is {what}, not a str; pass the name of an output key, e.g. get_from('stt', 'text')"
    )
    raise TypeError(msg)


class PipelineContext(PipelineContextCompat):
    """The state of one run, shared by all its stages and interceptors.

    The executor makes one per run (``snapshot``, ``graph``, ``event_sink``, ``timer``, ``data``). It can
    also be made with stageflow-core 0.9.1's keywords, and has 0.9.1's attributes and methods: see
    ``PipelineContextCompat``.

    Attributes:
        run_id: the run id (``snapshot.run_id.pipeline_run_id``); also ``pipeline_run_id``.
        pipeline_name: the name given to ``Pipeline(name=...)`` (``service`` when there is no graph).
        snapshot: the run's immutable input.
        data: a mutable dict shared by the run's interceptors and stages. It starts as a copy of the
            ``data`` given to the entry ``StageContext`` passed to ``run()``.
        event_sink: the sink the run's events go to.
        timer: the run's timer.
        graph: the graph being run (reading it raises ``AttributeError`` for a context no run made).
        ports: the ``ports`` of the entry context's ``inputs``; every stage's ``ctx.inputs.ports``.

    .. versionchanged:: 0.10
       Accepts stageflow-core 0.9.1's keyword constructor and has its attributes and methods.
    """

    __slots__ = (
        "_given_sink",
        "_graph",
        "_reporter",
        "_result",
        "data",
        "event_sink",
        "pipeline_name",
        "ports",
        "run_id",
        "snapshot",
        "timer",
    )

    def __init__(
        self,
        *,
        snapshot: ContextSnapshot | None = None,
        graph: StageGraph | None = None,
        event_sink: EventSink | None = None,
        timer: PipelineTimer | None = None,
        data: dict[str, Any] | None = None,
        ports: Any = None,
        **compat: Unpack[PipelineContextKeywords],
    ) -> None:
        # The executor makes one per run with the first five keywords only: the 0.9.1 ones cost it one test.
        self._extras = None
        if compat or snapshot is None:
            snapshot = self._from_keywords(snapshot, compat)
        self.snapshot = snapshot
        self.run_id: UUID = snapshot.run_id.pipeline_run_id
        self._graph = graph
        self._reporter: RunReporter | None = None  # the run's, set by the run that made this context
        self._result: RunResult | None = None  # the run's result, kept for run() past its interceptors
        self.pipeline_name: str = self.service if graph is None else graph.name
        self.event_sink: EventSink = get_event_sink() if event_sink is None else event_sink
        # the sink as given, before interceptors' ``run_sink`` hooks wrapped it for this run only: what a
        # run started from one of this run's stages reports to
        self._given_sink = self.event_sink
        self.timer = PipelineTimer() if timer is None else timer
        self.data: dict[str, Any] = {} if data is None else data
        self.ports = ports

    def _run_reporter(self) -> RunReporter:
        """The run's reporter (its events reach the run's sink), or one for this context's
        sink when no run made it."""
        reporter = self._reporter
        if reporter is None or reporter.given is not self.event_sink:
            reporter = RunReporter(self.event_sink, None, str(self.run_id), self.pipeline_name)
        return reporter

    @property
    def graph(self) -> StageGraph:
        """The graph being run.

        Raises:
            AttributeError: the context was not made by a run (``PipelineContext(...)`` without ``graph``).
        """
        graph = self._graph
        if graph is None:
            msg = "this PipelineContext was not made by a run, so it has no graph"
            raise AttributeError(msg)
        return graph

    def __repr__(self) -> str:
        return f"PipelineContext(pipeline_name={self.pipeline_name!r}, run_id={str(self.run_id)!r})"


class StageContext(StageContextCompat):
    """What ``execute(ctx)`` receives; also the entry context passed to ``StageGraph.run()``.

    Args:
        snapshot: the run's immutable input.
        inputs: the stage's inputs (for the entry context, any ``StageInputs(snapshot=snapshot)``).
        stage_name: the stage's name (for the entry context, any label such as ``"pipeline_entry"``).
        timer: the run's timer.
        event_sink: where the run's events go; ``None`` means the process sink (``set_event_sink``).
        data: initial values of the run's shared ``data`` dict (e.g. ``{"authenticated": True}``).

    During a run, each stage gets its own ``StageContext`` with ``pipeline`` (the ``PipelineContext``),
    ``stage`` (its ``StageInfo``), ``attempt`` (1-based), ``ready_at`` (when its dependencies finished)
    and ``began_at`` (when its task began), both ``time.perf_counter()`` seconds like
    ``StageResult``'s times. ``started_at`` is the run timer's start as a UTC ``datetime``.

    .. versionchanged:: 0.10
       ``started_at`` is a ``datetime``, as in stageflow-core 0.9.1; the stage's monotonic start time
       is ``began_at``.
    """

    __slots__ = (
        "_hop",
        "_initial_data",
        "_ran",
        "_stream",
        "attempt",
        "began_at",
        "event_sink",
        "inputs",
        "pipeline",
        "ready_at",
        "snapshot",
        "stage",
        "stage_name",
        "timer",
    )

    def __init__(
        self,
        snapshot: ContextSnapshot,
        inputs: StageInputs,
        stage_name: str,
        timer: PipelineTimer,
        event_sink: EventSink | None = None,
        *,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.inputs = inputs
        self.stage_name = stage_name
        self.timer = timer
        self.event_sink = event_sink
        self._initial_data = data
        self.pipeline: PipelineContext | None = None
        self.stage: StageInfo | None = None
        self.attempt = 1
        self.ready_at = 0.0
        self.began_at = 0.0
        self._ran = False  # whether a run started from this context (its run id is then used up)
        self._hop: Any = None  # a sync stage's Hop (dispatch time, stop flag, work) once it was sent
        self._stream: Any = None  # a streaming stage's StreamState while it runs

    @property
    def stop_requested(self) -> bool:
        """Whether the run no longer wants this stage's result (it was cancelled, failed fast or timed out).

        A sync stage running in a thread may check it and return early; whatever it returns then is
        discarded. Always ``False`` for async stages (they are cancelled with ``asyncio.CancelledError``)
        and in other processes.

        .. versionadded:: 0.11
        """
        hop = self._hop
        return hop is not None and hop.stop

    @property
    def dispatch(self) -> float:
        """Seconds this sync stage's attempts so far spent going to their executor and back (0.0 otherwise).

        .. versionadded:: 0.11
        """
        hop = self._hop
        return 0.0 if hop is None else float(hop.dispatch)

    @property
    def work(self) -> str | None:
        """After a cancelled executor hop, ``"stopped"`` or ``"abandoned"``; else ``None``.

        .. versionadded:: 0.11
        """
        hop = self._hop
        return None if hop is None else hop.work

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (to cross to another process), a context keeps what a stage reads: the snapshot, the
        stage, its attempt, its timer and its dependencies' outputs; not the run, its sink or its ports."""
        inputs = self.inputs
        return (
            _detached_context,
            (
                self.snapshot,
                dict(inputs._prior),
                None if inputs.declared_deps is None else tuple(inputs.declared_deps),
                self.stage_name,
                self.timer,
                self.stage,
                self.attempt,
            ),
        )

    @property
    def data(self) -> dict[str, Any]:
        """The run's shared data dict (``PipelineContext.data``)."""
        if self.pipeline is not None:
            return self.pipeline.data
        return dict(self._initial_data or {})

    def __repr__(self) -> str:
        return f"StageContext(stage_name={self.stage_name!r}, attempt={self.attempt})"


def _stage_context(
    run: PipelineContext,
    stage: StageInfo,
    prior: Mapping[str, StageOutput],
    declared: Collection[str],
    ready_at: float,
    began_at: float,
) -> StageContext:
    """The context of one stage of ``run``, with its ``StageInputs`` (built without ``__init__``s)."""
    snapshot = run.snapshot
    inputs = _new(StageInputs)
    inputs.snapshot = snapshot
    inputs._prior = prior
    inputs.ports = run.ports
    inputs.declared_deps = declared
    inputs.stage_name = stage.name
    inputs.strict = True
    inputs._exact = True
    inputs._streams = _EMPTY
    ctx: StageContext = _new(StageContext)
    ctx.snapshot = snapshot
    ctx.inputs = inputs
    ctx.stage_name = stage.name
    ctx.timer = run.timer
    ctx.event_sink = run.event_sink
    ctx._initial_data = None
    ctx.pipeline = run
    ctx.stage = stage
    ctx.attempt = 1
    ctx.ready_at = ready_at
    ctx.began_at = began_at
    ctx._ran = False
    ctx._hop = None
    ctx._stream = None
    return ctx


def _detached_context(
    snapshot: ContextSnapshot,
    prior: Mapping[str, StageOutput],
    declared: tuple[str, ...] | None,
    stage_name: str,
    timer: PipelineTimer,
    stage: StageInfo | None,
    attempt: int,
) -> StageContext:
    """A stage's context rebuilt in another process (see ``StageContext.__reduce__``)."""
    inputs = StageInputs(snapshot, prior, None, declared, stage_name)
    ctx = StageContext(snapshot, inputs, stage_name, timer)
    ctx.stage = stage
    ctx.attempt = attempt
    return ctx
