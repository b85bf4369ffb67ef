"""Configuration providers: where built-in interceptors read their settings.

Keys are dotted and lower case. The built-in interceptors read:

=================================== ============================================ =========
key                                 meaning                                      type
=================================== ============================================ =========
``timeout.default``                 TimeoutInterceptor default, seconds          float
``timeout.<stage>``                 timeout of one stage, seconds                float
``circuit_breaker.failure_threshold`` consecutive failures that open a breaker   int
``circuit_breaker.recovery_timeout``  seconds an open breaker waits for a trial   float
``retry.max_attempts``              RetryInterceptor attempts in all             int
``retry.initial_delay``             seconds before the 2nd attempt               float
``retry.multiplier``                backoff growth per attempt                   float
``retry.max_delay``                 upper bound of a delay, seconds              float
``retry.jitter``                    relative spread of a delay, 0..1             float
=================================== ============================================ =========

Example::

    provider = EnvConfigProvider()          # STAGEFLOW_TIMEOUT_DEFAULT=5 -> "timeout.default" = "5"
    TimeoutInterceptor(config=provider)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from ._errors import StageflowError

__all__ = (
    "ConfigError",
    "ConfigProvider",
    "DictConfigProvider",
    "EnvConfigProvider",
    "config_value",
)

T = TypeVar("T")


class ConfigError(StageflowError, ValueError):
    """A configuration value cannot be converted to the type its key needs.

    Attributes:
        key: the dotted key (``timeout.default``).
        value: the value as the provider gave it.
        variable: the environment variable the value came from (``STAGEFLOW_TIMEOUT_DEFAULT``) when the
            provider is an ``EnvConfigProvider``, else ``None``; the message then names it first.

    .. versionchanged:: 0.10
       ``variable``.
    """

    def __init__(self, key: str, value: object, expected: str, variable: str | None = None) -> None:
        self.key, self.value, self.variable = key, value, variable
        if variable is None:
            msg = f"configuration {key!r} = {value!r} is not a valid {expected}; fix or unset it"
        else:
            msg = (
                f"environment variable {variable}={value!r} (configuration {key!r}) is not a valid "
                f"{expected}; fix or unset {variable}"
            )
        super().__init__(msg)


class ConfigProvider(Protocol):
    """**Protocol:** a source of settings.

    Built-in interceptors call ``get`` when they are constructed (global settings) or the first time they
    see a stage (per-stage settings), never per stage call. ``get`` returns ``default`` for a missing key
    and should not raise; a value that cannot be converted makes the interceptor raise ``ConfigError``.
    """

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        ...


class DictConfigProvider:
    """Settings from a mapping of dotted keys, e.g. ``{"timeout.default": 5, "timeout.llm": 30}``."""

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._values = dict(values or {})

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        return self._values.get(key, default)

    def __repr__(self) -> str:
        return f"DictConfigProvider({self._values!r})"


class EnvConfigProvider:
    """Settings from environment variables: key ``timeout.llm`` is ``STAGEFLOW_TIMEOUT_LLM``.

    The variable name is the prefix plus the key upper-cased with every non-alphanumeric character
    replaced by ``_``. Values are strings; interceptors convert them.

    Args:
        prefix: the variable prefix (default ``STAGEFLOW_``).
        environ: the mapping to read (default ``os.environ``, read at each ``get``).
    """

    def __init__(self, prefix: str = "STAGEFLOW_", environ: Mapping[str, str] | None = None) -> None:
        self.prefix = prefix
        self._environ = environ

    def variable(self, key: str) -> str:
        """The environment variable that holds ``key``."""
        return self.prefix + re.sub(r"[^0-9A-Za-z]", "_", key).upper()

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``'s variable, or ``default``."""
        environ = os.environ if self._environ is None else self._environ
        return environ.get(self.variable(key), default)

    def __repr__(self) -> str:
        return f"EnvConfigProvider(prefix={self.prefix!r})"


def _to_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value.strip())
    raise ValueError


def _to_float(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise ValueError


_CONVERTERS: dict[type, tuple[Callable[[object], Any], str]] = {
    int: (_to_int, "int"),
    float: (_to_float, "number"),
}


def config_value(provider: ConfigProvider | None, key: str, kind: type[T], default: T) -> T:
    """Read ``key`` from ``provider`` as ``kind`` (int or float); ``default`` when absent or no provider.

    Raises:
        ConfigError: the value cannot be converted.
    """
    if provider is None:
        return default
    raw = provider.get(key, None)
    if raw is None or raw == "":
        return default
    convert, expected = _CONVERTERS[kind]
    try:
        return convert(raw)  # type: ignore[no-any-return]
    except (TypeError, ValueError):
        variable = provider.variable(key) if isinstance(provider, EnvConfigProvider) else None
        raise ConfigError(key, raw, expected, variable) from None
