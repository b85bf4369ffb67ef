"""``terminal_safe``: what a terminal would act on is printed as an escape, the rest as it is."""

from __future__ import annotations

import pytest

from stageflow import terminal_safe


class TestTerminalSafe:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("clear\x1b[2J\x1b[Hscreen", "clear\\x1b[2J\\x1b[Hscreen"),
            ("title\x1b]0;owned\x07", "title\\x1b]0;owned\\x07"),
            ("clip\x1b]52;c;ZXZpbA==\x1b\\", "clip\\x1b]52;c;ZXZpbA==\\x1b\\"),
            ("c1\x9b2K\x9d0;x\x9c", "c1\\x9b2K\\x9d0;x\\x9c"),
            ("row\nfake\r\ttab\x7f\x00", "row\\nfake\\r\\ttab\\x7f\\x00"),
            ("bidi\u202egnp.exe\u2066\u2028", "bidi\\u202egnp.exe\\u2066\\u2028"),
            ("nbsp\xa0zw\u200b", "nbsp\\xa0zw\\u200b"),
            ("caf\udce9.txt", "caf\\udce9.txt"),
        ],
        ids=["csi", "osc-title", "osc52-clipboard", "c1", "c0-del", "bidi-separators", "spaces", "surrogate"],
    )
    def test_escapes(self, text: str, expected: str) -> None:
        """Controls, C1, bidirectional and invisible characters and lone surrogates become escapes."""
        assert terminal_safe(text) == expected

    def test_keeps_printable_text(self) -> None:
        """Any script, emoji, spaces and backslashes are kept exactly."""
        text = "llm → tts · Größe 東京 🙂 C:\\runs 'a' \"b\""
        assert terminal_safe(text) is text
