"""The API reference: HTML generated from the docstrings by pdoc, checked for broken references.

Usage::

    python -m tests.apidocs build/api      # write build/api/index.html and one page per public module

Exits 1, listing them, when a docstring refers to a name of ours that does not exist (a code span such as
``RunResult.timelines`` or ``stageflow.nope`` that pdoc cannot link) or pdoc cannot resolve one of our
annotations. CI runs it through ``tests/test_apidocs.py``.
"""

from __future__ import annotations

import argparse
import html
import importlib
import re
import sys
import warnings
from pathlib import Path

import pdoc
import pdoc.render

__all__ = ("MODULES", "build", "main")

MODULES = (
    "stageflow",
    "stageflow.context",
    "stageflow.stages",
    "stageflow.interceptors",
    "stageflow.testing",
    "stageflow_otel",
    "stageflow_otel.semconv",
)
"""The public modules, each one page."""

# pdoc cannot evaluate OpenTelemetry's own recursive ``AttributeValue``/``AnyValue`` aliases: not ours
_UPSTREAM = re.compile(r"Import of AnyValue failed")
_DOCSTRING = re.compile(r'<div class="docstring">(.*?)</div>\s*(?:</section>|<details|<div)', re.S)
_UNLINKED = re.compile(r"<code>([A-Za-z_][\w.]*)(\(\))?</code>")


def _our_names() -> dict[str, object]:
    """Every public name of the public modules, and the modules themselves, by dotted name."""
    names: dict[str, object] = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names[module_name] = module
        for name in getattr(module, "__all__", ()):
            names.setdefault(name, getattr(module, name))
            names[f"{module_name}.{name}"] = getattr(module, name)
    return names


def _resolves(name: str, ours: dict[str, object]) -> bool | None:
    """Whether a dotted name of ours exists; ``None`` when it is not a reference to our code."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):  # the longest known prefix, then attributes
        head = ".".join(parts[:cut])
        if head in ours:
            value = ours[head]
            for attribute in parts[cut:]:
                if not hasattr(value, attribute):
                    return False
                value = getattr(value, attribute)
            return True
    return None  # e.g. a telemetry name such as stageflow.stage.duration, or a local variable


def _broken(text: str, ours: dict[str, object]) -> list[str]:
    """Code spans naming something of ours (``Class.attr``, ``stageflow.x.Y``) that does not exist."""
    found = []
    for match in _UNLINKED.finditer(text):
        name = html.unescape(match.group(1))
        head = name.split(".")[0]
        if "." not in name or not (head[:1].isupper() or head in ("stageflow", "stageflow_otel")):
            continue
        if head in ("stageflow", "stageflow_otel") and name.split(".")[1][:1].islower():
            if ".".join(name.split(".")[:2]) not in ours:
                continue  # a telemetry name (stageflow.stage.duration), not a module of ours
        if _resolves(name, ours) is False:
            found.append(name)
    return found


def build(output: Path) -> list[str]:
    """Write the reference into ``output``; the problems found (empty when there are none)."""
    pdoc.render.configure(docformat="google", show_source=False, search=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*MODULES, output_directory=output)
    problems = [
        f"pdoc: {w.message}"
        for w in caught
        if not _UPSTREAM.search(str(w.message)) and "stageflow" in str(w.message)
    ]
    ours = _our_names()
    for page in sorted(output.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        problems += [
            f"{page.relative_to(output)}: unresolved reference {name!r}" for name in _broken(text, ours)
        ]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Build the reference; exit 1 listing the problems."""
    parser = argparse.ArgumentParser(prog="python -m tests.apidocs", description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the directory to write the HTML into")
    args = parser.parse_args(argv)
    problems = build(args.output)
    for problem in problems:
        sys.stderr.write(problem + "\n")
    if problems:
        return 1
    sys.stdout.write(f"API reference: {args.output / 'index.html'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
