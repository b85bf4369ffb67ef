"""Stage-facing types: inputs, outputs, kinds and the ``Stage`` protocol.

Example::

    from stageflow.stages import StageInputs

    inputs = StageInputs(snapshot=snapshot)
"""

from __future__ import annotations

from ._compat import create_stage_inputs
from ._context import PipelineContext, StageContext, StageInputs
from ._errors import UndeclaredDependencyError
from ._results import StageResult
from ._types import Stage, StageKind, StageOutput, StageStatus

__all__ = (
    "PipelineContext",
    "Stage",
    "StageContext",
    "StageInputs",
    "StageKind",
    "StageOutput",
    "StageResult",
    "StageStatus",
    "UndeclaredDependencyError",
    "create_stage_inputs",
)
