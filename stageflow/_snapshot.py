"""Run identity and the immutable input snapshot of a run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

__all__ = ("ContextSnapshot", "RunIdentity")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """The ids that identify and correlate one pipeline run.

    ``RunIdentity()`` gives the run a fresh ``pipeline_run_id``; the other ids are optional correlation ids.
    """

    pipeline_run_id: UUID = field(default_factory=uuid4)
    request_id: UUID | None = None
    session_id: UUID | None = None
    user_id: UUID | None = None
    org_id: UUID | None = None
    interaction_id: UUID | None = None
    created_at: datetime = field(default_factory=_utc_now)

    def to_dict(self) -> dict[str, str | None]:
        """The ids as strings (``None`` where unset), for logs and events."""
        return {
            "pipeline_run_id": str(self.pipeline_run_id),
            "request_id": _str(self.request_id),
            "session_id": _str(self.session_id),
            "user_id": _str(self.user_id),
            "org_id": _str(self.org_id),
            "interaction_id": _str(self.interaction_id),
            "created_at": self.created_at.isoformat(),
        }


def _str(value: UUID | None) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class ContextSnapshot:
    """The immutable input of one run, shared by every stage of it.

    Attributes:
        run_id: the run's identity; ``run_id.pipeline_run_id`` is the run id in events, logs and spans.
        input_text: raw user input (text or a transcript).
        input_audio_duration_ms: duration of the input audio, if any.
        topology: a name for the pipeline variant.
        execution_mode: a name for the mode the run is in.
        metadata: free-form metadata; ``metadata["traceparent"]`` carries an incoming W3C trace context.
        enrichments, conversation, extensions: application payloads stageflow does not interpret.
        created_at: when the snapshot was made (UTC).
    """

    run_id: RunIdentity = field(default_factory=RunIdentity)
    input_text: str | None = None
    input_audio_duration_ms: int | None = None
    topology: str | None = None
    execution_mode: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    enrichments: Any = None
    conversation: Any = None
    extensions: Any = None
    created_at: datetime = field(default_factory=_utc_now)

    def __class_getitem__(cls, item: object) -> type[ContextSnapshot]:
        """``ContextSnapshot[MyExtensions]`` (stageflow-core 0.9.1's generic spelling) is ``ContextSnapshot``.

        .. versionadded:: 0.10
        """
        return cls

    @property
    def pipeline_run_id(self) -> UUID:
        """Shortcut for ``run_id.pipeline_run_id``."""
        return self.run_id.pipeline_run_id

    @property
    def request_id(self) -> UUID | None:
        """Shortcut for ``run_id.request_id``.

        .. versionadded:: 0.10
        """
        return self.run_id.request_id

    @property
    def session_id(self) -> UUID | None:
        """Shortcut for ``run_id.session_id``.

        .. versionadded:: 0.10
        """
        return self.run_id.session_id

    @property
    def user_id(self) -> UUID | None:
        """Shortcut for ``run_id.user_id``.

        .. versionadded:: 0.10
        """
        return self.run_id.user_id

    @property
    def org_id(self) -> UUID | None:
        """Shortcut for ``run_id.org_id``.

        .. versionadded:: 0.10
        """
        return self.run_id.org_id

    @property
    def interaction_id(self) -> UUID | None:
        """Shortcut for ``run_id.interaction_id``.

        .. versionadded:: 0.10
        """
        return self.run_id.interaction_id

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict, for logs and tools.

        Keys: ``run_id`` (``RunIdentity.to_dict()``), ``input_text``, ``input_audio_duration_ms``,
        ``topology``, ``execution_mode``, ``metadata`` (a dict copy), ``enrichments``, ``conversation``
        and ``extensions`` (their ``to_dict()`` when they have one, else as given), ``created_at`` (ISO
        8601), then the ids flat, as strings or ``None``: ``pipeline_run_id``, ``request_id``,
        ``session_id``, ``user_id``, ``org_id``, ``interaction_id``.

        .. versionadded:: 0.10
        """
        ids = self.run_id.to_dict()
        return {
            "run_id": ids,
            "input_text": self.input_text,
            "input_audio_duration_ms": self.input_audio_duration_ms,
            "topology": self.topology,
            "execution_mode": self.execution_mode,
            "metadata": dict(self.metadata),
            "enrichments": _plain(self.enrichments),
            "conversation": _plain(self.conversation),
            "extensions": _plain(self.extensions),
            "created_at": self.created_at.isoformat(),
            **{key: ids[key] for key in _ID_KEYS},
        }


_ID_KEYS = ("pipeline_run_id", "request_id", "session_id", "user_id", "org_id", "interaction_id")


def _plain(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value
