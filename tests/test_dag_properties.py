"""Property tests: random DAGs run like graphlib's ready groups; random cycles are reported exactly."""

from __future__ import annotations

import asyncio
import graphlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stageflow import CycleError, Pipeline, StageContext, StageKind, StageOutput

from ._support import make_ctx

Dag = dict[str, tuple[str, ...]]
"""Stage name -> its dependencies, in the order stages are added."""


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 10) -> Dag:
    """A random DAG: node i may depend on any node j < i; stages are added in a random order."""
    n = draw(st.integers(min_value=1, max_value=max_nodes))
    deps = [
        tuple(f"s{j}" for j in sorted(draw(st.sets(st.integers(0, i - 1), max_size=3)))) if i else ()
        for i in range(n)
    ]
    order = draw(st.permutations(range(n)))
    return {f"s{i}": deps[i] for i in order}


def graphlib_rounds(dag: Dag) -> list[set[str]]:
    """graphlib's groups of nodes that become ready together when each group finishes as a whole."""
    sorter = graphlib.TopologicalSorter(dag)
    sorter.prepare()
    rounds: list[set[str]] = []
    while sorter.is_active():
        ready = set(sorter.get_ready())
        rounds.append(ready)
        sorter.done(*ready)
    return rounds


async def run_in_rounds(dag: Dag) -> tuple[list[str], list[set[str]]]:
    """Run ``dag``, letting stages finish one graphlib round at a time; return start order and round starts.

    Every stage waits for its round's gate. A driver waits until every stage of round k has started (which
    needs maximal parallelism: no stage of round k may wait for a sibling), records which stages have
    started by then, and opens gate k. The stages of round k+2 and later cannot start before gate k+1 opens,
    because each depends on a stage of round k+1.
    """
    rounds = graphlib_rounds(dag)
    round_of = {name: k for k, group in enumerate(rounds) for name in group}
    gates = [asyncio.Event() for _ in rounds]
    started_ev = {name: asyncio.Event() for name in dag}
    started: list[str] = []
    finished: set[str] = set()
    snapshots: list[set[str]] = []

    async def stage(ctx: StageContext) -> StageOutput:
        name = ctx.stage_name
        assert set(dag[name]) <= finished, f"{name} started before its dependencies finished"
        assert sorted(ctx.inputs.prior_outputs) == sorted(set(dag[name]))
        started.append(name)
        started_ev[name].set()
        await gates[round_of[name]].wait()
        finished.add(name)
        return StageOutput.ok(name=name)

    pipeline = Pipeline()
    for name, deps in dag.items():
        pipeline = pipeline.with_stage(name, stage, StageKind.WORK, dependencies=deps)
    graph = pipeline.build()

    async def driver() -> None:
        for k, group in enumerate(rounds):
            for name in group:
                await started_ev[name].wait()
            snapshots.append(set(started))
            gates[k].set()

    async with asyncio.timeout(5):
        results, _ = await asyncio.gather(graph.run(make_ctx()), driver())
    assert sorted(results) == sorted(dag)
    assert all(results[name].data["name"] == name for name in dag)
    return started, snapshots


class TestRandomDags:
    @settings(max_examples=60, deadline=None, database=None)
    @given(dag=dags())
    def test_runs_like_graphlib_rounds(self, dag: Dag) -> None:
        """Each stage runs once, after its dependencies; each graphlib round fully starts before the next."""
        started, snapshots = asyncio.run(run_in_rounds(dag))
        assert sorted(started) == sorted(dag)
        rounds = graphlib_rounds(dag)
        for k, snapshot in enumerate(snapshots):
            # when round k has fully started, exactly rounds 0..k have started (round k+1 waits for gate k)
            assert snapshot == set().union(*rounds[: k + 1])

    @settings(max_examples=60, deadline=None, database=None)
    @given(dag=dags())
    def test_topological_order(self, dag: Dag) -> None:
        """``topological_order`` lists every stage once, after all of its dependencies."""
        order = pipeline_of(dag).build().topological_order
        assert sorted(order) == sorted(dag)
        position = {name: i for i, name in enumerate(order)}
        assert all(position[d] < position[name] for name, deps in dag.items() for d in deps)


async def _noop(ctx: StageContext) -> StageOutput:
    return StageOutput.ok()


def pipeline_of(dag: Dag) -> Pipeline:
    """A pipeline of no-op stages wired as ``dag`` says."""
    pipeline = Pipeline()
    for name, deps in dag.items():
        pipeline = pipeline.with_stage(name, _noop, StageKind.WORK, dependencies=deps)
    return pipeline


@st.composite
def cyclic(draw: st.DrawFn) -> Dag:
    """A random DAG plus one back edge that closes a cycle of length >= 2."""
    dag = draw(dags(max_nodes=8).filter(lambda d: len(d) >= 2))
    names = sorted(dag, key=lambda s: int(s[1:]))
    lo = draw(st.integers(0, len(names) - 2))
    hi = draw(st.integers(lo + 1, len(names) - 1))
    low, high = names[lo], names[hi]
    # make sure high depends on low (directly), then make low depend on high: a cycle
    dag[high] = tuple(dict.fromkeys((*dag[high], low)))
    dag[low] = (*dag[low], high)
    return dag


class TestRandomCycles:
    @settings(max_examples=80, deadline=None, database=None)
    @given(dag=cyclic())
    def test_cycle_is_real(self, dag: Dag) -> None:
        """A graph with a cycle raises ``CycleError`` whose ``cycle`` is a real cycle of the graph."""
        with pytest.raises(CycleError) as info:
            pipeline_of(dag).build()
        cycle = info.value.cycle
        assert len(cycle) >= 3
        assert cycle[0] == cycle[-1]
        assert len(set(cycle[:-1])) == len(cycle) - 1
        # the path runs in execution direction: each stage is a dependency of the next
        assert all(a in dag[b] for a, b in zip(cycle, cycle[1:], strict=False))
        path = " -> ".join(repr(n) for n in cycle)
        assert str(info.value) == f"dependency cycle: {path}; remove one of these dependencies"
        with pytest.raises(graphlib.CycleError):
            graphlib_rounds(dag)
