"""``StageGraph``: a built pipeline, immutable, reusable and safe to run concurrently.

It compiles its stages once (each stage's call, wrapped by its interceptors and its deadline) and hands
every run to the scheduler (``_scheduler._Run``), which keeps all per-run state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple
from uuid import uuid4

from ._checks import check_instances
from ._context import PipelineContext, StageContext
from ._dag import StageInfo, StageSpec, Topology, mermaid, validate
from ._entry import entry_context, not_a_context_error
from ._errors import (
    InterceptorError,
    PipelineDefinitionError,
)
from ._events import EventSink, resolve_sink
from ._interceptors import (
    Interceptor,
    build_run_chain,
    build_stage_chain,
    check_chain_depth,
    hooked_sink,
    order_interceptors,
    run_sink_hooks,
)
from ._offload import _PoolHolder, default_thread_count
from ._reporting import (
    PIPELINE_CREATED,
    reporter_for,
)
from ._results import RunResult
from ._runner import DEFAULT_CANCEL_GRACE
from ._scheduler import _Node, _Run, deadline_call, runner_call
from ._snapshot import ContextSnapshot, RunIdentity
from ._store import RunStore

__all__ = ("GraphPlan", "StageGraph")

logger = logging.getLogger("stageflow")


class GraphPlan(NamedTuple):
    """What a graph is compiled from: stages already validated, with their topological order and topology."""

    name: str
    stages: tuple[StageInfo, ...]
    order: Sequence[int]
    topology: Topology
    interceptors: Iterable[Interceptor]
    run_store: RunStore | None
    max_threads: int | None
    cancel_grace: float


class StageGraph:
    """A built pipeline: immutable, reusable, safe to run concurrently. Made by ``Pipeline.build()``.

    Built directly, the constructor validates like ``build()`` (unique names, known dependencies, no
    cycle) and checks that ``order`` is a topological order of ``stages`` (indices).

    Attributes:
        name: the pipeline's name.
        stages: the ``StageInfo`` of every stage, in the order they were added.
        interceptors: the interceptors, outermost first.
        run_store: where each run is recorded, or ``None``.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[StageInfo],
        order: Sequence[int],
        interceptors: Iterable[Interceptor] = (),
        run_store: RunStore | None = None,
        *,
        max_threads: int | None = None,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
    ) -> None:
        stages = tuple(stages)
        order, topology = _checked_order(stages, order)  # built by hand: validate like build() does
        self._compile(
            GraphPlan(name, stages, order, topology, interceptors, run_store, max_threads, cancel_grace)
        )

    @classmethod
    def _from_plan(cls, plan: GraphPlan) -> StageGraph:
        """The graph of a plan ``Pipeline.build()`` has validated: made without ``__init__``, so that nothing
        is checked twice."""
        graph = cls.__new__(cls)
        graph._compile(plan)
        return graph

    def _compile(self, plan: GraphPlan) -> None:
        """Set up the graph: each stage's call wrapped once by its interceptors and deadline, the adjacency
        the scheduler walks, and the run chain."""
        name, stages, order, topology, interceptors, run_store, max_threads, cancel_grace = plan
        self.name = name
        self.run_store = run_store
        self.stages = stages
        self.interceptors = order_interceptors(list(interceptors))
        check_chain_depth(self.interceptors)
        self._pool = _PoolHolder(max_threads or default_thread_count(), name)
        self._cancel_grace = cancel_grace
        index = {info.name: i for i, info in enumerate(self.stages)}
        dep_index: Sequence[tuple[int, ...] | None] = topology[0]
        ics = self.interceptors
        pool, grace = self._pool, cancel_grace
        nodes = [
            _Node(
                info,
                deadline_call(
                    info,
                    build_stage_chain(info, runner_call(info, pool, grace), ics)
                    if ics
                    else runner_call(info, pool, grace),
                ),
                index,
                mine,
            )
            for info, mine in zip(self.stages, dep_index, strict=True)
        ]
        children = topology[1]
        for node, kids in zip(nodes, children, strict=True):
            node.children = kids  # private and never changed after this: no tuple copy
        for c, node in enumerate(nodes):  # a stream's consumers are released at its first chunk instead
            for p in node.stream_deps:
                producer = nodes[p]
                producer.children = [k for k in producer.children if k != c]
                producer.stream_children = (*producer.stream_children, c)
        self._nodes = tuple(nodes)
        self._order = tuple(order)
        self._indegree = [len(n.dep_index) for n in nodes]
        indegree = self._indegree
        self._roots = tuple([i for i in range(len(nodes)) if not indegree[i]])  # in declaration order
        self._deps_by_name: Mapping[str, tuple[str, ...]] = {n.name: n.deps for n in nodes}
        self._streams_by_name: Mapping[str, tuple[str, ...]] = {
            info.name: info.streams for info in self.stages if info.streams
        }
        self._index = index
        self._version: str | None = None
        # stages whose config or class sets a timeout that no interceptor enforces (``Interceptor.enforces``):
        # warned about at the first run
        self._unenforced: tuple[str, ...] = (
            ()
            if any("timeout" in ic.enforces for ic in self.interceptors)
            else tuple(
                info.name
                for info in self.stages
                if info.timeout is None
                and ("timeout" in info.config or getattr(info.runner, "timeout", None) is not None)
            )
        )
        self._sink_hooks = run_sink_hooks(self.interceptors)
        self._run_chain = build_run_chain(self._execute, self.interceptors)
        self._run_wrapped = self._run_chain != self._execute  # build_run_chain returns _execute as is

    @property
    def version(self) -> str:
        """A short hash of the topology (names, kinds, dependencies); equal graphs share it."""
        if self._version is None:
            h = hashlib.sha256()
            for info in sorted(self.stages, key=lambda s: s.name):
                h.update(f"{info.name}\0{info.kind.value}\0{','.join(sorted(info.dependencies))}\n".encode())
            self._version = h.hexdigest()[:12]
        return self._version

    @property
    def stage_specs(self) -> list[StageSpec]:
        """The stages as specs, in the order they were added, each ``runner`` the stage's own call.

        ``await spec.runner(ctx)`` runs the stage alone (without interceptors, events or retries), as
        in stageflow-core 0.9.1.

        .. versionadded:: 0.10
        """
        return [
            StageSpec(
                info.name,
                runner_call(info, self._pool, self._cancel_grace),
                info.kind,
                info.dependencies,
                info.conditional,
                info.config,
                info.retry,
                info.executor,
            )
            for info in self.stages
        ]

    def stage(self, name: str) -> StageInfo:
        """The ``StageInfo`` of one stage.

        Raises:
            KeyError: no stage has that name.
        """
        try:
            return self.stages[self._index[name]]
        except KeyError:
            msg = f"no stage {name!r} in pipeline {self.name!r}"
            raise KeyError(msg) from None

    @property
    def topological_order(self) -> tuple[str, ...]:
        """The stage names in one valid execution order."""
        return tuple(self.stages[i].name for i in self._order)

    def to_mermaid(self) -> str:
        """The DAG as a Mermaid flowchart."""
        return mermaid(self.stages)

    def __repr__(self) -> str:
        return f"StageGraph(name={self.name!r}, stages={len(self.stages)})"

    async def run(
        self,
        ctx: StageContext | None = None,
        *,
        input_text: str | None = None,
        data: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        event_sink: EventSink | None = None,
        run_id: RunIdentity | None = None,
    ) -> RunResult:
        """Run the pipeline once: ``await graph.run(input_text="hi")`` or ``await graph.run(ctx)``.

        Args:
            ctx: the entry context: its ``snapshot`` is the run's input, its ``timer`` the run's clock, its
                ``event_sink`` (else the process sink) receives the run's events and its ``data`` seeds
                ``PipelineContext.data``. Without it, one is built from the keyword arguments.
            input_text: the snapshot's ``input_text`` (only without ``ctx``).
            data: the initial ``ctx.data`` of the run (only without ``ctx``).
            metadata: the snapshot's metadata, e.g. a W3C ``traceparent`` (only without ``ctx``).
            event_sink: the run's sink; ``None`` means the process sink (only without ``ctx``).
            run_id: the run's ``RunIdentity``; default a fresh one (only without ``ctx``).

        .. versionchanged:: 0.10
            The keyword arguments build the entry context.

        Returns:
            The ``RunResult``: every stage's ``StageResult`` by name.

        Raises:
            PipelineFailedError: a stage failed (raised, returned ``fail``, or exhausted its retries).
            PipelineCancelledError: a stage returned ``StageOutput.cancel``.
            asyncio.CancelledError: the awaiting task was cancelled; every running stage was cancelled
                and awaited first.
            TypeError: ``ctx`` is not a ``StageContext``, or is given together with keyword arguments.
        """
        if ctx is None:
            ctx = entry_context(
                input_text=input_text, data=data, metadata=metadata, event_sink=event_sink, run_id=run_id
            )
        elif not isinstance(ctx, StageContext):
            raise not_a_context_error(ctx)
        elif any(v is not None for v in (input_text, data, metadata, event_sink, run_id)):
            msg = "graph.run() takes an entry StageContext or keyword arguments, not both"
            raise TypeError(msg)
        if self._unenforced:
            self._warn_unenforced()
        outer = ctx.pipeline
        sink = ctx.event_sink
        if outer is not None and sink is outer.event_sink:
            # run from a stage: its run's sink as given, not as that run's interceptors wrapped it for itself
            sink = outer._given_sink
        sink = resolve_sink(sink)
        snapshot = ctx.snapshot
        if ctx._ran or outer is not None:
            # a run id names one run: a reused entry context (or a stage's context) gets a fresh one
            snapshot = _fresh_run_id(snapshot)
        else:
            ctx._ran = True
        run = PipelineContext(
            snapshot=snapshot,
            graph=self,
            event_sink=sink,
            timer=ctx.timer,
            # an entry context's ``data`` is already a fresh dict; a stage's is its run's: copy that one
            data=ctx.data if outer is None else dict(ctx.data),
            ports=ctx.inputs.ports,
        )
        if self._sink_hooks:  # an interceptor receives the run's events itself (a tracer)
            sink = run.event_sink = hooked_sink(self._sink_hooks, run, sink)
        reporter = run._reporter = reporter_for(sink, self.run_store, run.run_id, self.name)
        if reporter is not None and reporter.sink is not None:
            reporter.event(PIPELINE_CREATED, {"stages": len(self.stages), "version": self.version})
        if not self._run_wrapped:
            return await _Run(self, run).go()  # no run interceptors: skip a coroutine layer
        out = await self._run_chain(run)
        results = run._result  # the run's own result, whatever the interceptors returned
        if isinstance(out, RunResult):
            return out
        if results is None:
            msg = (
                f"the run interceptors of pipeline {self.name!r} returned {out!r} without running it; "
                "intercept_run must return await call_next(run)"
            )
            raise InterceptorError(msg)
        logger.error(
            "stageflow: a run interceptor of pipeline %r returned %r instead of the RunResult; "
            "run() returns the run's results",
            self.name,
            out,
        )
        return results

    def _warn_unenforced(self) -> None:
        names, self._unenforced = self._unenforced, ()
        warnings.warn(
            f"pipeline {self.name!r} runs without a TimeoutInterceptor, so nothing enforces the "
            f"timeout (config['timeout'] or a timeout attribute) of stage{'s' if len(names) > 1 else ''} "
            f"{', '.join(map(repr, names))}; add TimeoutInterceptor() to build(interceptors=[...]), or pass "
            "with_stage(..., timeout=seconds)",
            UserWarning,
            stacklevel=3,
        )

    @staticmethod
    async def _execute(run: PipelineContext) -> RunResult:
        """The innermost call of the run chain: run the pipeline; the run context keeps its result."""
        results = run._result = await _Run(run.graph, run).go()
        return results


