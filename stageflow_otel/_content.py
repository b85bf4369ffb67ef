"""What of a run's content may leave the process: length limits, text that encodes, redacted error messages.

Three rules, applied by every exporter of stageflow_otel (spans, span events, log records, ``/metrics``):

* **Length.** String values are cut to a length limit: ``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT``
  (spans) or ``OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT`` (log records), else
  ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``, else ``semconv.DEFAULT_VALUE_LENGTH_LIMIT`` (the SDK's own
  default is unlimited). ``setup()`` gives the SDK providers these limits, so attributes are cut by the
  SDK; what the SDK does not limit (span names, status descriptions, log record bodies) is cut here.
* **Encoding.** Text that UTF-8 cannot encode (lone surrogates) is written with backslash escapes, so one
  such value cannot make a whole OTLP batch or a ``/metrics`` page fail to encode.
* **Error messages** pass through an ``ErrorRedactor`` before they are exported; the default,
  ``redact_error_message``, masks what looks like a credential, an e-mail address or a long number, and
  ``error_type_only`` exports no message at all (only ``error.type``).

Example::

    from stageflow_otel import TracingInterceptor, error_type_only

    tracing = TracingInterceptor(redact_error=error_type_only)   # spans carry error.type, no message
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from . import semconv

__all__ = (
    "ErrorDetails",
    "ErrorRedactor",
    "clean_text",
    "error_type_only",
    "redact_error_message",
    "redacted_message",
    "redacted_stacktrace",
    "value_length_limit",
)

logger = logging.getLogger("stageflow_otel")

_UNSET = "unset"


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    """One error about to be exported, as an ``ErrorRedactor`` sees it.

    Attributes:
        error_type: the ``error.type`` value exported with it (an exception class name, ``timeout`` ...).
        message: the error message (``str(exc)``, the ``StageOutput.fail`` message, the event's
            ``error``), already cut to the signal's length limit.
        pipeline: the pipeline's name, when known.
        stage: the stage's name, when the error is a stage's.

    .. versionadded:: 0.10
    """

    error_type: str
    message: str
    pipeline: str | None = None
    stage: str | None = None


ErrorRedactor: TypeAlias = Callable[[ErrorDetails], "str | None"]
"""A redaction hook: the message to export for an error, or ``None`` to export none (``error.type`` only).

It runs on the thread that exports (the event loop for spans, the sink's thread for log records); an
exception it raises is logged once and the message is left out.
"""

_REDACTED = "[REDACTED]"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]{8,}"), r"\1 " + _REDACTED),
    # key=value / key: value for credential-like keys; the key stays, the value goes
    (
        re.compile(
            r"(?i)\b((?:[a-z0-9]+[_-])*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|"
            r"auth|authorization|credentials?|cookie|session)(?:[_-][a-z0-9]+)*)"
            r"(['\"]?\s*[:=]\s*)(['\"]?)(?!bearer\s|basic\s|\[REDACTED\])[^\s'\",;&)}\]]+"
        ),
        r"\1\2\3" + _REDACTED,
    ),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"), r"\1" + _REDACTED + "@"),
    (re.compile(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b"), _REDACTED),
    (re.compile(r"\b\d[\d -]{10,}\d\b"), _REDACTED),
    # API keys: 24+ token characters mixing digits, upper- and lower-case letters; or 32+ hex digits
    (
        re.compile(
            r"\b(?=[\w+/=-]*\d)(?=[\w+/=-]*[A-Z])(?=[\w+/=-]*[a-z])[\w+/=-]{24,}|\b[0-9a-fA-F]{32,}\b"
        ),
        _REDACTED,
    ),
)


def redact_error_message(error: ErrorDetails) -> str:
    """The default ``ErrorRedactor``: the message with likely secrets and personal data masked.

    Replaced by ``[REDACTED]``: the value after a credential-like key (``password=``, ``token:``,
    ``api_key=``, ``Authorization:``, ``secret``, ``cookie``, ``session`` ...), ``Bearer``/``Basic``
    credentials, the user and password of a URL, e-mail addresses, runs of 12 or more digits (card,
    account and phone numbers), tokens of 24 or more characters mixing digits, upper- and lower-case
    letters, and runs of 32 or more hex digits (API keys). This is a best effort
    on free text: when messages may carry anything else sensitive, use ``error_type_only`` or your own
    hook.

    .. versionadded:: 0.10
    """
    message = error.message
    for pattern, replacement in _PATTERNS:
        message = pattern.sub(replacement, message)
    return message


def error_type_only(error: ErrorDetails) -> None:
    """An ``ErrorRedactor`` exporting no message at all: failures carry ``error.type`` only.

    .. versionadded:: 0.10
    """
    return None


def clean_text(text: str, limit: int | None) -> str:
    """``text`` cut to ``limit`` characters (``None``: no limit), lone surrogates backslash-escaped."""
    if limit is not None and len(text) > limit:
        text = text[:limit]
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
            if limit is not None:
                text = text[:limit]
    return text


_hook_failed: set[int] = set()


def redacted_message(redact: ErrorRedactor, error: ErrorDetails, limit: int | None) -> str | None:
    """``redact(error)``, cut to ``limit`` and made encodable; ``None`` when no message may be exported.

    The hook sees the message already cut to ``limit`` (a 5 MB message costs no 5 MB regex scan).
    """
    if limit is not None and len(error.message) > limit:
        error = ErrorDetails(error.error_type, error.message[:limit], error.pipeline, error.stage)
    try:
        message = redact(error)
    except Exception as exc:  # C9: a broken hook costs the message, never the telemetry
        if id(redact) not in _hook_failed:
            _hook_failed.add(id(redact))
            logger.warning(
                "stageflow_otel: the error redaction hook %r raised %r; error messages are left out "
                "(logged once)",
                redact,
                exc,
            )
        return None
    if message is None:
        return None
    return clean_text(str(message), limit)


def redacted_stacktrace(exc: BaseException, message: str | None, limit: int | None) -> str:
    """The exception's own frames and ``Type: message`` (the redacted message), cut to ``limit``.

    Chained exceptions are left out: their messages did not pass through the redaction hook.
    """
    lines = ["Traceback (most recent call last):\n", *traceback.format_tb(exc.__traceback__)]
    name = type(exc).__qualname__
    lines.append(f"{name}: {message}\n" if message else f"{name}\n")
    return clean_text("".join(lines), limit)


def value_length_limit(signal: Literal["span", "logrecord"]) -> int | None:
    """The string length limit for ``signal`` from the environment (``None``: unlimited, by ``unset``).

    ``OTEL_{SPAN,LOGRECORD}_ATTRIBUTE_VALUE_LENGTH_LIMIT`` wins over ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``;
    without either the limit is ``semconv.DEFAULT_VALUE_LENGTH_LIMIT``. A value that is not a
    non-negative integer (or ``unset``) is logged and ignored.
    """
    for name in (f"OTEL_{signal.upper()}_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"):
        raw = os.environ.get(name, "").strip().lower()
        if not raw:
            continue
        if raw == _UNSET:
            return None
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value >= 0:
            return value
        logger.warning("stageflow_otel: %s=%r is not a non-negative integer; ignored", name, os.environ[name])
    return semconv.DEFAULT_VALUE_LENGTH_LIMIT
