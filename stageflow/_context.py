"""What a stage sees: its inputs, its context, the run's context and the run's timer."""

from __future__ import annotations

import difflib
import time
import warnings
from collections.abc import Collection, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict, Unpack
from uuid import UUID

from ._errors import StreamInputError, UndeclaredDependencyError
from ._events import emit, get_event_sink
from ._snapshot import ContextSnapshot, RunIdentity

if TYPE_CHECKING:
    from ._events import EventSink
    from ._graph import StageGraph
    from ._pipeline import StageInfo
    from ._streams import StreamReader
    from ._types import StageArtifact, StageOutput

__all__ = (
    "PipelineContext",
    "PipelineContextKeywords",
    "PipelineTimer",
    "StageContext",
    "StageInputs",
    "create_stage_context",
    "create_stage_inputs",
)

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
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    who = f"stage {reader!r}" if reader else "a stage"
    warnings.warn(
        f"{who} read key {key!r} from stage {stage!r}, whose output has no such key ({has}); get_from "
        f"returns None. {hint}Pass default=... if the key is optional",
        UserWarning,
        stacklevel=3,
    )


_new = object.__new__


class PipelineTimer:
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
    def started_at(self) -> datetime:
        """Wall-clock start as a UTC ``datetime``, at the millisecond precision of ``pipeline_start_ms``.

        .. versionchanged:: 0.10
           A ``datetime``, as in stageflow-core 0.9.1; the monotonic start is ``perf_start``.
        """
        return datetime.fromtimestamp(self.pipeline_start_ms / 1000, UTC)

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


def create_stage_inputs(
    snapshot: ContextSnapshot,
    *,
    prior_outputs: Mapping[str, StageOutput] | None = None,
    ports: Any = None,
    declared_deps: Collection[str] | None = None,
    stage_name: str | None = None,
    strict: bool = True,
) -> StageInputs:
    """A ``StageInputs``, made as stageflow-core 0.9.1's factory made it (for tests and tools).

    Args:
        snapshot: the run's input.
        prior_outputs: the dependencies' outputs by stage name.
        ports: injected capabilities, passed through untouched.
        declared_deps: the stage's dependencies; ``None`` or empty means "any stage may be read".
        stage_name: the stage the inputs are for (named in errors).
        strict: whether reading an undeclared stage raises ``UndeclaredDependencyError``.

    .. versionadded:: 0.10
    """
    return StageInputs(
        snapshot,
        prior_outputs,
        ports,
        frozenset(declared_deps) if declared_deps else None,
        stage_name,
        strict,
    )


def _no_mixing(given: list[str]) -> NoReturn:
    msg = (
        f"PipelineContext got snapshot= together with {', '.join(given)}; the ids, topology and "
        "execution_mode come from the snapshot (its RunIdentity): pass either the snapshot or those keywords"
    )
    raise TypeError(msg)


class _Extras:
    """The stageflow-core 0.9.1 attributes of a ``PipelineContext``, made only when one is used."""

    __slots__ = (
        "artifacts",
        "canceled",
        "configuration",
        "correlation_id",
        "db",
        "parent_run_id",
        "parent_stage_id",
        "service",
        "stage_metadata",
    )

    def __init__(self) -> None:
        self.service = "pipeline"
        self.configuration: dict[str, Any] = {}
        self.db: Any = None
        self.canceled = False
        self.artifacts: list[StageArtifact] = []
        self.stage_metadata: dict[str, dict[str, Any]] = {}
        self.parent_run_id: UUID | None = None
        self.parent_stage_id: str | None = None
        self.correlation_id: UUID | None = None


def _uuid_str(value: UUID | None) -> str | None:
    return None if value is None else str(value)


class PipelineContextKeywords(TypedDict, total=False):
    """stageflow-core 0.9.1's ``PipelineContext`` keywords (all optional here).

    .. versionadded:: 0.10
    """

    pipeline_run_id: UUID | None
    request_id: UUID | None
    session_id: UUID | None
    user_id: UUID | None
    org_id: UUID | None
    interaction_id: UUID | None
    topology: str | None
    configuration: dict[str, Any] | None
    execution_mode: str | None
    service: str
    db: Any
    canceled: bool
    artifacts: list[StageArtifact] | None
    parent_run_id: UUID | None
    parent_stage_id: str | None
    correlation_id: UUID | None


_SNAPSHOT_KEYWORDS = (
    "pipeline_run_id",
    "request_id",
    "session_id",
    "user_id",
    "org_id",
    "interaction_id",
    "topology",
    "execution_mode",
)
_COMPAT_KEYWORDS = tuple(PipelineContextKeywords.__annotations__)


