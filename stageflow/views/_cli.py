"""The ``stageflow`` command: stored runs as tables, timelines and HTML reports; pipelines as diagrams.

Usage::

    stageflow runs list runs.db                       # id, pipeline, status, result, start, duration,
                                                      # critical path
    stageflow runs show runs.db 1b2c3d4e              # one run's timeline (an id or a unique prefix), its
                                                      # time to first output, chunks and dispatch
    stageflow runs list --store postgresql://u@host/db  # any command reads PostgreSQL too ($STAGEFLOW_STORE)
    stageflow db migrate postgresql://u@host/db       # create or upgrade a store's schema
    stageflow graph myapp.pipelines:PIPELINE          # the DAG as Mermaid (--format svg for SVG)
    stageflow report runs.db --output report.html     # a self-contained HTML report

``python -m stageflow`` is the same command. Only the standard library is used (psycopg for PostgreSQL).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stageflow._events import RecordedEvent
from stageflow._graph import StageGraph
from stageflow._pipeline import Pipeline
from stageflow._results import format_seconds
from stageflow._store import RunRecord, SQLiteRunStore
from stageflow._terminal import terminal_safe

from ._cli_store import (
    JAEGER_ENV,
    STORE_ENV,
    CommandError,
    Location,
    find_run,
    location,
    migrate_store,
    pipeline_names,
    read_runs,
)
from ._svg import dag_nodes, dag_svg
from ._timeline import DEFAULT_WIDTH, timeline_of_record, use_color

__all__ = ("CommandError", "console_main", "load_graph", "main", "open_store", "parser")


def _version() -> str:
    from stageflow import __version__

    return __version__


def open_store(path: str) -> SQLiteRunStore:
    """Open an existing SQLite run store.

    Raises:
        CommandError: the file does not exist, is not a SQLite database, or has a newer schema.
    """
    if not Path(path).is_file():
        msg = (
            f"no run store at {path!r}: the file does not exist; record runs into it with "
            f"pipeline.build(run_store=SQLiteRunStore({path!r}))"
        )
        raise CommandError(msg)
    try:
        return SQLiteRunStore(path, create=False)
    except sqlite3.DatabaseError as exc:
        msg = f"{path!r} is not a stageflow run store: {exc}"
        raise CommandError(msg) from exc
    except RuntimeError as exc:  # a newer schema version
        raise CommandError(str(exc)) from exc


def _read(args: argparse.Namespace) -> list[RunRecord]:
    """The runs ``args`` asks for; each stored run that cannot be read is reported and skipped."""
    records, problems = read_runs(location(args.db, args.store), args.pipeline, args.limit)
    for problem in problems:
        print(f"stageflow: warning: {problem}; skipped", file=sys.stderr)
    return records


def load_graph(target: str) -> StageGraph:
    """The ``StageGraph`` named by ``MODULE:ATTRIBUTE``.

    The attribute may be a ``Pipeline`` (it is built), a ``StageGraph``, or a function taking no
    arguments that returns either. The current directory is importable, as with ``python -m``.

    Raises:
        CommandError: the target is malformed, cannot be imported, or names something else.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        msg = f"pipeline {target!r} is not MODULE:ATTRIBUTE; write it like 'myapp.pipelines:PIPELINE'"
        raise CommandError(msg)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"cannot import module {module_name!r} of {target!r}: {exc}"
        raise CommandError(msg) from exc
    except Exception as exc:  # the module itself raised while it was imported
        msg = (
            f"importing module {module_name!r} of {target!r} raised {type(exc).__name__}: {exc}; "
            "fix the module (run 'python -c \"import "
            f"{module_name}\"' to see the traceback)"
        )
        raise CommandError(msg) from exc
    for part in attribute.split("."):
        if not hasattr(value, part):
            found = sorted(k for k, v in vars(value).items() if isinstance(v, Pipeline | StageGraph))
            msg = f"{module_name!r} has no attribute {attribute!r}; pipelines it defines: {found or 'none'}"
            raise CommandError(msg)
        value = getattr(value, part)
    if callable(value) and not isinstance(value, Pipeline | StageGraph):
        if not _takes_no_arguments(value):
            msg = (
                f"{target!r} is a {type(value).__name__} that needs arguments; name a Pipeline, a StageGraph "
                "or a function taking none that returns one"
            )
            raise CommandError(msg)
        value = value()
    if isinstance(value, Pipeline):
        value = value.build()
    if not isinstance(value, StageGraph):
        msg = f"{target!r} is a {type(value).__name__}, not a Pipeline or StageGraph"
        raise CommandError(msg)
    return value


def _takes_no_arguments(fn: Any) -> bool:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in signature.parameters.values()
    )


