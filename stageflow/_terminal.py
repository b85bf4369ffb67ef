"""Text made safe to print on a terminal: ``terminal_safe``.

Stage and pipeline names, error messages, skip and cancel reasons and run ids come from user code or from
a run store, and a terminal acts on some characters instead of showing them: ESC starts sequences that
clear the screen, move the cursor to rewrite earlier lines, hide text, set the window title or write the
clipboard (OSC 52); BEL rings; a carriage return or newline starts a fake row. Every view that prints such
text (``RunResult.timeline()``, ``stageflow runs``, the demo) passes it through ``terminal_safe`` first.

Example::

    >>> terminal_safe("stage\\x1b[2J\\nok")
    'stage\\\\x1b[2J\\\\nok'
"""

from __future__ import annotations

__all__ = ("terminal_safe",)


def _escape(char: str) -> str:
    return repr(char)[1:-1]


def terminal_safe(text: str) -> str:
    """``text`` with every character a terminal would act on, or not show, written as a Python escape.

    Escaped: what ``str.isprintable()`` refuses apart from the plain space: C0 controls (ESC, BEL,
    backspace, carriage return, newline, tab ...), DEL and C1 controls (CSI, OSC ...), line and paragraph
    separators, other spaces, format characters (bidirectional overrides, zero-width characters), lone
    surrogates and unassigned code points. ESC becomes ``\\x1b``, a newline ``\\n``, U+202E ``\\u202e``,
    so an OSC or CSI sequence shows as plain text and what was one line stays one line. Everything else
    (letters of any script, punctuation, emoji, backslashes) is kept as it is.

    Args:
        text: the text to print.

    Returns:
        The text, unchanged when it holds nothing to escape.

    .. versionadded:: 0.10
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)
