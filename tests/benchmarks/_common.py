"""What the benchmark modules share: their command line, how they hand a report out, and a measurement
in a fresh child process (so one variant's threads, caches and peak memory cannot leak into the next)."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from collections.abc import Callable
from typing import Any

__all__ = ("in_child", "log", "parser", "publish")


def parser(doc: str | None, *, quick: str) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first paragraph, with ``--quick`` (helped by ``quick``) and
    ``--json PATH``."""
    parsed = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parsed.add_argument("--quick", action="store_true", help=quick)
    parsed.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    return parsed


def log(line: str) -> None:
    """Progress, on stderr at once, apart from the report on stdout."""
    print(line, file=sys.stderr, flush=True)


def publish(text: str, report: Any, path: str | None) -> int:
    """Print ``text``; write ``report`` as indented JSON to ``path`` when given. Returns ``main()``'s 0."""
    print(text)
    if path:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
            out.write("\n")
    return 0


def in_child(target: Callable[..., None], *args: Any) -> Any:
    """Run ``target(conn, *args)`` in a fresh spawned process and return what it sends on ``conn``.

    ``target`` must be importable by name (a module-level function). The child gets 60 s to exit after
    it sent its answer.
    """
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(child, *args))
    process.start()
    child.close()
    try:
        return parent.recv()
    finally:
        process.join(60)
        parent.close()
