"""Stage kinds, statuses, outputs and the ``Stage`` protocol."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._context import StageContext

__all__ = (
    "OutcomeCategory",
    "Stage",
    "StageArtifact",
    "StageEvent",
    "StageKind",
    "StageOutput",
    "StageStatus",
)


class StageKind(StrEnum):
    """What a stage does. Every stage has exactly one kind."""

    TRANSFORM = "transform"
    """Changes the form of its input (STT, TTS, LLM)."""
    ENRICH = "enrich"
    """Adds context (profile, memory, skills)."""
    ROUTE = "route"
    """Selects an execution path."""
    GUARD = "guard"
    """Validates (guardrails, policy)."""
    WORK = "work"
    """Side effects (persist, assess)."""
    AGENT = "agent"
    """Main interaction logic."""


class StageStatus(StrEnum):
    """The outcome a stage reports with its ``StageOutput``, and the final status of a ``StageResult``."""

    OK = "ok"
    """The stage succeeded."""
    SKIP = "skip"
    """The stage decided (or, if conditional, was decided) not to do its work. Not an error."""
    CANCEL = "cancel"
    """The stage stopped the pipeline without an error, or was cancelled."""
    FAIL = "fail"
    """The stage failed; the run fails."""
    RETRY = "retry"
    """The stage asks to be run again under its retry policy. Never a final status."""

    # stageflow-core 0.9.1 handed interceptors results whose status was "completed" or "failed": an
    # ``after()`` ported from it compares with those strings, and must not become silently never-true.
    def __eq__(self, other: object) -> bool:
        if type(other) is str and other in _LEGACY_STATUS:
            return _LEGACY_STATUS[other] is self
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__


_LEGACY_STATUS: dict[str, StageStatus] = {"completed": StageStatus.OK, "failed": StageStatus.FAIL}
"""stageflow-core 0.9.1's interceptor status strings, and the status each one equals."""


