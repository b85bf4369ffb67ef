"""``import stageflow`` side by side with stageflow-core 0.9.1's, measured in the same run.

Run it (from the repository root)::

    .venv/bin/python -m tests.benchmarks.imports                  # full run (about half a minute)
    .venv/bin/python -m tests.benchmarks.imports --quick          # fast smoke run
    .venv/bin/python -m tests.benchmarks.imports --json out.json  # also write the figures as JSON
    .venv/bin/python -m tests.benchmarks.imports --ours /path/to/another/checkout

What is measured: the time ``import stageflow`` takes in a fresh interpreter, for this checkout's
stageflow and for stageflow-core 0.9.1 (installed from PyPI with ``pip install --target`` into
``~/.cache/stageflow/benchmarks/stageflow-core-0.9.1`` on first use, or the directory ``--baseline``
names). Each sample is one new ``python`` process whose ``sys.path`` starts with the package's directory;
it reads ``time.perf_counter()`` around the import statement only (the interpreter's own start-up is
the same for both and left out) and reports the time, how many modules the import added to
``sys.modules`` and how many of them are the package's own. ``import asyncio`` alone is measured the same
way, for reference: stageflow imports it when the first run starts, 0.9.1 on import.

Method: a few warm-up processes of each first (they write the bytecode caches, even when
``PYTHONDONTWRITEBYTECODE`` is set, so both packages import from ``.pyc`` files as installed ones do),
then ``reps`` repetitions, in each of which both packages are imported once, in alternating order.
Figures are medians and minimums over the repetitions; the ratio (ours / 0.9.1) is given for both, and
the median of the per-repetition ratios compares imports made back to back. On a shared machine compare
the ratios, not absolute figures.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.benchmarks import _common

__all__ = (
    "BASELINE_VERSION",
    "TARGET",
    "Settings",
    "default_baseline",
    "format_report",
    "install_baseline",
    "main",
    "measure_once",
    "run_benchmark",
)

TARGET = 0.30
"""The largest acceptable ratio of our import time to 0.9.1's (medians)."""

BASELINE_VERSION = "0.9.1"
"""The stageflow-core release measured against."""

REPOSITORY = Path(__file__).resolve().parents[2]
"""The checkout whose ``stageflow`` is measured by default."""

_PROBE = """\
import sys, time
before = set(sys.modules)
started = time.perf_counter()
import {module}
took = time.perf_counter() - started
added = set(sys.modules) - before
own = sorted(m for m in added if m == "{module}" or m.startswith("{module}."))
import json
print(json.dumps({{"seconds": took, "modules": len(added), "own": own, "file": {module}.__file__}}))
"""


@dataclass(frozen=True)
class Settings(_common.Presets, quick={"reps": 10, "warmup": 2}, smallest={"reps": 2, "warmup": 1}):
    """How much to measure. ``quick``: a fast smoke run, fewer repetitions; ``smallest``: the smallest
    settings that still produce every figure (for the smoke test)."""

    reps: int = 40
    warmup: int = 3


def default_baseline() -> Path:
    """Where stageflow-core 0.9.1 is installed when ``--baseline`` is not given."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "stageflow" / "benchmarks" / f"stageflow-core-{BASELINE_VERSION}"


def install_baseline(target: Path) -> Path:
    """Install stageflow-core 0.9.1 and its dependencies into ``target`` unless it is there already."""
    if not (target / "stageflow" / "__init__.py").is_file():
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"]
            + [str(target), f"stageflow-core=={BASELINE_VERSION}"],
            check=True,
            timeout=600,
        )
    return target


def measure_once(where: Path, module: str = "stageflow") -> dict[str, Any]:
    """One fresh interpreter importing the ``module`` found first in ``where``: its probe's figures.

    Raises:
        RuntimeError: ``import stageflow`` found a stageflow outside ``where``.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(where)
    env.pop("PYTHONSTARTUP", None)
    # both packages import from bytecode caches, as installed packages do (pip writes 0.9.1's; the
    # warm-up writes ours)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=where,
        timeout=120,
    )
    probe: dict[str, Any] = json.loads(proc.stdout)
    if module == "stageflow" and not Path(probe["file"]).resolve().is_relative_to(where.resolve()):
        msg = f"'import stageflow' with {where} first on sys.path loaded {probe['file']}"
        raise RuntimeError(msg)
    return probe


