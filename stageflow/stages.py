"""Stage-facing types: inputs, outputs, kinds and the ``Stage`` protocol.

Example::

    from stageflow.stages import StageInputs

    inputs = StageInputs(snapshot=snapshot)
"""

from __future__ import annotations

from ._context import StageContext, StageInputs
from ._types import Stage, StageKind, StageOutput, StageStatus

__all__ = ("Stage", "StageContext", "StageInputs", "StageKind", "StageOutput", "StageStatus")
