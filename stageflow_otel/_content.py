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

from . import _settings

__all__ = (
    "ErrorDetails",
    "ErrorRedactor",
    "clean_text",
    "error_type_only",
    "redact_error_message",
    "redact_error_message_and_pii",
    "redacted_message",
    "redacted_stacktrace",
    "value_length_limit",
)

logger = logging.getLogger("stageflow_otel")


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

# Each pattern runs in time linear in the message's length, whatever the message holds. A pattern either
# matches a bounded number of characters, or takes its run possessively (``++``, ``*+``: never given
# back, so nothing is tried twice) and only from the run's first character (its negative lookbehind
# excludes every character the run may hold, so no position inside a run starts another attempt). What
# to mask is then decided in Python, in one pass over the match.
_BEARER = re.compile(r"(?<!\w)(bearer|basic)\s++[A-Za-z0-9._~+/=-]{8,}+", re.IGNORECASE)
_SLACK = re.compile(r"(?<![\w-])(?:xox[a-z]|xapp)-[A-Za-z0-9-]++")
_SLACK_WEBHOOK = re.compile(r"(hooks\.slack\.com/services/)[\w/]++")
_AWS_KEY_ID = re.compile(
    r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z0-9]{16}(?![A-Za-z0-9])"
)
_GITHUB = re.compile(r"(?<!\w)(?:gh[pousr]|github_pat)_[A-Za-z0-9_]{20,}+")
_JWT = re.compile(r"(?<![\w-])eyJ[\w-]++\.[\w-]++(?:\.[\w-]*+)?+")
_URL_CREDENTIALS = re.compile(r"(?<![\w+.-])([A-Za-z][\w+.-]*+://)[^/\s:@]*+:[^/\s@]++@")
_KEY = re.compile(r"(?<![\w.-])([\w.-]++)(['\"]?+\s*+[:=]\s*+['\"]?+)")
_VALUE = re.compile(r"[^\s'\",;&)}\]]++")
_PROSE = re.compile(
    r"(?<!\w)(?:password|passwd|passphrase|pwd)(\s++(?:(?:is|was)\s++)?+)(['\"]?+)([^\s'\",;&)}\]]++)",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]++@[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)++")
_DIGITS = re.compile(r"(?<!\w)\d(?:[ -]?+\d)*+")
_TOKEN = re.compile(r"(?<![\w+/=-])[\w+/=-]{24,}+")
_PART = re.compile(r"[^_.-]++")
_HEX = re.compile(r"[0-9a-fA-F]{32,}+")

# personal data, masked by ``redact_error_message_and_pii`` only
_SSN = re.compile(r"(?<![\w-])\d{3}([- ])\d{2}\1\d{4}(?![\w-])")
_PHONE = re.compile(r"(?<![\w+(-])(?:\(\d{3}\)[ .-]?+|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-])")
_PHONE_INTERNATIONAL = re.compile(r"(?<![\w+])\+\d[\d ().-]{5,22}+")
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?+[A-Z0-9]{4}){2,7}+(?: ?+[A-Z0-9]{1,3})?+(?![A-Za-z0-9])"
)

_SECRET_WORDS = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "auth",
    "authorization",
    "credential",
    "credentials",
    "cookie",
    "session",
)
"""A key's part (split at ``_``, ``-``, ``.``) ending in one of these names a secret: ``PGPASSWORD``,
``db_password``, ``accessToken``, ``session_id``."""
_SECRET_PARTS = frozenset({"pass", "pw", "apikey", "accesskey", "privatekey", "secretkey"})
_SECRET_PAIRS = ("apikey", "accesskey", "privatekey", "secretkey", "clientsecret")
_PLAIN_WORDS = frozenset(
    {"required", "incorrect", "invalid", "wrong", "missing", "empty", "expired", "too", "not", "set"}
    | {"correct", "valid", "null", "none", "blank", "unset", "changed", "reset", "mandatory", "for"}
)
"""Words after ``password`` (``password is required``) that are prose, not a password."""


def _is_secret_key(key: str) -> bool:
    key = key.lower()
    if any(pair in key.replace("_", "").replace("-", "").replace(".", "") for pair in _SECRET_PAIRS):
        return True
    return any(part in _SECRET_PARTS or part.endswith(_SECRET_WORDS) for part in _PART.findall(key))


def _redact_key_values(message: str) -> str:
    """The value after each credential-like key masked: ``password=x``, ``"api_key": "x"``, ``token: x``."""
    out: list[str] = []
    pos = kept = 0
    while (match := _KEY.search(message, pos)) is not None:
        pos = match.end()
        if not _is_secret_key(match[1]):
            continue  # the value may itself be a ``key=value``: search on from it
        value = _VALUE.match(message, pos)
        if value is None:
            continue
        text = value[0]
        if text.startswith("[REDACTED") or text.lower() in ("bearer", "basic"):
            continue
        out += (message[kept:pos], _REDACTED)
        pos = kept = value.end()
    if not out:
        return message
    out.append(message[kept:])
    return "".join(out)


def _prose(match: re.Match[str]) -> str:
    connector, quote, value = match[1], match[2], match[3]
    lowered = value.lower()
    if lowered.startswith("[redacted") or lowered in _PLAIN_WORDS:
        return match[0]
    # ``password hunter2``: without "is"/"was" or quotes, only a value that does not read as a word
    if connector.strip() or quote or not value.isalpha():
        return match[0][: match.start(3) - match.start()] + _REDACTED
    return match[0]


