"""What the benchmark modules share: their command line, how they hand a report out, and a measurement
in a fresh child process (so one variant's threads, caches and peak memory cannot leak into the next)."""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ("Presets", "in_child", "log", "main_for", "meta", "parser", "publish", "timed", "with_options")

_S = TypeVar("_S", bound="DataclassInstance")


def parser(doc: str | None, *, quick: str) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first paragraph, with ``--quick`` (helped by ``quick``) and
    ``--json PATH``."""
    parsed = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parsed.add_argument("--quick", action="store_true", help=quick)
    parsed.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    return parsed


def with_options(settings: _S, **options: Any) -> _S:
    """``settings`` (a dataclass) with each of ``options`` that is not ``None`` in place of its field."""
    given = {name: value for name, value in options.items() if value is not None}
    return replace(settings, **given) if given else settings


class Presets:
    """Base of a benchmark's settings dataclass: ``quick()`` and ``smallest()`` are its defaults with the
    overrides the class names as keywords, ``class Settings(Presets, quick={...}, smallest={...})``."""

    __slots__ = ()
    _quick: ClassVar[Mapping[str, Any]] = {}
    _smallest: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(
        cls, *, quick: Mapping[str, Any] | None = None, smallest: Mapping[str, Any] | None = None
    ) -> None:
        # ``@dataclass(slots=True)`` makes the class again, without these keywords: keep the first ones
        super().__init_subclass__()
        if quick is not None:
            cls._quick = quick
        if smallest is not None:
            cls._smallest = smallest

    @classmethod
    def quick(cls) -> Self:
        """The settings of ``--quick``: a fast run."""
        return cls(**cls._quick)

    @classmethod
    def smallest(cls) -> Self:
        """The smallest settings that still run every code path (for the smoke tests)."""
        return cls(**cls._smallest)


def main_for(module: str, *, quick: str) -> Callable[..., int]:
    """``main(argv=None)`` of the benchmark module named ``module``, one without options of its own: parse
    ``argv`` as the module's docstring describes, ``run_benchmark`` with ``Settings.quick()`` (``--quick``,
    helped by ``quick``) or ``Settings()``, progress on stderr; print ``format_report`` of the report. The
    module is imported by that name if it is not yet (a module run as ``__main__`` may name its importable
    self) and its names are looked up at each call, as a call of them in the module itself would."""

    def main(argv: Sequence[str] | None = None) -> int:
        bench = importlib.import_module(module)
        args = parser(bench.__doc__, quick=quick).parse_args(argv)
        report = bench.run_benchmark(bench.Settings.quick() if args.quick else bench.Settings(), log=log)
        return publish(bench.format_report(report), report, args.json)

    return main


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


def meta(settings: Any, **more: Any) -> dict[str, Any]:
    """A report's ``meta``: the Python, platform and CPU count it was measured on, the settings
    (a dataclass) and ``more``."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "settings": asdict(settings),
        **more,
    }


async def timed(
    sample: Callable[[], Awaitable[object]], count: int, clock: Callable[[], float] = time.process_time
) -> float:
    """Seconds per call of ``sample``, over ``count`` calls, with the GC collected first and then disabled.

    A sample with a ``prepare(count)`` method gets it called first, before the clock starts.
    """
    prepare = getattr(sample, "prepare", None)
    if prepare is not None:
        prepare(count)
    gc.collect()
    gc.disable()
    try:
        start = clock()
        for _ in range(count):
            await sample()
        return (clock() - start) / count
    finally:
        gc.enable()


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
