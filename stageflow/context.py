"""The immutable inputs of a run.

Example::

    from stageflow.context import ContextSnapshot, RunIdentity

    snapshot = ContextSnapshot(run_id=RunIdentity(), input_text="hello")
"""

from __future__ import annotations

from ._snapshot import ContextSnapshot, RunIdentity

__all__ = ("ContextSnapshot", "RunIdentity")