def _email(match: re.Match[str]) -> str:
    tld = match[0].rpartition(".")[2]
    return _REDACTED if len(tld) >= 2 and tld.isalpha() else match[0]


def _digits(match: re.Match[str]) -> str:
    text = match[0]
    end = match.end()
    following = match.string[end : end + 1]
    if sum(c.isdigit() for c in text) < 12 or following.isalnum() or following == "_":
        return text
    return _REDACTED


def _token(match: re.Match[str]) -> str:
    text = match[0]
    mixed = (
        any(c.isdigit() for c in text) and any(c.isupper() for c in text) and any(c.islower() for c in text)
    )
    return _REDACTED if mixed or _HEX.fullmatch(text) else text


def _phone(match: re.Match[str]) -> str:
    text = match[0]
    number = text.rstrip(" .-(")
    digits = sum(c.isdigit() for c in number)
    return _REDACTED + text[len(number) :] if 7 <= digits <= 15 else text


def _iban(match: re.Match[str]) -> str:
    text = match[0]
    compact = text.replace(" ", "")
    if len(compact) < 15:
        return text
    rearranged = compact[4:] + compact[:4]
    number = int("".join(str(int(c, 36)) for c in rearranged))
    return _REDACTED if number % 97 == 1 else text


def _redact(message: str, pii: bool) -> str:
    message = _BEARER.sub(r"\1 " + _REDACTED, message)
    message = _SLACK.sub(_REDACTED, message)
    message = _SLACK_WEBHOOK.sub(r"\1" + _REDACTED, message)
    message = _AWS_KEY_ID.sub(_REDACTED, message)
    message = _GITHUB.sub(_REDACTED, message)
    message = _JWT.sub(_REDACTED, message)
    message = _URL_CREDENTIALS.sub(r"\1" + _REDACTED + "@", message)
    message = _redact_key_values(message)
    message = _PROSE.sub(_prose, message)
    message = _EMAIL.sub(_email, message)
    if pii:
        message = _IBAN.sub(_iban, message)
        message = _SSN.sub(_REDACTED, message)
        message = _PHONE.sub(_REDACTED, message)
        message = _PHONE_INTERNATIONAL.sub(_phone, message)
    message = _DIGITS.sub(_digits, message)
    return _TOKEN.sub(_token, message)


def redact_error_message(error: ErrorDetails) -> str:
    """The default ``ErrorRedactor``: the message with likely secrets masked.

    Replaced by ``[REDACTED]``: the value after a credential-like key (``password=``, ``pass=``,
    ``PGPASSWORD=``, ``token:``, ``api_key=``, ``Authorization:``, ``secret``, ``cookie``, ``session``
    ...), a password in prose (``the password is hunter2``, ``password hunter2``), ``Bearer``/``Basic``
    credentials, the user and password of a URL (``redis://:pw@host`` too), e-mail addresses, runs of 12
    or more digits (card and account numbers), AWS access key ids, Slack, GitHub and JSON Web Tokens,
    tokens of 24 or more characters mixing digits, upper- and lower-case letters, and runs of 32 or more
    hex digits (API keys). It takes time linear in the message's length, whatever the message.

    This is a best effort on free text: when messages may carry anything else sensitive, use
    ``error_type_only`` or your own hook. ``redact_error_message_and_pii`` also masks personal data.

    .. versionadded:: 0.10
    """
    return _redact(error.message, pii=False)


def redact_error_message_and_pii(error: ErrorDetails) -> str:
    """An ``ErrorRedactor`` masking what ``redact_error_message`` does, and personal data too.

    Also replaced by ``[REDACTED]``: US social security numbers (``123-45-6789``), phone numbers
    (``555-123-4567``, ``(555) 123-4567``, ``+44 20 7946 0958``) and IBANs whose check digits are right
    (``DE89 3704 0044 0532 0130 00``). Pass it as ``redact_error=`` to opt in.

    .. versionadded:: 0.10
    """
    return _redact(error.message, pii=True)


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


def redacted_stacktrace(
    exc: BaseException, message: str | None, limit: int | None, *, source_lines: bool = False
) -> str:
    """The exception's own frames and ``Type: message`` (the redacted message), cut to ``limit``.

    Each frame is its file, line number and function; the source lines too only with
    ``source_lines=True`` (a line such as ``connect(password="...")`` would carry what the redaction
    hook never saw). Chained exceptions are left out: their messages did not pass through the hook.
    """
    lines = ["Traceback (most recent call last):\n"]
    if source_lines:
        lines += traceback.format_tb(exc.__traceback__)
    else:
        lines += [
            f'  File "{frame.f_code.co_filename}", line {lineno}, in {frame.f_code.co_name}\n'
            for frame, lineno in traceback.walk_tb(exc.__traceback__)
        ]
    name = type(exc).__qualname__
    lines.append(f"{name}: {message}\n" if message else f"{name}\n")
    return clean_text("".join(lines), limit)


def value_length_limit(signal: Literal["span", "logrecord"]) -> int | None:
    """The string length limit for ``signal`` from ``os.environ`` (``None``: unlimited, by ``unset``).

    ``OTEL_{SPAN,LOGRECORD}_ATTRIBUTE_VALUE_LENGTH_LIMIT`` wins over ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``;
    without either the limit is ``semconv.DEFAULT_VALUE_LENGTH_LIMIT``. A value that is not a
    non-negative integer (or ``unset``) is logged and ignored (``_settings.value_length_limit``).
    """
    return _settings.value_length_limit(signal, os.environ)
