"""``python -m stageflow_otel demo [...]``: the instrumented demo pipeline."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stageflow import __version__

from ._demo import main

__all__: tuple[str, ...] = ()


def _cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stageflow_otel",
        description="stageflow's OpenTelemetry companion. Commands: demo (an instrumented voice-assistant "
        "pipeline; `python -m stageflow_otel demo --help` lists its options).",
    )
    parser.add_argument("--version", action="version", version=f"stageflow_otel {__version__}")
    parser.add_argument("command", choices=("demo",), help="the command to run")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the command's own arguments")
    parser.parse_args(argv[:1] if argv and argv[0] == "demo" else argv)  # exits on --help, --version, errors
    return main(list(argv[1:]))


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
