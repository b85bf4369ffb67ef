"""The README's telemetry reference is generated from semconv and kept in sync by a test."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from pathlib import Path

from stageflow_otel import semconv
from stageflow_otel.docs import END_MARKER, START_MARKER, main, render_reference, replace_section

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_section() -> str:
    """The README text strictly between the telemetry markers."""
    text = README.read_text(encoding="utf-8")
    return text[text.index(START_MARKER) + len(START_MARKER) : text.index(END_MARKER)]


class TestTelemetryReference:
    def test_readme_section_is_the_generated_reference(self) -> None:
        """README.md holds exactly what ``python -m stageflow_otel.docs`` renders."""
        assert readme_section() == "\n" + render_reference()

    def test_reference_names_every_metric_with_unit_and_prometheus_name(self) -> None:
        """Each metric row carries its instrument, unit and Prometheus family name."""
        rows = render_reference().splitlines()
        for m in semconv.METRICS:
            assert any(
                row.startswith(f"| `{m.name}` | {m.instrument} | `{m.unit}` | `{m.prometheus}` |")
                for row in rows
            ), m.name

    def test_reference_names_every_attribute_event_variable_and_bucket(self) -> None:
        """Every attribute, event name, environment variable and bucket bound appears in the reference."""
        text = render_reference()
        names = [
            *(f"`{a.name}`" for a in semconv.ATTRIBUTES),
            *(f"`{e}`" for e in semconv.EVENTS.values()),
            *(f"`{v.name}`" for v in semconv.ENVIRONMENT),
            f"`{semconv.EVENT_OTHER}`",
            ", ".join(f"{b:g}" for b in semconv.DURATION_BUCKETS),
        ]
        assert [n for n in names if n not in text] == []

    def test_check_flags_a_stale_readme_and_the_command_fixes_it(self, tmp_path: Path) -> None:
        """``--check`` exits 1 on a stale section; running without it rewrites only that section."""
        readme = tmp_path / "README.md"
        readme.write_text(f"# x\n\n{START_MARKER}\nold\n{END_MARKER}\n\nrest\n", encoding="utf-8")
        assert main([str(readme), "--check"]) == 1
        assert main([str(readme)]) == 0
        assert main([str(readme), "--check"]) == 0
        assert readme.read_text(encoding="utf-8") == (
            f"# x\n\n{START_MARKER}\n{render_reference()}{END_MARKER}\n\nrest\n"
        )

    def test_missing_markers_are_an_error(self) -> None:
        """A README without the markers is rejected with a message naming them."""
        with pytest.raises(ValueError, match="telemetry:start") as exc:
            replace_section("# no markers\n", "x")
        assert exc.match("telemetry:end")
