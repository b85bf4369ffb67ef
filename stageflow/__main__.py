"""``python -m stageflow``: the ``stageflow`` command (see ``stageflow.views._cli``)."""

from __future__ import annotations

from .views._cli import main

__all__ = ()

if __name__ == "__main__":
    raise SystemExit(main())
