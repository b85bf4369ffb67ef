"""README's statements about stageflow_otel name what the package provides."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from tests._support import missing_names
from tests.test_readme import import_table


class TestReadmeImports:
    def test_names_needing_the_extra_are_importable(self) -> None:
        """Every name of README's import table, the extra's included, is importable from its module."""
        assert missing_names(import_table(with_extra=True)) == []

    def test_the_table_lists_all_of_stageflow_otel(self) -> None:
        """The stageflow_otel row lists exactly its ``__all__``."""
        import stageflow_otel

        assert import_table(with_extra=True)["stageflow_otel"] == sorted(stageflow_otel.__all__)