class OutcomeCategory(StrEnum):
    """What kind of outcome a stage or a run had: the one classification every report reads.

    ``StageResult.category``, ``RunResult.category``, ``PipelineRunError.category``, the ``category`` of
    every stage-ended and run-ended event, and stageflow_otel's ``stageflow.run.result`` all use these
    values; an error's category is ``error_category(error)`` (the ``category`` of stageflow's error
    classes, inherited by their subclasses).

    .. versionadded:: 0.11
    """

    SUCCESS = "success"
    """The stage returned ``StageOutput.ok``; the run completed."""
    FAILURE = "failure"
    """The stage reported failure itself: ``StageOutput.fail`` (``StageFailedError``) or retries ran out
    (``RetriesExhaustedError``)."""
    ERROR = "error"
    """The stage (or an interceptor, or stageflow on its behalf) raised any other exception."""
    TIMEOUT = "timeout"
    """The stage ran past its timeout (``StageTimeoutError`` or a subclass)."""
    CANCELLATION = "cancellation"
    """The stage returned ``StageOutput.cancel`` or was cancelled; the run was cancelled."""
    SKIP = "skip"
    """The stage did not do its work: it returned ``StageOutput.skip``, a skipped dependency skipped a
    conditional stage, or an interceptor's fallback finished it (the result's ``reason`` says which)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class StageArtifact:
    """Something a stage produced besides its data (audio, a transcript, an assessment...).

    Attributes:
        type: what kind of artifact it is, e.g. ``"transcript"``.
        payload: the artifact itself.
        timestamp: when it was made (UTC).

    .. versionadded:: 0.10
    """

    type: str
    payload: dict[str, Any]
    timestamp: datetime = field(default_factory=_utc_now)


@dataclass(frozen=True, slots=True)
class StageEvent:
    """An event a stage reports with its output, e.g. progress.

    Attributes:
        type: the event type, e.g. ``"progress"``.
        data: the event's data.
        timestamp: when it happened (UTC).

    .. versionadded:: 0.10
    """

    type: str
    data: dict[str, Any]
    timestamp: datetime = field(default_factory=_utc_now)


@dataclass(frozen=True, slots=True)
class StageOutput:
    """What a stage returns: a status, its data, and an error message on failure.

    Build one with the constructors ``ok``, ``skip``, ``cancel``, ``fail`` and ``retry``. ``data`` is
    the stage's output as dependents see it through ``StageInputs``; treat it as read-only.

    Attributes:
        status: the outcome.
        data: the output as dependents see it.
        artifacts: ``StageArtifact``s the stage produced (an empty list unless given).
        events: ``StageEvent``s the stage reports (an empty list unless given).
        error: the error message of a failed (or retrying) output.
        duration_ms: a duration the stage or an interceptor attached with ``with_duration``; the
            executor does not fill it (read ``StageResult.duration_ms`` for measured durations).
        version: a schema version tag for ``data``.

    The fields are in stageflow-core 0.9.1's positional order.

    .. versionchanged:: 0.10
       ``artifacts``, ``events`` and ``duration_ms`` were added, before ``error``.
    """

    status: StageStatus
    data: Mapping[str, Any] = field(default_factory=dict)
    artifacts: list[StageArtifact] = field(default_factory=list)
    events: list[StageEvent] = field(default_factory=list)
    error: str | None = None
    duration_ms: int | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        # The constructors below never get here; a direct ``StageOutput(...)`` call is checked.
        if type(self.status) is not StageStatus:
            try:
                object.__setattr__(self, "status", StageStatus(self.status))
            except ValueError:
                msg = (
                    f"StageOutput status {self.status!r} is invalid; use a StageStatus member "
                    f"({', '.join(m.name for m in StageStatus)}) or a constructor such as StageOutput.ok()"
                )
                raise ValueError(msg) from None
        if not isinstance(self.data, Mapping):
            msg = f"StageOutput data {self.data!r} is not a mapping; pass a dict such as {{'key': value}}"
            raise TypeError(msg)
        for name in ("artifacts", "events"):
            value = getattr(self, name)
            if not isinstance(value, list):
                # most likely an error message given third, in the field order before 0.10
                msg = (
                    f"StageOutput {name} {value!r} is not a list; the fields are (status, data, artifacts, "
                    "events, error, duration_ms, version): pass error= and version= by keyword"
                )
                raise TypeError(msg)
        _refuse_coroutines(self.data)

    @classmethod
    def ok(
        cls, data: Mapping[str, Any] | None = None, *, version: str | None = None, **values: Any
    ) -> StageOutput:
        """A successful output.

        ``data`` and keyword ``values`` are merged (keywords win on a clash), so
        ``StageOutput.ok({"a": 1}, b=2).data == {"a": 1, "b": 2}``.
        """
        if data is None:
            payload = values
        elif values:
            payload = {**data, **values}
        else:
            payload = dict(data)
        for value in payload.values():
            if type(value) is CoroutineType:
                _refuse_coroutines(payload)
        if cls is StageOutput:
            # Every stage returns one of these: set the slots directly, skipping the frozen dataclass
            # __init__ (four object.__setattr__ calls; this is about half the cost).
            out = _new(StageOutput)
            _set_status(out, _OK)
            _set_data(out, payload)
            _set_error(out, None)
            _set_version(out, version)
            return out
        return cls(StageStatus.OK, payload, version=version)

    @classmethod
    def skip(
        cls, reason: str = "", data: Mapping[str, Any] | None = None, *, version: str | None = None
    ) -> StageOutput:
        """A skipped output; ``data["reason"]`` holds ``reason``."""
        return cls(StageStatus.SKIP, {"reason": reason, **(data or {})}, version=version)

    @classmethod
    def cancel(
        cls, reason: str = "", data: Mapping[str, Any] | None = None, *, version: str | None = None
    ) -> StageOutput:
        """Stop the whole pipeline without an error; ``data["cancel_reason"]`` holds ``reason``."""
        return cls(StageStatus.CANCEL, {"cancel_reason": reason, **(data or {})}, version=version)

    @classmethod
    def fail(
        cls,
        error: str | None = None,
        data: Mapping[str, Any] | None = None,
        *,
        response: str | None = None,
        version: str | None = None,
    ) -> StageOutput:
        """A failed output; the run fails with ``StageFailedError(error)``.

        ``response`` is an alias of ``error`` kept for compatibility; ``error`` wins when both are given.
        Without either, the error is ``"Unknown error"``.
        """
        return cls(
            StageStatus.FAIL, dict(data or {}), error=error or response or "Unknown error", version=version
        )

    @classmethod
    def retry(
        cls, error: str, data: Mapping[str, Any] | None = None, *, version: str | None = None
    ) -> StageOutput:
        """Ask to run the stage again under its retry policy (see ``RetryPolicy``)."""
        return cls(StageStatus.RETRY, dict(data or {}), error=error, version=version)

    def with_duration(self, duration_ms: int) -> StageOutput:
        """A copy of this output with ``duration_ms`` set.

        .. versionadded:: 0.10
        """
        return replace(self, duration_ms=duration_ms)

    def with_version(self, version: str) -> StageOutput:
        """A copy of this output with ``version`` set.

        .. versionadded:: 0.10
        """
        return replace(self, version=version)


class _Unset:
    """A slot the fast constructors leave unset: reading it gives its default, made on first read.

    ``StageOutput.ok()`` sets only the four slots every output needs; ``artifacts``, ``events`` and
    ``duration_ms`` cost nothing until someone reads them. A default list is stored on first read, so it
    is one list per output, as with the dataclass default factories.
    """

    __slots__ = ("_default", "_slot")

    def __init__(self, slot: Any, default: Callable[[], Any]) -> None:
        self._slot = slot
        self._default = default

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return self._slot.__get__(obj, owner)
        except AttributeError:
            value = self._default()
            self._slot.__set__(obj, value)
            return value

    def __set__(self, obj: object, value: Any) -> None:
        self._slot.__set__(obj, value)

    def __delete__(self, obj: object) -> None:
        self._slot.__delete__(obj)


for _name, _default in (("artifacts", list), ("events", list), ("duration_ms", lambda: None)):
    setattr(StageOutput, _name, _Unset(vars(StageOutput)[_name], _default))
del _name, _default


def _refuse_coroutines(data: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` for the first value of ``data`` that is a coroutine: an ``await`` left out."""
    for key, value in data.items():
        if isinstance(value, CoroutineType):
            name = value.__qualname__
            value.close()  # it will never be awaited: close it now rather than warn when it is collected
            call = f"await {name.rpartition('.')[2]}(...)"
            example = f"{key}={call}" if key.isidentifier() else f"{{{key!r}: {call}}}"
            msg = (
                f"StageOutput value {key!r} is a coroutine ({name}), not its result: await it, "
                f"e.g. StageOutput.ok({example})"
            )
            raise TypeError(msg)


_new = object.__new__
_OK = StageStatus.OK
_set_status = vars(StageOutput)["status"].__set__
_set_data = vars(StageOutput)["data"].__set__
_set_error = vars(StageOutput)["error"].__set__
_set_version = vars(StageOutput)["version"].__set__


class Stage(Protocol):
    """**Protocol:** a unit of work.

    The executor calls ``execute`` once per run (once per attempt under a retry policy) after every
    dependency finished. Returning a ``StageOutput`` reports the outcome; raising an exception fails the
    stage and the run. ``asyncio.CancelledError`` means the run is being cancelled: let it propagate.
    """

    name: str
    kind: StageKind

    async def execute(self, ctx: StageContext) -> StageOutput:
        """Do the stage's work."""
        ...
