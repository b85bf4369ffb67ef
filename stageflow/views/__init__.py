"""What people read: the run timeline, the ``stageflow`` command, the HTML report and its SVG drawings.

Nothing in the engine imports these modules: ``RunResult.timeline()``, ``StageResult``'s repr and the
``stageflow`` command load them on first use, so ``import stageflow`` stays cheap.
"""

from __future__ import annotations

__all__ = ()