def _fresh_run_id(snapshot: ContextSnapshot) -> ContextSnapshot:
    return dataclasses.replace(snapshot, run_id=dataclasses.replace(snapshot.run_id, pipeline_run_id=uuid4()))


def _checked_order(stages: Sequence[StageInfo], order: Sequence[int]) -> tuple[tuple[int, ...], Topology]:
    check_instances(
        stages,
        StageInfo,
        PipelineDefinitionError,
        "StageGraph stages must be StageInfo objects, got {!r}; build graphs with Pipeline.build()",
    )
    topology = validate(stages)[1]  # duplicate, unknown and cyclic dependencies
    order = tuple(order)
    position = {i: p for p, i in enumerate(order)}
    if sorted(order) != list(range(len(stages))):
        msg = (
            f"StageGraph order {list(order)!r} is not a permutation of the {len(stages)} stage indices; "
            "build graphs with Pipeline.build()"
        )
        raise PipelineDefinitionError(msg)
    index = {info.name: i for i, info in enumerate(stages)}
    for i, info in enumerate(stages):
        for dep in info.dependencies:
            if position[index[dep]] > position[i]:
                msg = (
                    f"StageGraph order runs stage {info.name!r} before its dependency {dep!r}; "
                    "build graphs with Pipeline.build()"
                )
                raise PipelineDefinitionError(msg)
    return order, topology
