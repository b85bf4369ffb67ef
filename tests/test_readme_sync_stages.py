"""README.md's "Sync stages and scaling out": its example runs, its table names what the code does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
HEADING = "Sync stages and scaling out"


def _section() -> str:
    start = README.index(f"\n## {HEADING}\n")
    end = README.find("\n## ", start + 1)
    return README[start : None if end < 0 else end]


class TestSyncStagesSection:
    def test_the_example_runs_a_thread_stage_and_a_process_stage(self) -> None:
        """The section's example, run as a program, prints what its comment says."""
        [block] = re.findall(r"```python\n(.*?)```", _section(), flags=re.S)
        proc = subprocess.run(
            [sys.executable, "-c", block], capture_output=True, text=True, timeout=120, cwd=ROOT, check=True
        )
        assert proc.stdout.splitlines() == ["6"]

    def test_the_cancellation_table_has_a_row_per_executor(self) -> None:
        """The table covers threads, process pools, Dask, Ray and any other executor, in that order."""
        rows = [line for line in _section().splitlines() if line.startswith("| ") and "---" not in line]
        assert [row.split(" | ")[0] for row in rows] == [
            "| executor",
            "| thread (the graph's pool, a `ThreadPoolExecutor`)",
            "| `ProcessPoolExecutor`",
            "| Dask `client.get_executor()`",
            "| `RayExecutor`",
            "| any other executor",
        ]

    def test_the_section_follows_execution_semantics(self) -> None:
        """Users find it after "Execution semantics", before "Streaming stages" and "Interceptors"."""
        order = [line[3:] for line in README.splitlines() if line.startswith("## ")]
        assert order.index("Execution semantics") + 1 == order.index(HEADING)
        assert order.index(HEADING) + 1 == order.index("Streaming stages")
        assert order.index("Streaming stages") + 1 == order.index("Interceptors")