class PipelineContext:
    """The state of one run, shared by all its stages and interceptors.

    The executor makes one per run (``snapshot``, ``graph``, ``event_sink``, ``timer``, ``data``). It can
    also be made with stageflow-core 0.9.1's keywords, for example to call an interceptor's hooks in a
    test: ``PipelineContext(pipeline_run_id=..., user_id=..., topology="chat", data={...})``. The ids,
    ``topology`` and ``execution_mode`` then go into a new ``snapshot`` (a fresh run id when
    ``pipeline_run_id`` is ``None``), and ``event_sink`` defaults to the process sink.

    Attributes:
        run_id: the run id (``snapshot.run_id.pipeline_run_id``); also ``pipeline_run_id``.
        pipeline_name: the name given to ``Pipeline(name=...)`` (``service`` when there is no graph).
        snapshot: the run's immutable input.
        data: a mutable dict shared by the run's interceptors and stages. It starts as a copy of the
            ``data`` given to the entry ``StageContext`` passed to ``run()``.
        event_sink: the sink the run's events go to.
        timer: the run's timer.
        graph: the graph being run (reading it raises ``AttributeError`` for a context no run made).
        request_id, session_id, user_id, org_id, interaction_id: the snapshot's correlation ids.
        topology, execution_mode: the snapshot's.
        service, configuration, db, canceled, artifacts, parent_run_id, parent_stage_id,
            correlation_id: stageflow-core 0.9.1's attributes, settable; stageflow itself reads none
            of them (``canceled`` does not stop a run: a stage returns ``StageOutput.cancel`` for that).

        ports: the ``ports`` of the entry context's ``inputs``; every stage's ``ctx.inputs.ports``.

    .. versionchanged:: 0.10
       Accepts stageflow-core 0.9.1's keyword constructor and has its attributes and methods.
    """

    __slots__ = (
        "_extras",
        "_graph",
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
        self._extras: _Extras | None = None
        if compat or snapshot is None:
            snapshot = self._compat(snapshot, compat)
        self.snapshot = snapshot
        self.run_id: UUID = snapshot.run_id.pipeline_run_id
        self._graph = graph
        self.pipeline_name: str = self.service if graph is None else graph.name
        self.event_sink: EventSink = get_event_sink() if event_sink is None else event_sink
        self.timer = PipelineTimer() if timer is None else timer
        self.data: dict[str, Any] = {} if data is None else data
        self.ports = ports

    def _compat(self, snapshot: ContextSnapshot | None, given: PipelineContextKeywords) -> ContextSnapshot:
        """Take stageflow-core 0.9.1's keywords: the ids into a new snapshot, the rest into ``_extras``."""
        unknown = [key for key in given if key not in _COMPAT_KEYWORDS]
        if unknown:
            msg = (
                f"PipelineContext() got an unexpected keyword argument {unknown[0]!r}; it takes "
                f"snapshot, graph, event_sink, timer, data, {', '.join(_COMPAT_KEYWORDS)}"
            )
            raise TypeError(msg)
        ids = [key for key in _SNAPSHOT_KEYWORDS if given.get(key) is not None]
        if snapshot is None:
            identity = RunIdentity(
                request_id=given.get("request_id"),
                session_id=given.get("session_id"),
                user_id=given.get("user_id"),
                org_id=given.get("org_id"),
                interaction_id=given.get("interaction_id"),
            )
            run_id = given.get("pipeline_run_id")
            if run_id is not None:
                identity = replace(identity, pipeline_run_id=run_id)
            snapshot = ContextSnapshot(
                run_id=identity, topology=given.get("topology"), execution_mode=given.get("execution_mode")
            )
        elif ids:
            _no_mixing([f"{key}=" for key in ids])
        if any(key not in _SNAPSHOT_KEYWORDS for key in given):
            extras = self._more()
            extras.service = given.get("service", "pipeline")
            extras.configuration = given.get("configuration") or {}
            extras.db = given.get("db")
            extras.canceled = bool(given.get("canceled", False))
            extras.artifacts = given.get("artifacts") or []
            extras.parent_run_id = given.get("parent_run_id")
            extras.parent_stage_id = given.get("parent_stage_id")
            extras.correlation_id = given.get("correlation_id")
        return snapshot

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

    def _more(self) -> _Extras:
        extras = self._extras
        if extras is None:
            extras = self._extras = _Extras()
        return extras

    # ----------------------------------------------------------- ids, read from the snapshot

    @property
    def pipeline_run_id(self) -> UUID:
        """The run id (``run_id``)."""
        return self.run_id

    @property
    def request_id(self) -> UUID | None:
        """The request id of the run identity."""
        return self.snapshot.run_id.request_id

    @property
    def session_id(self) -> UUID | None:
        """The session id of the run identity."""
        return self.snapshot.run_id.session_id

    @property
    def user_id(self) -> UUID | None:
        """The user id of the run identity."""
        return self.snapshot.run_id.user_id

    @property
    def org_id(self) -> UUID | None:
        """The organisation id of the run identity."""
        return self.snapshot.run_id.org_id

    @property
    def interaction_id(self) -> UUID | None:
        """The interaction id of the run identity."""
        return self.snapshot.run_id.interaction_id

    @property
    def topology(self) -> str | None:
        """The snapshot's topology."""
        return self.snapshot.topology

    @property
    def execution_mode(self) -> str | None:
        """The snapshot's execution mode."""
        return self.snapshot.execution_mode

    # ----------------------------------------------------------- stageflow-core 0.9.1 attributes

    @property
    def service(self) -> str:
        """A service label (default ``"pipeline"``)."""
        return "pipeline" if self._extras is None else self._extras.service

    @service.setter
    def service(self, value: str) -> None:
        self._more().service = value

    @property
    def configuration(self) -> dict[str, Any]:
        """Static configuration of the run (a dict; empty unless given)."""
        return self._more().configuration

    @configuration.setter
    def configuration(self, value: dict[str, Any]) -> None:
        self._more().configuration = value

    @property
    def db(self) -> Any:
        """A database handle for the application's own use (``None`` unless given)."""
        return None if self._extras is None else self._extras.db

    @db.setter
    def db(self, value: Any) -> None:
        self._more().db = value

    @property
    def canceled(self) -> bool:
        """Whether ``mark_canceled()`` was called (a flag for the application; it does not stop the run)."""
        return self._extras is not None and self._extras.canceled

    @canceled.setter
    def canceled(self, value: bool) -> None:
        self._more().canceled = bool(value)

    @property
    def artifacts(self) -> list[StageArtifact]:
        """Artifacts the application collects for the run (a list; empty unless given)."""
        return self._more().artifacts

    @artifacts.setter
    def artifacts(self, value: list[StageArtifact]) -> None:
        self._more().artifacts = value

    @property
    def parent_run_id(self) -> UUID | None:
        """The run id of the run that started this one, if the application set it."""
        return None if self._extras is None else self._extras.parent_run_id

    @parent_run_id.setter
    def parent_run_id(self, value: UUID | None) -> None:
        self._more().parent_run_id = value

    @property
    def parent_stage_id(self) -> str | None:
        """The stage of the parent run that started this one, if the application set it."""
        return None if self._extras is None else self._extras.parent_stage_id

    @parent_stage_id.setter
    def parent_stage_id(self, value: str | None) -> None:
        self._more().parent_stage_id = value

    @property
    def correlation_id(self) -> UUID | None:
        """A correlation id set by the application."""
        return None if self._extras is None else self._extras.correlation_id

    @correlation_id.setter
    def correlation_id(self, value: UUID | None) -> None:
        self._more().correlation_id = value

    @property
    def is_child_run(self) -> bool:
        """Whether ``parent_run_id`` is set."""
        return self.parent_run_id is not None

    @property
    def is_canceled(self) -> bool:
        """Whether ``mark_canceled()`` was called."""
        return self.canceled

    def mark_canceled(self) -> None:
        """Set ``canceled``: a flag for the application (to stop the run, return ``StageOutput.cancel``)."""
        self._more().canceled = True

    def set_stage_metadata(self, stage: str, metadata: dict[str, Any]) -> None:
        """Keep ``metadata`` for ``stage`` (replacing what was kept for it)."""
        self._more().stage_metadata[stage] = metadata

    def get_stage_metadata(self, stage: str) -> dict[str, Any] | None:
        """The metadata kept for ``stage``, or ``None``."""
        return None if self._extras is None else self._extras.stage_metadata.get(stage)

    @classmethod
    def now(cls) -> datetime:
        """The current time, as a UTC ``datetime``."""
        return datetime.now(UTC)

    def to_dict(self) -> dict[str, Any]:
        """The context as a plain dict: ids as strings (``None`` where unset), labels, data, flags.

        ``parent_run_id``, ``parent_stage_id`` and ``correlation_id`` appear only when set.
        """
        out: dict[str, Any] = {
            "pipeline_run_id": str(self.run_id),
            "request_id": _uuid_str(self.request_id),
            "session_id": _uuid_str(self.session_id),
            "user_id": _uuid_str(self.user_id),
            "org_id": _uuid_str(self.org_id),
            "interaction_id": _uuid_str(self.interaction_id),
            "topology": self.topology,
            "execution_mode": self.execution_mode,
            "service": self.service,
            "data": self.data,
            "canceled": self.canceled,
            "artifacts_count": 0 if self._extras is None else len(self._extras.artifacts),
        }
        if self.parent_run_id is not None:
            out["parent_run_id"] = str(self.parent_run_id)
        if self.parent_stage_id is not None:
            out["parent_stage_id"] = self.parent_stage_id
        if self.correlation_id is not None:
            out["correlation_id"] = str(self.correlation_id)
        return out

    def record_stage_event(
        self, *, stage: str, status: str, payload: Mapping[str, Any] | None = None
    ) -> None:
        """Emit ``stage.{stage}.{status}`` to the run's sink with the ids, labels and a UTC ISO timestamp.

        The event's data: ``request_id``, ``session_id``, ``user_id``, ``org_id``, ``service``,
        ``stage``, ``status``, ``timestamp``, ``topology``, ``execution_mode``, then ``payload``'s items,
        then ``pipeline_run_id``.
        """
        data: dict[str, Any] = {
            "request_id": _uuid_str(self.request_id),
            "session_id": _uuid_str(self.session_id),
            "user_id": _uuid_str(self.user_id),
            "org_id": _uuid_str(self.org_id),
            "service": self.service,
            "stage": stage,
            "status": status,
            "timestamp": datetime.now(UTC).isoformat(),
            "topology": self.topology,
            "execution_mode": self.execution_mode,
            **(payload or {}),
            "pipeline_run_id": str(self.run_id),
        }
        emit(self.event_sink, f"stage.{stage}.{status}", data)

    def try_emit_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        """Emit a custom event to the run's sink, tagged with the run's ids and labels.

        The event's data: ``run_id`` (also as ``pipeline_run_id``), ``pipeline``, ``timestamp`` (Unix
        seconds), ``request_id``, ``execution_mode``, ``topology``, ``service``, then ``data``'s items.
        """
        run_id = str(self.run_id)
        emit(
            self.event_sink,
            type,
            {
                "run_id": run_id,
                "pipeline": self.pipeline_name,
                "timestamp": time.time(),
                "pipeline_run_id": run_id,
                "request_id": _uuid_str(self.request_id),
                "execution_mode": self.execution_mode,
                "topology": self.topology,
                "service": self.service,
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

    @property
    def started_at(self) -> datetime:
        """The run timer's start, as a UTC ``datetime`` (``timer.started_at``)."""
        return self.timer.started_at

    @classmethod
    def now(cls) -> datetime:
        """The current time, as a UTC ``datetime``."""
        return datetime.now(UTC)

    def to_dict(self) -> dict[str, Any]:
        """``snapshot.to_dict()`` plus ``stage_name`` and ``started_at`` (ISO 8601)."""
        out = self.snapshot.to_dict()
        out["stage_name"] = self.stage_name
        out["started_at"] = self.started_at.isoformat()
        return out

    def as_pipeline_context(
        self,
        *,
        data: dict[str, Any] | None = None,
        configuration: dict[str, Any] | None = None,
        service: str | None = None,
        db: Any = None,
    ) -> PipelineContext:
        """A new ``PipelineContext`` with this context's snapshot (ids, topology, mode) and event sink.

        Args:
            data: its ``data`` (copied; empty by default).
            configuration: its ``configuration`` (copied; empty by default).
            service: its ``service`` (default ``"pipeline"``).
            db: its ``db``.
        """
        run = self.pipeline
        return PipelineContext(
            snapshot=self.snapshot,
            graph=None if run is None else run._graph,
            event_sink=self.event_sink,
            timer=self.timer,
            data=dict(data or {}),
            configuration=dict(configuration or {}),
            service=service or "pipeline",
            db=db,
        )

    def record_stage_event(self, stage: str, status: str, **data: Any) -> None:
        """Emit ``stage.{status}`` with ``stage``, ``status``, this context's ``stage_name`` and ``data``."""
        self.try_emit_event(
            f"stage.{status}", {"stage": stage, "status": status, "stage_name": self.stage_name, **data}
        )

    def try_emit_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        """Emit a custom event to the run's sink, tagged with the run's ids and the stage name.

        During a run, see ``PipelineContext.try_emit_event``; ``stage`` is this stage's name unless
        ``data`` has one. Outside a run (an entry context), the data is ``pipeline_run_id``,
        ``request_id``, ``execution_mode``, ``stage``, then ``data``'s items.
        """
        if self.pipeline is None:
            snapshot = self.snapshot
            emit(
                get_event_sink() if self.event_sink is None else self.event_sink,
                type,
                {
                    "pipeline_run_id": str(snapshot.run_id.pipeline_run_id),
                    "request_id": _uuid_str(snapshot.run_id.request_id),
                    "execution_mode": snapshot.execution_mode,
                    "stage": self.stage_name,
                    **(data or {}),
                },
            )
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


def create_stage_context(
    snapshot: ContextSnapshot,
    inputs: StageInputs,
    stage_name: str,
    timer: PipelineTimer,
    event_sink: EventSink | None = None,
) -> StageContext:
    """``StageContext(snapshot, inputs, stage_name, timer, event_sink)``, as stageflow-core 0.9.1's factory.

    .. versionadded:: 0.10
    """
    return StageContext(snapshot, inputs, stage_name, timer, event_sink)
