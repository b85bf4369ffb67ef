"""What a stage sees: its inputs, its context, the run's context and the run's timer."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ._errors import UndeclaredDependencyError
from ._snapshot import ContextSnapshot

if TYPE_CHECKING:
    from ._events import EventSink
    from ._graph import StageGraph
    from ._pipeline import StageInfo
    from ._types import StageOutput

__all__ = ("PipelineContext", "PipelineTimer", "StageContext", "StageInputs")

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_new = object.__new__


class PipelineTimer:
    """The clock of one run: a wall-clock start plus a monotonic clock for elapsed times."""

    __slots__ = ("_start", "_start_wall")

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._start_wall = time.time()

    @property
    def pipeline_start_ms(self) -> int:
        """Wall-clock start, in milliseconds since the Unix epoch."""
        return int(self._start_wall * 1000)

    @property
    def started_at(self) -> float:
        """Monotonic start (``time.perf_counter()`` seconds)."""
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


class StageInputs:
    """Read-only view of the outputs a stage may read: those of its declared dependencies.

    Only **direct** dependencies are visible; to read a transitive ancestor's output, declare it as a
    dependency too. Reading a stage that is not a declared dependency raises ``UndeclaredDependencyError``
    (when ``strict``, the default). A skipped dependency is visible with its ``StageOutput.skip`` output,
    so ``get_from`` returns the default for keys it did not produce.
    """

    __slots__ = ("_prior", "declared_deps", "ports", "snapshot", "stage_name", "strict")

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

    @property
    def prior_outputs(self) -> Mapping[str, StageOutput]:
        """The dependencies' outputs by stage name (read-only)."""
        return MappingProxyType(dict(self._prior))

    def _check(self, stage_name: str) -> None:
        declared = self.declared_deps
        # the outputs present are declared ones: only a miss needs the (possibly linear) declared lookup
        if (
            self.strict
            and declared is not None
            and stage_name not in self._prior
            and stage_name not in declared
        ):
            raise UndeclaredDependencyError(self.stage_name, stage_name, declared)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` in the first dependency output (in dependency order) that has it."""
        for output in self._prior.values():
            if key in output.data:
                return output.data[key]
        return default

    def get_from(self, stage_name: str, key: str, default: Any = None) -> Any:
        """The value of ``key`` in ``stage_name``'s output, or ``default``."""
        self._check(stage_name)
        output = self._prior.get(stage_name)
        if output is None:
            return default
        return output.data.get(key, default)

    def require_from(self, stage_name: str, key: str) -> Any:
        """The value of ``key`` in ``stage_name``'s output.

        Raises:
            KeyError: the stage produced no output or no ``key``; the message lists the keys it has.
        """
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


class PipelineContext:
    """The state of one run, shared by all its stages and interceptors.

    Attributes:
        run_id: the run id (``snapshot.run_id.pipeline_run_id``).
        pipeline_name: the name given to ``Pipeline(name=...)``.
        snapshot: the run's immutable input.
        data: a mutable dict shared by the run's interceptors and stages. It starts as a copy of the
            ``data`` given to the entry ``StageContext`` passed to ``run()``.
        event_sink: the sink the run's events go to.
        timer: the run's timer.
        graph: the graph being run.
    """

    __slots__ = (
        "_ic_err",
        "_ic_out",
        "data",
        "event_sink",
        "graph",
        "pipeline_name",
        "run_id",
        "snapshot",
        "timer",
    )

    def __init__(
        self,
        *,
        snapshot: ContextSnapshot,
        graph: StageGraph,
        event_sink: EventSink,
        timer: PipelineTimer,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.run_id: UUID = snapshot.run_id.pipeline_run_id
        self.graph = graph
        self.pipeline_name = graph.name
        self.event_sink = event_sink
        self.timer = timer
        self.data: dict[str, Any] = {} if data is None else data
        self._ic_err: BaseException | None = None
        self._ic_out: object = None

    def try_emit_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        """Emit a custom event to the run's sink, tagged with the run id and pipeline name."""
        from ._events import emit

        emit(
            self.event_sink,
            type,
            {
                "run_id": str(self.run_id),
                "pipeline": self.pipeline_name,
                "timestamp": time.time(),
                **(data or {}),
            },
        )

    def __repr__(self) -> str:
        return f"PipelineContext(pipeline_name={self.pipeline_name!r}, run_id={str(self.run_id)!r})"


class StageContext:
    """What ``execute(ctx)`` receives; also the entry context passed to ``StageGraph.run()``.

    Args:
        snapshot: the run's immutable input.
        inputs: the stage's inputs (for the entry context, any ``StageInputs(snapshot=snapshot)``).
        stage_name: the stage's name (for the entry context, any label such as ``"pipeline_entry"``).
        timer: the run's timer.
        event_sink: where the run's events go; ``None`` means the process sink (``set_event_sink``).
        data: initial values of the run's shared ``data`` dict (e.g. ``{"authenticated": True}``).

    During a run, each stage gets its own ``StageContext`` with ``pipeline`` (the ``PipelineContext``),
    ``stage`` (its ``StageInfo``), ``attempt`` (1-based), ``ready_at`` and ``started_at``
    (``time.perf_counter()`` seconds).
    """

    __slots__ = (
        "_ic_err",
        "_ic_out",
        "_initial_data",
        "attempt",
        "event_sink",
        "inputs",
        "pipeline",
        "ready_at",
        "snapshot",
        "stage",
        "stage_name",
        "started_at",
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
        self.started_at = 0.0
        self._ic_err: BaseException | None = None
        self._ic_out: object = None

    @property
    def data(self) -> dict[str, Any]:
        """The run's shared data dict (``PipelineContext.data``)."""
        if self.pipeline is not None:
            return self.pipeline.data
        return dict(self._initial_data or {})

    @property
    def pipeline_run_id(self) -> UUID:
        """The run id."""
        return self.snapshot.run_id.pipeline_run_id

    @property
    def request_id(self) -> UUID | None:
        """The request id of the run identity."""
        return self.snapshot.run_id.request_id

    @property
    def execution_mode(self) -> str | None:
        """The snapshot's execution mode."""
        return self.snapshot.execution_mode

    def try_emit_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        """Emit a custom event to the run's sink, tagged with run id, pipeline and stage name."""
        if self.pipeline is None:
            from ._events import emit, resolve_sink

            emit(resolve_sink(self.event_sink), type, {"stage": self.stage_name, **(data or {})})
        else:
            self.pipeline.try_emit_event(type, {"stage": self.stage_name, **(data or {})})

    def __repr__(self) -> str:
        return f"StageContext(stage_name={self.stage_name!r}, attempt={self.attempt})"


def _stage_context(
    run: PipelineContext,
    stage: StageInfo,
    prior: Mapping[str, StageOutput],
    declared: Collection[str],
    ready_at: float,
    started_at: float,
) -> StageContext:
    """The context of one stage of ``run``, with its ``StageInputs`` (built without ``__init__``s)."""
    snapshot = run.snapshot
    inputs = _new(StageInputs)
    inputs.snapshot = snapshot
    inputs._prior = prior
    inputs.ports = None
    inputs.declared_deps = declared
    inputs.stage_name = stage.name
    inputs.strict = True
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
    ctx.started_at = started_at
    ctx._ic_err = None
    ctx._ic_out = None
    return ctx
