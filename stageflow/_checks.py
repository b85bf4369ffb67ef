"""Argument checks that several constructors share."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypeGuard

__all__ = ("check_instances", "finite_number")


def finite_number(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is a finite ``int`` or ``float`` (a ``bool`` is not a number here)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def check_instances(items: Iterable[object], kind: type, error: type[Exception], message: str) -> None:
    """Raise ``error(message.format(item))`` for the first of ``items`` that is not a ``kind``."""
    for item in items:
        if not isinstance(item, kind):
            raise error(message.format(item))
