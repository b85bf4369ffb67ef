"""stageflow-core 0.9.1's surface of the context classes, kept apart from what a stage sees.

The public classes inherit it as mixins (anyio kept its 2.x bridge the same way):
``PipelineContext(PipelineContextCompat)``, ``StageContext(StageContextCompat)`` and
``PipelineTimer(PipelineTimerCompat)``. ``stageflow/_context.py`` holds what the engine and a stage use;
this module holds what only programs written for 0.9.1 use:

- ``PipelineContext``'s keyword constructor (``PipelineContextKeywords``), the run's ids as attributes,
  0.9.1's eight settable attributes (kept in an ``_Extras`` made only when one is used), its flags and
  stage metadata, ``now()``, ``to_dict()`` and its emitters ``record_stage_event``/``try_emit_event``;
- ``StageContext``'s ids, ``started_at``, ``now()``, ``to_dict()``, ``as_pipeline_context()`` and its
  emitters; ``PipelineTimer.started_at``;
- 0.9.1's factories ``create_stage_inputs`` and ``create_stage_context``;
- the finder that words the error for an import of one of 0.9.1's modules. Its tables, and those for
  0.9.1's renamed and removed top-level names, are in ``stageflow._renamed``, loaded only when such a name
  is asked for.

The module runs past 500 lines because 0.9.1's surface is wide: each of its attributes is a documented
property, and each emitter says which keys it adds to the event envelope.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict
from uuid import UUID

from ._events import get_event_sink
from ._reporting import RunReporter
from ._snapshot import ContextSnapshot, RunIdentity

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    from ._context import PipelineContext, PipelineTimer, StageContext, StageInputs
    from ._dag import StageInfo
    from ._events import EventSink
    from ._types import StageArtifact, StageOutput

__all__ = (
    "PipelineContextCompat",
    "PipelineContextKeywords",
    "PipelineTimerCompat",
    "StageContextCompat",
    "create_stage_context",
    "create_stage_inputs",
    "install_module_hints",
)


# --------------------------------------------------------------------------- PipelineContext


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


def _no_mixing(given: list[str]) -> NoReturn:
    msg = (
        f"PipelineContext got snapshot= together with {', '.join(given)}; the ids, topology and "
        "execution_mode come from the snapshot (its RunIdentity): pass either the snapshot or those keywords"
    )
    raise TypeError(msg)


def _uuid_str(value: UUID | None) -> str | None:
    return None if value is None else str(value)


class PipelineContextCompat:
    """``PipelineContext``'s stageflow-core 0.9.1 keywords, attributes and methods.

    ``PipelineContext(pipeline_run_id=..., user_id=..., topology="chat", data={...})``, for example to call
    an interceptor's hooks in a test: the ids, ``topology`` and ``execution_mode`` go into a new
    ``snapshot`` (a fresh run id when ``pipeline_run_id`` is ``None``), and ``event_sink`` defaults to
    the process sink.

    Attributes:
        pipeline_run_id, request_id, session_id, user_id, org_id, interaction_id: the snapshot's ids.
        topology, execution_mode: the snapshot's.
        service, configuration, db, canceled, artifacts, parent_run_id, parent_stage_id,
            correlation_id: stageflow-core 0.9.1's attributes, settable; stageflow itself reads none
            of them (``canceled`` does not stop a run: a stage returns ``StageOutput.cancel`` for that).

    .. versionadded:: 0.10
    """

    __slots__ = ("_extras",)

    # set by PipelineContext.__init__
    _extras: _Extras | None
    _run_reporter: Callable[[], RunReporter]
    snapshot: ContextSnapshot
    run_id: UUID
    pipeline_name: str
    event_sink: EventSink
    data: dict[str, Any]

    def _from_keywords(
        self, snapshot: ContextSnapshot | None, given: PipelineContextKeywords
    ) -> ContextSnapshot:
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

        The event's data: the envelope's ``run_id`` and ``pipeline``, then 0.9.1's ``request_id``,
        ``session_id``, ``user_id``, ``org_id``, ``service``, ``stage``, ``status``, ``timestamp`` (0.9.1's
        UTC ISO text in place of the envelope's float), ``topology``, ``execution_mode``, then ``payload``'s
        items, then ``pipeline_run_id``.

        .. versionchanged:: 0.11
           ``run_id`` and ``pipeline``, as in every other event.
        """
        legacy: dict[str, Any] = {
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
        self._run_reporter().custom(f"stage.{stage}.{status}", None, legacy)

    def try_emit_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        """Emit a custom event to the run's sink, tagged with the run's ids and labels.

        The event's data: ``run_id`` (also as ``pipeline_run_id``), ``pipeline``, ``timestamp`` (Unix
        seconds), ``request_id``, ``execution_mode``, ``topology``, ``service``, then ``data``'s items.
        """
        reporter = self._run_reporter()
        legacy = {
            "pipeline_run_id": reporter.run_id,
            "request_id": _uuid_str(self.request_id),
            "execution_mode": self.execution_mode,
            "topology": self.topology,
            "service": self.service,
        }
        reporter.custom(type, data, legacy)


# --------------------------------------------------------------------------- StageContext


class StageContextCompat:
    """``StageContext``'s stageflow-core 0.9.1 attributes and methods: the run's ids, ``started_at``,
    ``now()``, ``to_dict()``, ``as_pipeline_context()`` and the custom-event emitters.

    .. versionadded:: 0.10
    """

    __slots__ = ()

    # set by StageContext.__init__
    snapshot: ContextSnapshot
    stage: StageInfo | None
    stage_name: str
    timer: PipelineTimer
    event_sink: EventSink | None
    pipeline: PipelineContext | None

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
        from ._context import PipelineContext

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
        ``data`` has one. Outside a run (an entry context, or a stage's context in another process), the
        data is the envelope (``run_id``, ``pipeline``: the stage's pipeline, else ``None``,
        ``timestamp``), then ``pipeline_run_id``, ``request_id``, ``execution_mode``, ``stage``, then
        ``data``'s items.

        .. versionchanged:: 0.11
           The envelope outside a run too.
        """
        if self.pipeline is None:
            snapshot = self.snapshot
            run_id = str(snapshot.run_id.pipeline_run_id)
            reporter = RunReporter(
                get_event_sink() if self.event_sink is None else self.event_sink,
                None,
                run_id,
                None if self.stage is None else self.stage.pipeline,
            )
            legacy = {
                "pipeline_run_id": run_id,
                "request_id": _uuid_str(snapshot.run_id.request_id),
                "execution_mode": snapshot.execution_mode,
                "stage": self.stage_name,
            }
            reporter.custom(type, data, legacy)
        else:
            self.pipeline.try_emit_event(type, {"stage": self.stage_name, **(data or {})})


# --------------------------------------------------------------------------- PipelineTimer


class PipelineTimerCompat:
    """``PipelineTimer``'s stageflow-core 0.9.1 attribute: ``started_at``, a UTC ``datetime``.

    .. versionadded:: 0.10
    """

    __slots__ = ()

    if TYPE_CHECKING:

        @property
        def pipeline_start_ms(self) -> int: ...  # PipelineTimer's

    @property
    def started_at(self) -> datetime:
        """Wall-clock start as a UTC ``datetime``, at the millisecond precision of ``pipeline_start_ms``.

        .. versionchanged:: 0.10
           A ``datetime``, as in stageflow-core 0.9.1; the monotonic start is ``perf_start``.
        """
        return datetime.fromtimestamp(self.pipeline_start_ms / 1000, UTC)


# --------------------------------------------------------------------------- factories


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
    from ._context import StageInputs

    return StageInputs(
        snapshot,
        prior_outputs,
        ports,
        frozenset(declared_deps) if declared_deps else None,
        stage_name,
        strict,
    )


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
    from ._context import StageContext

    return StageContext(snapshot, inputs, stage_name, timer, event_sink)


# --------------------------------------------------------------------------- 0.9.1's modules


class _OldModuleFinder:
    """Consulted last, after every real finder missed: words the error for 0.9.1's module names."""

    @staticmethod
    def find_spec(
        fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith("stageflow."):
            return None
        from ._renamed import module_message

        message = module_message(fullname)
        if message is not None:
            raise ModuleNotFoundError(message, name=fullname)
        return None


def install_module_hints() -> None:
    """Append the finder for 0.9.1's module names to ``sys.meta_path`` (once)."""
    if not any(type(finder) is _OldModuleFinder for finder in sys.meta_path):
        sys.meta_path.append(_OldModuleFinder())
