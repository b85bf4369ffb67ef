"""Tests every cluster executor passes, whichever cluster runs the stages (Dask's, Ray's).

A test module subclasses ``ClusterCases`` as a ``Test…`` class, sets ``name`` (the pipelines' name) and
provides a fixture ``cluster``: the ``Cluster`` under test.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from stageflow import (
    InMemoryEventSink,
    Pipeline,
    RemoteStageError,
    RunResult,
    StageGraph,
    StageStatus,
    StageTimeoutError,
    TimeoutInterceptor,
    UnpicklableValueError,
)

from . import _cluster_stages as stages
from ._stages import T
from ._support import run_fails

__all__ = (
    "BOUND",
    "Cluster",
    "ClusterCases",
    "a_timeout_stops_slow",
    "fail_fast_stops",
    "slow_beside_boom",
    "start_slow_run",
)

BOUND = 120.0
"""Seconds after which a run that has not ended counts as hung (never reached when all is well)."""


@dataclass(frozen=True)
class Cluster:
    """The cluster under test: its executor, and whether a process id is one of its workers."""

    executor: Executor
    in_worker: Callable[[int], bool]


async def start_slow_run(name: str, executor: Executor, folder: Path) -> asyncio.Task[RunResult]:
    """Start a run of ``source`` then ``slow`` (``wait_for_release`` in ``folder``) on ``executor``;
    return its task once ``slow`` has started in a worker (``folder / "started"`` holds the worker's pid)."""
    graph = (
        Pipeline(name)
        .with_stage("source", stages.source, T)
        .with_stage("slow", stages.wait_for_release, T, ("source",), config={"dir": str(folder)})
        .build(executor=executor)
    )
    run = asyncio.create_task(graph.run())
    await asyncio.wait_for(stages.file_exists(folder / "started"), BOUND)
    return run


def slow_beside_boom(name: str, folder: Path, stage: Any, executor: Executor) -> Pipeline:
    """Pipeline ``name``: ``slow`` (``stage``, coordinating in ``folder``) on ``executor``, beside ``boom``,
    which fails on the loop once ``slow`` has started."""
    config = {"dir": str(folder)}
    return (
        Pipeline(name)
        .with_stage("slow", stage, T, config=config, executor=executor)
        .with_stage("boom", stages.fail_once_started, T, config=config)
    )


async def fail_fast_stops(graph: StageGraph) -> None:
    """Run ``graph`` (built from ``slow_beside_boom``): fail-fast cancels ``slow``, its work "stopped",
    and its ``cancelled`` event says so."""
    sink = InMemoryEventSink()
    caught = await run_fails(asyncio.wait_for(graph.run(event_sink=sink), BOUND))
    slow = caught.results["slow"]
    assert (slow.status, slow.work, slow.error) == (StageStatus.CANCEL, "stopped", None)
    assert str(caught) == "stage 'boom' failed: RuntimeError: sibling failed"
    [cancelled] = [e for e in sink.events if e.type == "stage.slow.cancelled"]
    assert cancelled.data["work"] == "stopped"


async def a_timeout_stops_slow(
    name: str, folder: Path, *, stage_executor: Executor | None = None, **build: Any
) -> None:
    """Run pipeline ``name`` of ``slow`` alone (``wait_for_release`` in ``folder``), routed to
    ``stage_executor`` by ``with_stage`` if given, built with ``build`` and a ``TimeoutInterceptor`` giving
    ``slow`` 0.2 s: the timeout fails it (``StageTimeoutError``), its work "stopped"."""
    timeout = TimeoutInterceptor(default=None, per_stage={"slow": 0.2})
    graph = (
        Pipeline(name)
        .with_stage("slow", stages.wait_for_release, T, config={"dir": str(folder)}, executor=stage_executor)
        .build(interceptors=[timeout], **build)
    )
    caught = await run_fails(asyncio.wait_for(graph.run(), BOUND))
    slow = caught.results["slow"]
    assert (slow.status, slow.work, type(slow.error)) == (StageStatus.FAIL, "stopped", StageTimeoutError)


class ClusterCases:
    name: ClassVar[str]
    """The name of the pipelines the tests build (it shows in the events)."""

    async def test_outputs_flow_to_dependents_across_workers(self, cluster: Cluster) -> None:
        """Stages routed with ``executor=`` run in the workers and read their dependencies' outputs."""
        graph = (
            Pipeline(self.name)
            .with_stage("source", stages.source, T, executor=cluster.executor)
            .with_stage("plus", stages.plus_one, T, ("source",), executor=cluster.executor)
            .build()
        )
        result = await asyncio.wait_for(graph.run(), BOUND)
        assert (result["source"].data["n"], result["plus"].data["n"]) == (41, 42)
        pids = {result["source"].data["pid"], result["plus"].data["pid"]}
        assert os.getpid() not in pids
        assert all(cluster.in_worker(pid) for pid in pids)

    async def test_the_graph_default_carries_the_stage_context(self, cluster: Cluster) -> None:
        """``build(executor=...)`` sends the stage, its config, the snapshot and the run identity across;
        not the run's ``ctx.data`` nor the run itself."""
        graph = (
            Pipeline(self.name)
            .with_stage("report", stages.report, T, config={"dir": "unused", "limit": 3})
            .build(executor=cluster.executor)
        )
        assert graph.stage("report").executor is cluster.executor
        result = await asyncio.wait_for(graph.run(input_text="hello", data={"token": "t"}), BOUND)
        data = dict(result["report"].data)
        assert cluster.in_worker(data.pop("pid"))
        assert data == {
            "run_id": str(result.run_id),
            "stage": "report",
            "attempt": 1,
            "text": "hello",
            "config": {"dir": "unused", "limit": 3},
            "stop_requested": False,
            "run_data": {},
            "in_run": False,
        }
        report = result["report"]
        assert report.status is StageStatus.OK
        assert 0.0 < report.dispatch <= report.ended_at - report.started_at
        assert report.run_time == report.ended_at - report.started_at - report.dispatch

    async def test_events_emitted_in_a_worker_reach_the_run_sink(self, cluster: Cluster) -> None:
        """An event a stage emits in a worker arrives in the run's sink, in order, with the run id."""
        sink = InMemoryEventSink()
        graph = (
            Pipeline(self.name).with_stage("emit", stages.emit_progress, T).build(executor=cluster.executor)
        )
        result = await asyncio.wait_for(graph.run(event_sink=sink), BOUND)
        assert [e.type for e in sink.events] == [
            "pipeline.created",
            "pipeline.started",
            "stage.emit.started",
            "custom.progress",
            "stage.emit.completed",
            "pipeline.completed",
        ]
        progress = sink.events[3].data
        run_id = str(result.run_id)
        assert (progress["run_id"], progress["pipeline_run_id"]) == (run_id, run_id)
        assert (progress["pipeline"], progress["stage"], progress["done"]) == (self.name, "emit", 3)
        assert cluster.in_worker(progress["pid"])

    async def test_an_error_keeps_its_type_and_message(self, cluster: Cluster) -> None:
        """An exception raised in a worker fails its stage as itself: same type, same message."""
        graph = (
            Pipeline(self.name)
            .with_stage("lookup", stages.raise_stage_broke, T)
            .build(executor=cluster.executor)
        )
        caught = await run_fails(asyncio.wait_for(graph.run(input_text="k1"), BOUND))
        error = caught.failures["lookup"]
        assert (type(error), str(error)) == (stages.StageBroke, "no row for 'k1'")
        assert str(caught) == "stage 'lookup' failed: StageBroke: no row for 'k1'"

    async def test_an_unpicklable_exception_comes_back_as_a_remote_error(self, cluster: Cluster) -> None:
        """A stage raising an exception that cannot be pickled fails with ``RemoteStageError`` naming the
        exception's type and message: stageflow pickles the reply itself, so the cluster never sees the
        exception."""
        graph = (
            Pipeline(self.name).with_stage("index", stages.raise_locked, T).build(executor=cluster.executor)
        )
        caught = await run_fails(asyncio.wait_for(graph.run(), BOUND))
        error = caught.failures["index"]
        assert isinstance(error, RemoteStageError)
        assert (error.type_name, error.message) == (
            "tests._offload_stages.UnpicklableError",
            "the index was locked",
        )
        assert str(caught) == (
            "stage 'index' failed: RemoteStageError: tests._offload_stages.UnpicklableError: "
            "the index was locked"
        )
        assert "raise UnpicklableError" in error.remote_traceback

    async def test_an_unpicklable_output_names_its_key(self, cluster: Cluster) -> None:
        """An output value that cannot be pickled back fails its stage with an error naming the key."""
        graph = (
            Pipeline(self.name).with_stage("open", stages.returns_lock, T).build(executor=cluster.executor)
        )
        caught = await run_fails(asyncio.wait_for(graph.run(), BOUND))
        error = caught.failures["open"]
        assert isinstance(error, UnpicklableValueError)
        assert (error.stage, error.what, error.key) == ("open", "output", "'lock'")
        assert str(error) == (
            "stage 'open' runs in another process, but its output key 'lock' cannot be pickled "
            "(TypeError: cannot pickle '_thread.lock' object); pass values that pickle between such stages "
            "(str, bytes, numbers, lists, dicts, dataclasses), or run the stage in a thread"
        )
