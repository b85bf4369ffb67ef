"""``python -m stageflow_otel demo [...]``: the instrumented demo pipeline."""

from __future__ import annotations

import sys

from ._demo import main

__all__: tuple[str, ...] = ()


def _cli(argv: list[str]) -> int:
    if not argv or argv[0] != "demo":
        print("usage: python -m stageflow_otel demo [--runs N] [options]  (see demo --help)", file=sys.stderr)
        return 2
    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
