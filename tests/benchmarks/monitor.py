"""The loop monitor's cost: chain-100 runs with ``set_loop_monitor(LoopMonitor())`` against none, same run.

Run it (from the repository root)::

    .venv/bin/python -m tests.benchmarks.monitor            # about half a minute
    .venv/bin/python -m tests.benchmarks.monitor --quick    # a fast smoke run

Both variants run the same 100-stage chain (the core benchmark's stage body) on one event loop, interleaved
repetition by repetition (21 repetitions of 100,000 stages), timed with ``time.process_time``: the
process's CPU time, so the watchdog thread's and the heartbeat's work count against the monitor. The
figure is the median of the paired ratios (monitored / bare) and the overhead in percent; the target is at
most 1%.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

from stageflow import LoopMonitor, set_loop_monitor

from . import core


class _Monitored:
    """One run of ``graph`` per call with the loop monitor installed (the monitor watches this loop)."""

    def __init__(self, graph: Any) -> None:
        self.inner = core._Ours(graph)

    def prepare(self, count: int) -> None:
        self.inner.prepare(count)
        set_loop_monitor(MONITOR)

    async def __call__(self) -> object:
        return await self.inner()


class _Bare(_Monitored):
    def prepare(self, count: int) -> None:
        self.inner.prepare(count)
        set_loop_monitor(None)


MONITOR = LoopMonitor()


async def measure(settings: core.Settings) -> dict[str, Any]:
    deps = core.make_deps("chain", 100)
    assert deps is not None
    graph = core.build_pipeline(deps).build()
    samples = await core.interleaved(
        {"monitored": _Monitored(graph), "bare": _Bare(graph)}, core._batch(settings, 100), settings
    )
    set_loop_monitor(None)
    ratio = samples.ratio("monitored", "bare")
    return {
        "bare_us_per_stage": samples.median("bare") / 100 * 1e6,
        "monitored_us_per_stage": samples.median("monitored") / 100 * 1e6,
        "ratio": ratio,
        "overhead_percent": (ratio - 1) * 100,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller batches")
    args = parser.parse_args(argv)
    settings = core.Settings.quick() if args.quick else core.Settings(reps=21, batch_stages=100_000)
    result = asyncio.run(measure(settings))
    print(
        f"chain-100: bare {result['bare_us_per_stage']:.2f} µs/stage, monitored "
        f"{result['monitored_us_per_stage']:.2f} µs/stage, ratio {result['ratio']:.3f} "
        f"({result['overhead_percent']:+.2f}%; target <= +1%)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
