"""``LogOnce``: a failure the telemetry survives is logged the first time it happens, then kept quiet."""

from __future__ import annotations

import logging

__all__ = ("LogOnce",)

logger = logging.getLogger("stageflow_otel")


class LogOnce:
    """On its first call, log ``message`` at ``level`` with ``%r`` of the exception; later calls do nothing.

    Telemetry never breaks a pipeline: what fails in an SDK, a logger or the event sink is reported once
    and the pipeline carries on.
    """

    __slots__ = ("_level", "_message", "logged")

    def __init__(self, message: str, level: int = logging.WARNING) -> None:
        self._message = message
        self._level = level
        self.logged = False

    def __call__(self, exc: BaseException) -> None:
        if not self.logged:
            self.logged = True
            # stacklevel: the record names the function that reported the failure, not this helper
            logger.log(self._level, self._message, exc, stacklevel=2)
