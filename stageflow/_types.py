"""Stage kinds, statuses, outputs and the ``Stage`` protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._context import StageContext

__all__ = ("Stage", "StageKind", "StageOutput", "StageStatus")


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


@dataclass(frozen=True, slots=True)
class StageOutput:
    """What a stage returns: a status, its data, and an error message on failure.

    Build one with the constructors ``ok``, ``skip``, ``cancel``, ``fail`` and ``retry``. ``data`` is
    the stage's output as dependents see it through ``StageInputs``; treat it as read-only.
    """

    status: StageStatus
    data: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
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
        if cls is StageOutput:
            # Every stage returns one of these: set the slots directly, skipping the frozen dataclass
            # __init__ (four object.__setattr__ calls; this is about half the cost).
            out = _new(StageOutput)
            _set_status(out, _OK)
            _set_data(out, payload)
            _set_error(out, None)
            _set_version(out, version)
            return out
        return cls(StageStatus.OK, payload, None, version)

    @classmethod
    def skip(
        cls, reason: str = "", data: Mapping[str, Any] | None = None, *, version: str | None = None
    ) -> StageOutput:
        """A skipped output; ``data["reason"]`` holds ``reason``."""
        return cls(StageStatus.SKIP, {"reason": reason, **(data or {})}, None, version)

    @classmethod
    def cancel(
        cls, reason: str = "", data: Mapping[str, Any] | None = None, *, version: str | None = None
    ) -> StageOutput:
        """Stop the whole pipeline without an error; ``data["cancel_reason"]`` holds ``reason``."""
        return cls(StageStatus.CANCEL, {"cancel_reason": reason, **(data or {})}, None, version)

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
        """
        return cls(StageStatus.FAIL, dict(data or {}), error or response or "unknown error", version)

    @classmethod
    def retry(
        cls, error: str, data: Mapping[str, Any] | None = None, *, version: str | None = None
    ) -> StageOutput:
        """Ask to run the stage again under its retry policy (see ``RetryPolicy``)."""
        return cls(StageStatus.RETRY, dict(data or {}), error, version)


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
