"""What a run returns: one ``StageResult`` per stage inside a ``RunResult``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from ._errors import error_category
from ._types import OutcomeCategory, StageArtifact, StageEvent, StageKind, StageOutput, StageStatus

__all__ = ("Hop", "RunResult", "StageResult", "critical_path", "format_seconds")

_EMPTY: Mapping[str, Any] = {}
_CATEGORY: Mapping[StageStatus, OutcomeCategory] = {
    StageStatus.OK: OutcomeCategory.SUCCESS,
    StageStatus.SKIP: OutcomeCategory.SKIP,
    StageStatus.CANCEL: OutcomeCategory.CANCELLATION,
}
"""The category of every final status but ``FAIL`` (whose category is its error's)."""


def format_seconds(seconds: float) -> str:
    """A duration rounded for people: ``0.4 ms``, ``12.3 ms``, ``1.25 s`` (reprs, timelines, reports)."""
    if seconds < 1.0:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


class Hop:
    """What the executor hops of one sync stage measured: the dispatch time, what became of cancelled work,
    and the stop flag its thread polls (``StageContext`` and ``StageResult`` hold it; other stages none)."""

    __slots__ = ("dispatch", "stop", "work")

    def __init__(self, dispatch: float = 0.0, work: str | None = None) -> None:
        self.dispatch = dispatch
        self.work = work
        self.stop = False


class StageResult:
    """The outcome of one stage in one run.

    Times are ``time.perf_counter()`` seconds: ``ready_at`` is when the last dependency finished (the run's
    start for stages without dependencies), ``started_at`` when the stage's task began, ``ended_at`` when it
    finished. ``status`` is final: OK, SKIP, FAIL or CANCEL (the stage returned ``StageOutput.cancel`` or
    was cancelled because the run stopped).

    A sync stage's ``dispatch`` is the seconds its work spent getting to its executor and back (queueing for
    a thread or a worker process, pickling, the trip to a cluster), apart from ``wait`` and the run time
    (``duration - dispatch``); ``0.0`` for an async stage. ``work`` says what became of a sync stage's
    running work when the stage was cancelled or timed out: ``"stopped"`` or ``"abandoned"`` (still running
    when the grace period ran out; its late result is discarded), else ``None``.
    """

    __slots__ = (
        "_hop",
        "attempts",
        "ended_at",
        "error",
        "kind",
        "name",
        "output",
        "ready_at",
        "started_at",
        "status",
        "stream",
    )

    def __init__(
        self,
        name: str,
        kind: StageKind,
        status: StageStatus,
        output: StageOutput | None,
        error: BaseException | None,
        ready_at: float,
        started_at: float,
        ended_at: float,
        attempts: int = 1,
        *,
        dispatch: float = 0.0,
        work: str | None = None,
        stream: Any = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.status = status
        self.output = output
        self.error = error
        self.ready_at = ready_at
        self.started_at = started_at
        self.ended_at = ended_at
        self.attempts = attempts
        self._hop = Hop(dispatch, work) if dispatch or work is not None else None
        self.stream = stream  # a streaming stage's measurements (chunks, first_at, last_at)

    @property
    def data(self) -> Mapping[str, Any]:
        """The stage's output data (empty when it produced none)."""
        return _EMPTY if self.output is None else self.output.data

    @property
    def duration(self) -> float:
        """Seconds from start to end."""
        return self.ended_at - self.started_at

    @property
    def duration_ms(self) -> int:
        """``duration`` in whole milliseconds (what stageflow-core 0.9.1's outputs carried).

        .. versionadded:: 0.10
        """
        return int((self.ended_at - self.started_at) * 1000)

    @property
    def artifacts(self) -> list[StageArtifact]:
        """The output's artifacts (empty when it produced no output).

        .. versionadded:: 0.10
        """
        return [] if self.output is None else self.output.artifacts

    @property
    def events(self) -> list[StageEvent]:
        """The output's events (empty when it produced no output).

        .. versionadded:: 0.10
        """
        return [] if self.output is None else self.output.events

    @property
    def version(self) -> str | None:
        """The output's version tag, if any.

        .. versionadded:: 0.10
        """
        return None if self.output is None else self.output.version

    @property
    def dispatch(self) -> float:
        """Seconds a sync stage's work spent going to its executor and back (0.0 for other stages).

        .. versionadded:: 0.11
        """
        hop = self._hop
        return 0.0 if hop is None else hop.dispatch

    @property
    def work(self) -> str | None:
        """What became of a sync stage's work when it was cancelled: ``"stopped"``, ``"abandoned"``, else
        ``None``.

        .. versionadded:: 0.11
        """
        hop = self._hop
        return None if hop is None else hop.work

    @property
    def chunks(self) -> int:
        """How many chunks a streaming stage yielded (0 for other stages).

        .. versionadded:: 0.11
        """
        return 0 if self.stream is None else int(self.stream.chunks)

    @property
    def first_chunk_at(self) -> float | None:
        """When a streaming stage yielded its first chunk (``time.perf_counter()`` seconds), else ``None``.

        .. versionadded:: 0.11
        """
        return None if self.stream is None else self.stream.first_at

    @property
    def time_to_first_chunk(self) -> float | None:
        """Seconds from the stage's start to its first chunk (``None`` if it yielded none or does not stream).

        .. versionadded:: 0.11
        """
        first = self.first_chunk_at
        return None if first is None else first - self.started_at

    @property
    def time_per_output_chunk(self) -> float | None:
        """Seconds per chunk after the first: (last chunk - first chunk) / (chunks - 1); ``None`` below two.

        .. versionadded:: 0.11
        """
        stream = self.stream
        if stream is None or stream.first_at is None or stream.last_at is None or stream.chunks < 2:
            return None
        return float(stream.last_at - stream.first_at) / float(stream.chunks - 1)

    @property
    def run_time(self) -> float:
        """Seconds the stage's own code ran: ``duration`` less ``dispatch``.

        .. versionadded:: 0.11
        """
        return self.ended_at - self.started_at - self.dispatch

    @property
    def wait(self) -> float:
        """Seconds from ready (dependencies resolved) to start."""
        return self.started_at - self.ready_at

    @property
    def category(self) -> OutcomeCategory:
        """The stage's outcome category: what every report of this stage shows.

        ``OK`` is ``SUCCESS``; ``SKIP`` is ``SKIP`` (a stage's own skip, a conditional skip and an
        interceptor's fallback alike: ``data["reason"]`` says which); ``CANCEL`` is ``CANCELLATION``;
        ``FAIL`` is ``error_category(error)``: ``FAILURE`` for ``StageOutput.fail`` and exhausted retries,
        ``TIMEOUT`` for a ``StageTimeoutError``, else ``ERROR``.

        .. versionadded:: 0.11
        """
        return _CATEGORY.get(self.status) or (
            OutcomeCategory.FAILURE if self.error is None else error_category(self.error)
        )

    def __repr__(self) -> str:
        err = f", error={self.error!r}" if self.error is not None else ""
        wait, took = format_seconds(max(self.wait, 0.0)), format_seconds(max(self.duration, 0.0))
        return (
            f"StageResult(name={self.name!r}, status={self.status.name}, wait={wait}, duration={took}{err})"
        )


class RunResult(dict[str, StageResult]):
    """The results of one run: a dict of stage name to ``StageResult``, in completion order.

    Attributes:
        run_id: the run id.
        pipeline_name: the pipeline's name.
        started_at, ended_at: the run's ``time.perf_counter()`` bounds.
        category: the run's ``OutcomeCategory``: ``SUCCESS`` when it completed, its first failing
            stage's category when it failed (``PipelineFailedError.results``), ``CANCELLATION`` when it
            was cancelled (``PipelineCancelledError.results``). Set by the executor as the run ends.
        critical_path: the stages, in order, whose durations and waits add up to the run's duration: the
            last stage to finish, then repeatedly the dependency that finished last (the one that made the
            stage ready). Computed on first access from the DAG and the recorded times.
    """

    __slots__ = (
        "_critical",
        "_deps",
        "_streams",
        "category",
        "ended_at",
        "pipeline_name",
        "run_id",
        "started_at",
    )

    def __init__(
        self,
        run_id: UUID,
        pipeline_name: str,
        started_at: float,
        deps: Mapping[str, Sequence[str]],
        streams: Mapping[str, Sequence[str]] = _EMPTY,
    ) -> None:
        super().__init__()
        self.run_id = run_id
        self.pipeline_name = pipeline_name
        self.started_at = started_at
        self.ended_at = started_at
        self.category = OutcomeCategory.SUCCESS
        self._deps = deps
        self._streams = streams  # each consumer's streamed dependencies
        self._critical: tuple[str, ...] | None = None

    @property
    def duration(self) -> float:
        """Seconds from the run's start to its end."""
        return self.ended_at - self.started_at

    @property
    def critical_path(self) -> tuple[str, ...]:
        """The run's critical path (see the class docstring)."""
        if self._critical is None:
            self._critical = critical_path(self, self._deps)
        return self._critical

    @property
    def first_output_path(self) -> tuple[tuple[str, float], ...]:
        """Where the run's time to first output went: ``(stage, seconds)`` along the streaming critical path.

        The run's first output is the first chunk of its final stage (the last stage of the critical path)
        if that stage streams, else its end. Walking back from it, each stage's predecessor is the
        dependency that made it ready last, counted at its first chunk when the stage consumed its stream,
        else at its end; each stage's seconds are from its predecessor's point to its own, the first
        stage's from the run's start, so they add up to ``time_to_first_output``. Empty when the final
        stage produced nothing (the run failed before it).

        .. versionadded:: 0.11
        """
        path = self.critical_path
        if not path:
            return ()
        final = self.get(path[-1])
        if final is None or final.status is not StageStatus.OK:
            return ()
        first = final.first_chunk_at
        chain: list[tuple[str, float]] = [(final.name, final.ended_at if first is None else first)]
        current = final.name
        while True:
            streamed = self._streams.get(current, ())
            gate: tuple[str, float] | None = None
            for dep in self._deps.get(current, ()):
                result = self.get(dep)
                if result is None:
                    continue
                at = result.first_chunk_at if dep in streamed else None
                point = result.ended_at if at is None else at
                if gate is None or point > gate[1]:
                    gate = (dep, point)
            if gate is None:
                break
            chain.append(gate)
            current = gate[0]
        chain.reverse()
        out: list[tuple[str, float]] = []
        previous = self.started_at
        for name, point in chain:
            out.append((name, point - previous))
            previous = point
        return tuple(out)

    @property
    def time_to_first_output(self) -> float | None:
        """Seconds from the run's start to its first output (see ``first_output_path``), else ``None``.

        .. versionadded:: 0.11
        """
        path = self.first_output_path
        return sum(seconds for _, seconds in path) if path else None

    @property
    def not_started(self) -> tuple[str, ...]:
        """The declared stages that never started (a dependency failed, or the run stopped first), in
        declaration order: they have no ``StageResult``.

        .. versionadded:: 0.11
        """
        return tuple(name for name in self._deps if name not in self)

    @property
    def waits(self) -> dict[str, float]:
        """Each stage's wait (ready to start), in seconds."""
        return {name: r.wait for name, r in self.items()}

    def timeline(self, *, width: int = 40, color: bool | None = None) -> str:
        """A text Gantt chart of the run: where the time went.

        One line per stage, sorted by start: ``─`` while it waited for its dependencies (ready → start),
        then its run (``█`` ok, ``✗`` failed, ``·`` skipped, ``▒`` cancelled), its wait and duration
        rounded, and why it failed, timed out, was skipped or cancelled. Critical-path stages are marked
        ``*``; stages that never started are listed last.

        Args:
            width: characters of the time axis (at least 10).
            color: ANSI colours; ``None`` colours only when stdout is a terminal (and ``NO_COLOR`` is unset).

        Raises:
            ValueError: ``width`` is below 10.

        .. versionadded:: 0.10
        """
        from .views._timeline import timeline_of_result  # a view: loaded when first drawn

        return timeline_of_result(self, width=width, color=color)


def critical_path(results: Mapping[str, StageResult], deps: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The chain of stages ending at the last one to finish, each preceded by the dependency it waited on."""
    if not results:
        return ()
    current = max(results.values(), key=lambda r: r.ended_at).name
    path = [current]
    while True:
        finished = [results[d] for d in deps[current] if d in results]
        if not finished:
            break
        current = max(finished, key=lambda r: r.ended_at).name
        path.append(current)
    path.reverse()
    return tuple(path)
