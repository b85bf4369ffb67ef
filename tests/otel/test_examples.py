"""examples/instrument.py, the README walkthrough's script, runs and shows what the walkthrough says."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests._support import killed_if_running

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "instrument.py"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def run_script(**env: str) -> subprocess.CompletedProcess[str]:
    """Runs the script (metrics on any free port) with ``env`` added to the environment without ``OTEL_*``;
    fails unless it exits 0."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**ENV, **env},
        check=True,
    )


def log_lines(stdout: str) -> list[dict[str, object]]:
    """The structlog JSON lines of the script's output (one object per line)."""
    parsed = [json.loads(line) for line in stdout.splitlines() if line.startswith('{"')]
    return [line for line in parsed if "event" in line]


def console_spans(stdout: str) -> list[str]:
    """The names of the spans the console exporter printed, one JSON object per line."""
    return sorted(json.loads(line)["name"] for line in stdout.splitlines() if line.startswith('{"name": '))


class TestInstrumentExample:
    def test_logs_timeline_metrics_and_console_spans(self) -> None:
        """With console spans the script logs with trace and run context, and prints timeline and metrics."""
        proc = run_script(OTEL_TRACES_EXPORTER="console")
        lines = log_lines(proc.stdout)
        mine = [line for line in lines if line["event"] == "retrieving"]
        assert [(line["query"], line["stage"], line["pipeline"]) for line in mine] == [
            ("What is stageflow?", "retrieve", "ask"),
            ("Where do my spans go?", "retrieve", "ask"),
        ]
        for line in mine:  # the user's own line shares trace and run with the interceptor's lines
            started = next(
                x
                for x in lines
                if x["event"] == "stageflow.stage.started"
                and x["run_id"] == line["run_id"]
                and x["stage"] == "retrieve"
            )
            assert (line["trace_id"], line["span_id"]) == (started["trace_id"], started["span_id"])
        assert all(
            re.fullmatch(r"\d+(\.\d{1,6})?(e-\d+)?", str(x["duration"])) for x in lines if "duration" in x
        )
        out = proc.stdout.splitlines()
        assert any(
            re.fullmatch(r"pipeline 'ask' · run [0-9a-f-]{36} · completed in [\d.]+ ms", x) for x in out
        )
        counts = [x for x in out if x.startswith("stageflow_stage_duration_seconds_count{")]
        assert len(counts) == 2 and all(x.endswith("} 2.0") for x in counts)
        assert console_spans(proc.stdout) == [
            "pipeline ask",
            "pipeline ask",
            "stage answer",
            "stage answer",
            "stage retrieve",
            "stage retrieve",
        ]
        assert '"stageflow.stage.output.tokens": 42' in proc.stdout
        assert '"stageflow.stage.output.documents"' not in proc.stdout

    def test_console_log_records_are_one_json_line_each(self) -> None:
        """With event log records on the console, each record is one JSON line, its seconds rounded."""
        proc = run_script(OTEL_LOGS_EXPORTER="console", STAGEFLOW_EVENT_LOG_RECORDS="true")
        records = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith('{"body": ')]
        run = [
            "stageflow.pipeline.created",
            "stageflow.pipeline.started",
            "stageflow.stage.started",
            "stageflow.stage.completed",
            "stageflow.stage.started",
            "stageflow.stage.completed",
            "stageflow.pipeline.completed",
        ]
        assert [r["event_name"] for r in records] == run + run
        assert all(
            re.fullmatch(r"\d+(\.\d{1,6})?(e-\d+)?", str(r["body"][key]))
            for r in records
            for key in ("timestamp", "duration", "wait")
            if key in r["body"]
        )

    def test_default_exports_no_spans(self) -> None:
        """Without OTEL_* variables no span is printed: they are recorded, not exported."""
        proc = run_script()
        assert '"name": "stage answer"' not in proc.stdout
        assert all("trace_id" in line for line in log_lines(proc.stdout))

    def test_serve_keeps_metrics_up_until_interrupted(self) -> None:
        """``--serve`` keeps /metrics scrapeable after the runs and exits 0 on Ctrl-C."""
        with killed_if_running(
            subprocess.Popen(
                [sys.executable, str(SCRIPT), "--metrics-port", "0", "--serve"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env=ENV,
            )
        ) as proc:
            assert proc.stdout is not None
            url = ""
            for line in proc.stdout:
                if line.startswith("metrics: "):
                    url = line.split(" ", 1)[1].strip()
                if line.startswith("serving /metrics"):
                    break
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read().decode()
            assert "stageflow_pipeline_run_duration_seconds_count{" in body
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err


class TestReadmePrometheusConfig:
    def test_promtool_accepts_it(self, tmp_path: Path) -> None:
        """The walkthrough's Prometheus configuration passes ``promtool check config``."""
        from tests.stack._stack import stack_binary

        promtool = stack_binary("promtool")  # built by collector/build-stack.sh (CI runs it before the tests)
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        section = readme[readme.index("\n## Instrument your pipeline\n") :]
        section = section[: section.index("\n## ", 1)]
        (config,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
        assert len(config.splitlines()) <= 10
        path = tmp_path / "prometheus.yml"
        path.write_text(config, encoding="utf-8")
        proc = subprocess.run(
            [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "127.0.0.1:9464" in config
