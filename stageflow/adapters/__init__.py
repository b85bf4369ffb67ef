"""Implementations of stageflow's ports that lean on a third-party package.

Each module here imports its package only when one of its objects is constructed or first used, never at
import time, and without the package installed says which ``pip install 'stageflow-core[...]'`` adds it.
"""

from __future__ import annotations

from ._events_db import DatabaseEventSink as DatabaseEventSink
from ._postgres import PostgresRunStore as PostgresRunStore
from ._postgres import SchemaError as SchemaError
from .ray import RayExecutor as RayExecutor

__all__ = ("DatabaseEventSink", "PostgresRunStore", "RayExecutor", "SchemaError")