def _local(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _runs_list(args: argparse.Namespace) -> int:
    records = _read(args)
    if not records:
        which = f" of pipeline {args.pipeline!r}" if args.pipeline else ""
        print(f"no runs{which} in {location(args.db, args.store).shown!r}")
        return 0
    streamed = any(r.streamed for r in records)
    first = ("first output",) if streamed else ()
    rows = [("id", "pipeline", "status", "result", "start", "duration", *first, "critical path")]
    rows += [
        (
            terminal_safe(r.run_id),
            terminal_safe(r.pipeline),
            terminal_safe(r.status),
            "-" if r.category is None else terminal_safe(str(r.category)),
            _local(r.started_at),
            format_seconds(r.duration),
            *((_first_output(r),) if streamed else ()),
            " → ".join(terminal_safe(name) for name in r.critical_path),
        )
        for r in records
    ]
    print(_table(rows))
    return 0


def _first_output(record: RunRecord) -> str:
    ttfo = record.time_to_first_output
    return "-" if ttfo is None else format_seconds(ttfo)


def _measurement_lines(record: RunRecord) -> list[str]:
    """What ``runs show`` prints under a run's timeline about streams and sync work: the time to first
    output with its breakdown (for runs that streamed), each streaming stage's chunks and time to first
    chunk, and the stages whose work was stopped or abandoned."""
    lines = []
    ttfo = record.time_to_first_output
    if record.streamed and ttfo is not None:
        steps = " → ".join(f"{name} {format_seconds(seconds)}" for name, seconds in record.first_output_path)
        lines.append(f"  time to first output: {format_seconds(ttfo)} ({steps})")
    streams = [
        f"{s.name} {s.chunks} (first after {format_seconds(s.time_to_first_chunk)})"
        if s.time_to_first_chunk is not None
        else f"{s.name} {s.chunks}"
        for s in record.stages
        if s.chunks
    ]
    if streams:
        lines.append(f"  chunks: {', '.join(streams)}")
    for fate in ("stopped", "abandoned"):
        names = [s.name for s in record.stages if s.work == fate]
        if names:
            lines.append(f"  work {fate}: {', '.join(names)}")
    return lines


def _color(choice: str) -> bool:
    return use_color() if choice == "auto" else choice == "always"


def _runs_show(args: argparse.Namespace) -> int:
    found = find_run(location(args.db, args.store), args.run_id, events=args.events)
    record = found.record
    print(timeline_of_record(record, width=args.width, color=_color(args.color)))
    if record.error:
        print(f"  error: {terminal_safe(record.error)}")
    for line in _measurement_lines(record):
        print(terminal_safe(line))
    for line in _trace_lines(record, args.jaeger_url) + (_event_lines(found.events) if args.events else []):
        print(terminal_safe(line))
    return 0


def _trace_lines(record: RunRecord, jaeger: str | None) -> list[str]:
    if record.trace_id is None:
        return []
    lines = [f"  trace: {record.trace_id}"]
    if jaeger:
        lines.append(f"  jaeger: {jaeger.rstrip('/')}/trace/{record.trace_id}")
    return lines


def _event_lines(events: Sequence[RecordedEvent]) -> list[str]:
    if not events:
        return ["  events: none stored"]
    lines = ["  events:"]
    for event in events:
        stamp = event.data.get("timestamp")
        when = _local(stamp) if isinstance(stamp, int | float) else "?"
        lines.append(f"    {when}  {event.type}")
    return lines


def _migrate(args: argparse.Namespace) -> int:
    print(migrate_store(location(args.db, args.store).target))
    return 0


def _graph(args: argparse.Namespace) -> int:
    graph = load_graph(args.pipeline)
    if args.format == "svg":
        text = dag_svg(dag_nodes(graph), title=f"pipeline {graph.name}")
    else:
        text = graph.to_mermaid()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write("\n".join(terminal_safe(line) for line in text.split("\n")))
    return 0


def _report(args: argparse.Namespace) -> int:
    from ._report import render_report

    records = _read(args)
    if args.pipeline is not None and not records:
        raise CommandError(_unknown_pipeline(location(args.db, args.store), args.pipeline))
    graphs = [load_graph(target) for target in args.graph]
    html = render_report(records, graphs=graphs, source=location(args.db, args.store).shown)
    Path(args.output).write_text(html, encoding="utf-8")
    print(f"wrote {args.output} ({len(records)} runs)")
    return 0


def _unknown_pipeline(where: Location, pipeline: str) -> str:
    """Why ``--pipeline`` found no runs: the pipelines the store at ``where`` does hold runs of."""
    path = where.shown
    names = pipeline_names(where)
    if not names:
        return f"no runs of pipeline {pipeline!r} in {path!r}: it holds no runs yet"
    return (
        f"no runs of pipeline {pipeline!r} in {path!r}; it holds runs of {', '.join(map(repr, names))}: "
        "pass one of those to --pipeline, or leave --pipeline out"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"must be a whole number of at least 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _width(text: str) -> int:
    value = _positive_int(text)
    if value < 10:
        msg = f"must be at least 10, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def parser() -> argparse.ArgumentParser:
    """The command-line parser of ``stageflow``."""
    top = argparse.ArgumentParser(
        prog="stageflow",
        description="Inspect stageflow runs recorded in a run store (a SQLite file or a PostgreSQL URL), "
        "and draw pipelines.",
    )
    top.add_argument("--version", action="version", version=f"stageflow {_version()}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    runs = commands.add_parser("runs", help="list stored runs or show one run's timeline")
    runs_commands = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    listing = runs_commands.add_parser(
        "list",
        help="a table of the most recent runs",
        description="A table of the most recent runs: id, pipeline, status, result (the outcome category: "
        "success, failure, error, timeout or cancellation), start (local time), duration, time to first "
        "output (when a listed run streamed), critical path.",
    )
    _store_arguments(listing)
    listing.add_argument("--pipeline", help="only runs of this pipeline")
    listing.add_argument("--limit", type=_positive_int, default=20, help="runs to list (default 20)")
    listing.set_defaults(handler=_runs_list)

    show = runs_commands.add_parser(
        "show", help="one run's timeline", description="One run's timeline, as RunResult.timeline() draws it."
    )
    _store_arguments(show)
    show.add_argument("run_id", metavar="RUN_ID", help="the run id, or a prefix of it matching one run")
    show.add_argument(
        "--width", type=_width, default=DEFAULT_WIDTH, help=f"time axis characters (default {DEFAULT_WIDTH})"
    )
    show.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the timeline (default auto: only on a terminal, unless NO_COLOR is set)",
    )
    show.add_argument(
        "--events", action="store_true", help="also list the events a DatabaseEventSink stored for the run"
    )
    show.add_argument(
        "--jaeger-url",
        default=os.environ.get(JAEGER_ENV),
        metavar="URL",
        help=f"Jaeger's UI address, to print a link to the run's trace (default ${JAEGER_ENV})",
    )
    show.set_defaults(handler=_runs_show)

    graph = commands.add_parser(
        "graph",
        help="draw a pipeline's DAG as Mermaid or SVG",
        description="Draw a pipeline's DAG. PIPELINE is MODULE:ATTRIBUTE naming a Pipeline, a StageGraph "
        "or a function returning one (the current directory is importable).",
    )
    graph.add_argument("pipeline", metavar="PIPELINE", help="e.g. myapp.pipelines:PIPELINE")
    graph.add_argument("--format", choices=("mermaid", "svg"), default="mermaid", help="default mermaid")
    graph.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    graph.set_defaults(handler=_graph)

    report = commands.add_parser(
        "report",
        help="write a self-contained HTML report of stored runs",
        description="Write one HTML file (no network needed; opens from file://) with every run's Gantt "
        "chart, the DAG, and per-stage failures, skips, retries, p50/p95/p99 run time, wait, dispatch time "
        "(sync stages) and time to first chunk (streaming stages) over the runs in which the stage ran, and "
        "critical-path share, and the runs' time to first output when they streamed.",
    )
    _store_arguments(report)
    report.add_argument("--output", "-o", metavar="FILE", required=True, help="the HTML file to write")
    report.add_argument("--pipeline", help="only runs of this pipeline")
    report.add_argument("--limit", type=_positive_int, default=200, help="most recent runs (default 200)")
    report.add_argument(
        "--graph",
        metavar="PIPELINE",
        action="append",
        default=[],
        help="MODULE:ATTRIBUTE of a pipeline whose declared DAG to draw (repeatable); "
        "by default each DAG is drawn from the recorded runs",
    )
    report.set_defaults(handler=_report)

    db = commands.add_parser("db", help="create or upgrade a run store's schema")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    migrate = db_commands.add_parser(
        "migrate",
        help="create or upgrade the schema",
        description="Create the run store's schema, or upgrade it to this stageflow's version (a SQLite file "
        "is created if missing). Stores do this on first use; run it to do it ahead of time, or as a role "
        "allowed to create tables.",
    )
    _store_arguments(migrate)
    migrate.set_defaults(handler=_migrate)
    return top


def _store_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "db",
        metavar="DB",
        nargs="?",
        help=f"the SQLite run store file or a postgresql:// URL (or ${STORE_ENV})",
    )
    command.add_argument(
        "--store",
        metavar="URL",
        help="the run store, as DB (a postgresql:// URL keeps its password out of argv "
        "when given through the environment)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stageflow`` command; returns the exit status (0 ok, 1 failed, 2 usage error)."""
    args = parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except CommandError as exc:
        print(f"stageflow: error: {terminal_safe(str(exc))}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `stageflow runs list runs.db | head`
        return 0
    return status


def console_main() -> None:
    """Entry point of the ``stageflow`` console script."""
    raise SystemExit(main())