def _summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [s["seconds"] for s in samples]
    last = samples[-1]
    return {
        "median_ms": statistics.median(seconds) * 1000,
        "min_ms": min(seconds) * 1000,
        "modules": last["modules"],
        "own_modules": last["own"],
        "file": last["file"],
    }


def run_benchmark(
    settings: Settings | None = None,
    *,
    ours: Path = REPOSITORY,
    baseline: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure both imports and return the figures (the ``--json`` document)."""
    settings = settings or Settings()
    say = log or (lambda _: None)
    theirs = baseline if baseline is not None else install_baseline(default_baseline())
    for _ in range(settings.warmup):
        measure_once(ours)
        measure_once(theirs)
    samples: dict[str, list[dict[str, Any]]] = {"ours": [], "baseline": [], "asyncio": []}
    ratios = []
    for rep in range(settings.reps):
        order = [("ours", ours), ("baseline", theirs)]
        for name, where in order if rep % 2 == 0 else reversed(order):
            samples[name].append(measure_once(where))
        ratios.append(samples["ours"][-1]["seconds"] / samples["baseline"][-1]["seconds"])
        samples["asyncio"].append(measure_once(ours, "asyncio"))
        say(f"rep {rep + 1}/{settings.reps}: ratio {ratios[-1]:.2f}")
    us, them, reference = (_summary(samples[name]) for name in ("ours", "baseline", "asyncio"))
    ratio = us["median_ms"] / them["median_ms"]
    return {
        "meta": _common.meta(settings, baseline_version=BASELINE_VERSION, ours=str(ours)),
        "ours": us,
        "baseline": them,
        "asyncio": reference,
        "ratio_asyncio": reference["median_ms"] / them["median_ms"],
        "ratio_median": ratio,
        "ratio_min": us["min_ms"] / them["min_ms"],
        "ratio_paired_median": statistics.median(ratios),
        "target": TARGET,
        "meets_target": ratio <= TARGET,
    }


def format_report(report: dict[str, Any]) -> str:
    """The figures as readable lines."""
    meta = report["meta"]
    version = meta["baseline_version"]
    ours = "this checkout" if Path(meta["ours"]) == REPOSITORY else meta["ours"]
    verdict = "met" if report["meets_target"] else "MISSED"

    def row(label: str, side: dict[str, Any]) -> str:
        return (
            f"  {label:<26} {side['median_ms']:6.1f} ms {side['min_ms']:6.1f} ms  {side['modules']:7d}  "
            f"({len(side['own_modules'])})"
        )

    return "\n".join(
        [
            f"import stageflow, fresh interpreters (python {meta['python']}, {meta['cpus']} cpus, "
            f"{meta['settings']['reps']} repetitions)",
            f"  {'':<26} {'median':>9} {'min':>9}  modules  (own)",
            row("stageflow", report["ours"]) + f"  {ours}",
            row(f"stageflow-core {version}", report["baseline"]),
            row("asyncio (for reference)", report["asyncio"])
            + f"  {report['ratio_asyncio']:.2f} of {version}'s",
            f"  ours / {version}: {report['ratio_median']:.2f} (medians; target <= {report['target']:.2f}: "
            f"{verdict}), {report['ratio_min']:.2f} (minimums), {report['ratio_paired_median']:.2f} "
            "(median of back-to-back pairs)",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, measure and print the report."""
    parser = _common.parser(__doc__, quick="fewer repetitions")
    parser.add_argument(
        "--ours", metavar="DIR", type=Path, default=REPOSITORY, help="the checkout to measure"
    )
    parser.add_argument(
        "--baseline", metavar="DIR", type=Path, help="a directory holding stageflow-core 0.9.1"
    )
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    report = run_benchmark(
        settings,
        ours=args.ours,
        baseline=args.baseline,
        log=_common.log,
    )
    return _common.publish(format_report(report), report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
