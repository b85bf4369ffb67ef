"""Tests every cluster executor passes, whichever cluster runs the stages (Dask's, Ray's).

A test module subclasses ``ClusterCases`` as a ``Test…`` class, sets ``name`` (the pipelines' name) and
provides two fixtures: ``cluster_executor``, the executor under test, and ``in_worker``, which says whether
a process id is one of the cluster's workers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import ClassVar

import pytest

from stageflow import (
    InMemoryEventSink,
    Pipeline,
    PipelineFailedError,
    RemoteStageError,
    RunResult,
    StageKind,
    StageStatus,
    UnpicklableValueError,
)

from . import _cluster_stages as stages

__all__ = ("BOUND", "ClusterCases", "start_slow_run")

T = StageKind.TRANSFORM
BOUND = 120.0
"""Seconds after which a run that has not ended counts as hung (never reached when all is well)."""


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


class ClusterCases:
    name: ClassVar[str]
    """The name of the pipelines the tests build (it shows in the events)."""

    async def test_outputs_flow_to_dependents_across_workers(
        self, cluster_executor: Executor, in_worker: Callable[[int], bool]
    ) -> None:
        """Stages routed with ``executor=`` run in the workers and read their dependencies' outputs."""
        graph = (
            Pipeline(self.name)
            .with_stage("source", stages.source, T, executor=cluster_executor)
            .with_stage("plus", stages.plus_one, T, ("source",), executor=cluster_executor)
            .build()
        )
        result = await asyncio.wait_for(graph.run(), BOUND)
        assert (result["source"].data["n"], result["plus"].data["n"]) == (41, 42)
        pids = {result["source"].data["pid"], result["plus"].data["pid"]}
        assert os.getpid() not in pids
        assert all(in_worker(pid) for pid in pids)

    async def test_the_graph_default_carries_the_stage_context(
        self, cluster_executor: Executor, in_worker: Callable[[int], bool]
    ) -> None:
        """``build(executor=...)`` sends the stage, its config, the snapshot and the run identity across;
        not the run's ``ctx.data`` nor the run itself."""
        graph = (
            Pipeline(self.name)
            .with_stage("report", stages.report, T, config={"dir": "unused", "limit": 3})
            .build(executor=cluster_executor)
        )
        assert graph.stage("report").executor is cluster_executor
        result = await asyncio.wait_for(graph.run(input_text="hello", data={"token": "t"}), BOUND)
        data = dict(result["report"].data)
        assert in_worker(data.pop("pid"))
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

    async def test_events_emitted_in_a_worker_reach_the_run_sink(
        self, cluster_executor: Executor, in_worker: Callable[[int], bool]
    ) -> None:
        """An event a stage emits in a worker arrives in the run's sink, in order, with the run id."""
        sink = InMemoryEventSink()
        graph = (
            Pipeline(self.name).with_stage("emit", stages.emit_progress, T).build(executor=cluster_executor)
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
        assert in_worker(progress["pid"])

    async def test_an_error_keeps_its_type_and_message(self, cluster_executor: Executor) -> None:
        """An exception raised in a worker fails its stage as itself: same type, same message."""
        graph = (
            Pipeline(self.name)
            .with_stage("lookup", stages.raise_stage_broke, T)
            .build(executor=cluster_executor)
        )
        with pytest.raises(PipelineFailedError) as caught:
            await asyncio.wait_for(graph.run(input_text="k1"), BOUND)
        error = caught.value.failures["lookup"]
        assert (type(error), str(error)) == (stages.StageBroke, "no row for 'k1'")
        assert str(caught.value) == "stage 'lookup' failed: StageBroke: no row for 'k1'"

    async def test_an_unpicklable_exception_comes_back_as_a_remote_error(
        self, cluster_executor: Executor
    ) -> None:
        """A stage raising an exception that cannot be pickled fails with ``RemoteStageError`` naming the
        exception's type and message: stageflow pickles the reply itself, so the cluster never sees the
        exception."""
        graph = (
            Pipeline(self.name).with_stage("index", stages.raise_locked, T).build(executor=cluster_executor)
        )
        with pytest.raises(PipelineFailedError) as caught:
            await asyncio.wait_for(graph.run(), BOUND)
        error = caught.value.failures["index"]
        assert isinstance(error, RemoteStageError)
        assert (error.type_name, error.message) == (
            "tests._cluster_stages.LockedError",
            "the index was locked",
        )
        assert str(caught.value) == (
            "stage 'index' failed: RemoteStageError: tests._cluster_stages.LockedError: the index was locked"
        )
        assert "raise LockedError" in error.remote_traceback

    async def test_an_unpicklable_output_names_its_key(self, cluster_executor: Executor) -> None:
        """An output value that cannot be pickled back fails its stage with an error naming the key."""
        graph = Pipeline(self.name).with_stage("open", stages.return_lock, T).build(executor=cluster_executor)
        with pytest.raises(PipelineFailedError) as caught:
            await asyncio.wait_for(graph.run(), BOUND)
        error = caught.value.failures["open"]
        assert isinstance(error, UnpicklableValueError)
        assert (error.stage, error.what, error.key) == ("open", "output", "'handle'")
        assert str(error) == (
            "stage 'open' runs in another process, but its output key 'handle' cannot be pickled "
            "(TypeError: cannot pickle '_thread.lock' object); pass values that pickle between such stages "
            "(str, bytes, numbers, lists, dicts, dataclasses), or run the stage in a thread"
        )
