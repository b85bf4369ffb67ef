"""Without the otel extra every entry point of stageflow_otel fails with the install command."""

from __future__ import annotations

import subprocess
import sys

import pytest

HINT = "install it with pip install 'stageflow-core[otel]'"


def run_hidden(module: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which ``module`` cannot be imported."""
    prelude = f"import sys; sys.modules[{module!r}] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60)


class TestMissingExtra:
    @pytest.mark.parametrize(
        "module", ["structlog", "prometheus_client", "opentelemetry"], ids=["structlog", "prometheus", "otel"]
    )
    def test_import_names_the_install_command(self, module: str) -> None:
        """``import stageflow_otel`` raises an ImportError naming what is missing and the fix."""
        proc = run_hidden(
            module,
            "try:\n    import stageflow_otel\nexcept ImportError as exc:\n    print(exc)\n",
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(
            "stageflow_otel needs the 'otel' extra, which is not installed (missing: "
        )
        assert module in proc.stdout.split("(missing: ")[1].split(")")[0]
        assert proc.stdout.rstrip().endswith(HINT)

    @pytest.mark.parametrize(
        "code",
        [
            "import runpy; sys.argv = ['stageflow_otel', 'demo']; "
            "runpy.run_module('stageflow_otel', run_name='__main__')",
            "from stageflow_otel._demo import console_main; console_main()",
        ],
        ids=["python-m-demo", "stageflow-demo"],
    )
    def test_commands_end_with_the_install_command(self, code: str) -> None:
        """``python -m stageflow_otel demo`` and ``stageflow-demo`` stop with the same ImportError."""
        proc = run_hidden("structlog", code)
        assert proc.returncode == 1
        last = proc.stderr.rstrip().splitlines()[-1]
        assert last == (
            "ImportError: stageflow_otel needs the 'otel' extra, which is not installed "
            f"(missing: structlog); {HINT}"
        )
