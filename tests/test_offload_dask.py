"""Sync stages on a real Dask cluster: worker processes on 127.0.0.1, reached through ``get_executor()``.

Nothing is mocked: a ``distributed.LocalCluster`` with two single-threaded worker processes runs the stages of
``tests/_cluster_stages.py``; the stages and the test coordinate through files, never through sleeps.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path

import pytest

from stageflow import (
    ExecutorError,
    InMemoryEventSink,
    InvalidExecutorError,
    Pipeline,
    PipelineFailedError,
    RemoteStageError,
    StageKind,
    StageStatus,
    StageTimeoutError,
    TimeoutInterceptor,
    UnpicklableStageError,
    UnpicklableValueError,
)

from . import _cluster_stages as stages
from ._support import local_dask_cluster

pytest.importorskip("distributed", reason="needs the dask extra: pip install 'stageflow-core[dask]'")

import dask
from distributed import Client, LocalCluster

T = StageKind.TRANSFORM
BOUND = 120.0
"""Seconds after which a run that has not ended counts as hung (never reached when all is well)."""


def _cluster() -> LocalCluster:
    """Two single-threaded worker processes on 127.0.0.1, no dashboard."""
    return local_dask_cluster(2)


def _connect(cluster: LocalCluster) -> Client:
    return Client(cluster)  # type: ignore[no-untyped-call]


def _executor(client: Client) -> Executor:
    executor: Executor = client.get_executor()  # type: ignore[no-untyped-call]
    return executor


@pytest.fixture(name="client", scope="module")
def _client() -> Iterator[Client]:
    """A client of a two-worker local cluster, shared by the module and closed after it."""
    with _cluster() as cluster, _connect(cluster) as client:
        yield client


@pytest.fixture(name="dask_executor")
def _dask_executor(client: Client) -> Executor:
    return _executor(client)


@pytest.fixture(name="worker_pids", scope="module")
def _worker_pids(client: Client) -> set[int]:
    pids: dict[str, int] = client.run(os.getpid)
    return set(pids.values())


class TestRouting:
    async def test_outputs_flow_to_dependents_across_workers(
        self, dask_executor: Executor, worker_pids: set[int]
    ) -> None:
        """Stages routed with ``executor=`` run in the workers and read their dependencies' outputs."""
        graph = (
            Pipeline("dask")
            .with_stage("source", stages.source, T, executor=dask_executor)
            .with_stage("plus", stages.plus_one, T, ("source",), executor=dask_executor)
            .build()
        )
        result = await asyncio.wait_for(graph.run(), BOUND)
        assert (result["source"].data["n"], result["plus"].data["n"]) == (41, 42)
        pids = {result["source"].data["pid"], result["plus"].data["pid"]}
        assert pids <= worker_pids
        assert os.getpid() not in pids

    async def test_the_graph_default_carries_the_stage_context(
        self, dask_executor: Executor, worker_pids: set[int]
    ) -> None:
        """``build(executor=...)`` sends the stage, its config, the snapshot and the run identity across;
        not the run's ``ctx.data`` nor the run itself."""
        graph = (
            Pipeline("dask")
            .with_stage("report", stages.report, T, config={"dir": "unused", "limit": 3})
            .build(executor=dask_executor)
        )
        assert graph.stage("report").executor is dask_executor
        result = await asyncio.wait_for(graph.run(input_text="hello", data={"token": "t"}), BOUND)
        data = dict(result["report"].data)
        assert data.pop("pid") in worker_pids
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
        self, dask_executor: Executor, worker_pids: set[int]
    ) -> None:
        """An event a stage emits in a worker arrives in the run's sink, in order, with the run id."""
        sink = InMemoryEventSink()
        graph = Pipeline("dask").with_stage("emit", stages.emit_progress, T).build(executor=dask_executor)
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
        assert (progress["pipeline"], progress["stage"], progress["done"]) == ("dask", "emit", 3)
        assert progress["pid"] in worker_pids


class TestCluster:
    def test_every_cluster_process_listens_on_loopback_only(self, client: Client) -> None:
        """The scheduler, the nannies and the workers accept connections on 127.0.0.1 only."""
        import psutil  # type: ignore[import-untyped]

        cluster = client.cluster
        assert cluster is not None
        scheduler = cluster.scheduler
        assert scheduler is not None
        worker_pids: dict[str, int] = client.run(os.getpid)
        workers = [psutil.Process(pid) for pid in worker_pids.values()]
        nannies = [worker.parent() for worker in workers]
        listening = {
            (conn.laddr.ip, conn.laddr.port)
            for process in [*workers, *nannies]
            for conn in process.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        }
        addresses = set(client.scheduler_info()["workers"])
        assert len(addresses) == 2
        assert {ip for ip, _ in listening} == {"127.0.0.1"}
        assert {f"tcp://127.0.0.1:{port}" for _, port in listening} >= addresses
        assert scheduler.address.startswith("tcp://127.0.0.1:")
        assert {server.getsockname()[0] for server in scheduler.http_server._sockets.values()} == {
            "127.0.0.1"
        }


class TestErrors:
    async def test_an_error_keeps_its_type_and_message(self, dask_executor: Executor) -> None:
        """An exception raised in a worker fails its stage as itself: same type, same message."""
        graph = (
            Pipeline("dask").with_stage("lookup", stages.raise_stage_broke, T).build(executor=dask_executor)
        )
        with pytest.raises(PipelineFailedError) as caught:
            await asyncio.wait_for(graph.run(input_text="k1"), BOUND)
        error = caught.value.failures["lookup"]
        assert (type(error), str(error)) == (stages.StageBroke, "no row for 'k1'")
        assert str(caught.value) == "stage 'lookup' failed: StageBroke: no row for 'k1'"

    async def test_an_unpicklable_exception_comes_back_as_a_remote_error(
        self, dask_executor: Executor
    ) -> None:
        """An exception that cannot be pickled back fails its stage with ``RemoteStageError``, named."""
        graph = Pipeline("dask").with_stage("index", stages.raise_locked, T).build(executor=dask_executor)
        with pytest.raises(PipelineFailedError) as caught:
            await asyncio.wait_for(graph.run(), BOUND)
        error = caught.value.failures["index"]
        assert isinstance(error, RemoteStageError)
        assert (error.type_name, error.message) == (
            "tests._cluster_stages.LockedError",
            "the index was locked",
        )
        assert "raise LockedError" in error.remote_traceback

    async def test_an_unpicklable_output_names_its_key(self, dask_executor: Executor) -> None:
        """An output value that cannot be pickled back fails its stage with an error naming the key."""
        graph = Pipeline("dask").with_stage("open", stages.return_lock, T).build(executor=dask_executor)
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

    def test_a_lambda_is_refused_at_build(self, dask_executor: Executor) -> None:
        """A stage routed to Dask must pickle: a lambda is refused at ``build()``, naming it and the fix."""
        pipeline = Pipeline("dask").with_stage("embed", lambda ctx: stages.source(ctx), T)
        with pytest.raises(UnpicklableStageError) as caught:
            pipeline.build(executor=dask_executor)
        assert (caught.value.stage, caught.value.part) == ("embed", "its function (a lambda)")
        assert str(caught.value) == (
            "stage 'embed' runs on ClientExecutor, in another process, but its function (a lambda) cannot be "
            "pickled (AttributeError: Can't pickle local object "
            "'TestErrors.test_a_lambda_is_refused_at_build.<locals>.<lambda>'); a stage sent to another "
            "process must pickle: use a module-level function or class, and keep no lambdas, locks or open "
            "clients in its attributes or config (open them inside the stage, or run it in a thread)"
        )

    def test_a_shut_down_executor_is_refused_at_with_stage(self, client: Client) -> None:
        """A Dask executor that was shut down is refused where it is given, naming the fix."""
        executor = _executor(client)
        executor.shutdown(wait=False)
        with pytest.raises(InvalidExecutorError) as caught:
            Pipeline("dask").with_stage("source", stages.source, T, executor=executor)
        assert str(caught.value) == (
            f"stage 'source' has executor={executor!r}: it was shut down and accepts no work; "
            "pass a running executor"
        )


def _slow_graph(tmp_path: Path, executor: Executor, *, fail_fast: bool) -> Pipeline:
    pipeline = Pipeline("dask").with_stage(
        "slow", stages.wait_for_release, T, config={"dir": str(tmp_path)}, executor=executor
    )
    if fail_fast:
        pipeline = pipeline.with_stage("boom", stages.fail_once_started, T, config={"dir": str(tmp_path)})
    return pipeline


class TestCancellation:
    """Dask's executor future never reports "running", so ``future.cancel()`` always succeeds: the stage
    reports its work stopped at once, and Dask releases the task. A task already running keeps its worker
    thread until it returns; its result is discarded."""

    async def test_a_failing_sibling_stops_the_dask_stage(
        self, dask_executor: Executor, tmp_path: Path
    ) -> None:
        """Fail-fast cancels the Dask stage: cancelled, work "stopped", and the event says so."""
        sink = InMemoryEventSink()
        graph = _slow_graph(tmp_path, dask_executor, fail_fast=True).build()
        try:
            with pytest.raises(PipelineFailedError) as caught:
                await asyncio.wait_for(graph.run(event_sink=sink), BOUND)
            slow = caught.value.results["slow"]
            assert (slow.status, slow.work, slow.error) == (StageStatus.CANCEL, "stopped", None)
            assert str(caught.value) == "stage 'boom' failed: RuntimeError: sibling failed"
            [cancelled] = [e for e in sink.events if e.type == "stage.slow.cancelled"]
            assert cancelled.data["work"] == "stopped"
        finally:
            (tmp_path / "release").touch()
        # the task that was already running goes on in its worker thread until it returns
        await asyncio.wait_for(stages.file_exists(tmp_path / "finished"), BOUND)

    async def test_a_timeout_stops_the_dask_stage(self, dask_executor: Executor, tmp_path: Path) -> None:
        """A ``TimeoutInterceptor`` timeout fails the Dask stage (``StageTimeoutError``), work "stopped"."""
        graph = _slow_graph(tmp_path, dask_executor, fail_fast=False).build(
            interceptors=[TimeoutInterceptor(default=None, per_stage={"slow": 0.2})]
        )
        try:
            with pytest.raises(PipelineFailedError) as caught:
                await asyncio.wait_for(graph.run(), BOUND)
            slow = caught.value.results["slow"]
            assert (slow.status, slow.work, type(slow.error)) == (
                StageStatus.FAIL,
                "stopped",
                StageTimeoutError,
            )
        finally:
            (tmp_path / "release").touch()
        await asyncio.wait_for(stages.file_exists(tmp_path / "finished"), BOUND)


class TestDyingCluster:
    """A cluster of its own per test: each one is killed."""

    async def test_a_killed_worker_fails_the_stage_and_keeps_finished_results(self, tmp_path: Path) -> None:
        """A worker killed under a running stage fails that stage with Dask's ``KilledWorker``; the run ends
        and the stage that had finished keeps its result (``allowed-failures: 0``: Dask does not rerun it)."""
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = _cluster()
        with cluster, _connect(cluster) as client:
            executor = _executor(client)
            graph = (
                Pipeline("dask")
                .with_stage("source", stages.source, T)
                .with_stage("slow", stages.wait_for_release, T, ("source",), config={"dir": str(tmp_path)})
                .build(executor=executor)
            )
            run = asyncio.create_task(graph.run())
            await asyncio.wait_for(stages.file_exists(tmp_path / "started"), BOUND)
            os.kill(int((tmp_path / "started").read_text()), signal.SIGKILL)
            with pytest.raises(PipelineFailedError) as caught:
                await asyncio.wait_for(run, BOUND)
        error = caught.value.failures["slow"]
        assert type(error).__name__ == "KilledWorker"
        assert re.fullmatch(
            r"stage 'slow' failed: KilledWorker: Attempted to run task 'run_remote-[0-9a-f]+' on 1 different "
            r"workers, but all those workers died while running it\. .+",
            str(caught.value),
        )
        results = caught.value.results
        assert (results["source"].status, results["source"].data["n"]) == (StageStatus.OK, 41)
        assert (results["slow"].status, results["slow"].work) == (StageStatus.FAIL, None)

    async def test_a_closed_cluster_ends_the_run_and_keeps_finished_results(self, tmp_path: Path) -> None:
        """A cluster closed under a running stage fails that stage with ``ExecutorError`` (Dask cancels its
        future although the run did not), ends the run, and the stage that had finished keeps its result."""
        cluster = _cluster()
        with _connect(cluster) as client:
            executor = _executor(client)
            graph = (
                Pipeline("dask")
                .with_stage("source", stages.source, T)
                .with_stage("slow", stages.wait_for_release, T, ("source",), config={"dir": str(tmp_path)})
                .build(executor=executor)
            )
            run = asyncio.create_task(graph.run())
            await asyncio.wait_for(stages.file_exists(tmp_path / "started"), BOUND)
            await asyncio.to_thread(cluster.close)
            with pytest.raises(PipelineFailedError) as caught:
                await asyncio.wait_for(run, BOUND)
        error = caught.value.error
        assert isinstance(error, ExecutorError)
        assert str(error) == (
            "stage 'slow' lost its work on its executor ClientExecutor: RuntimeError: the executor "
            "cancelled the work, although the run did not cancel it (its cluster closed or lost the task); "
            "check that the executor (its cluster) stays up for the whole run"
        )
        results = caught.value.results
        assert (results["source"].status, results["source"].data["n"]) == (StageStatus.OK, 41)
        assert (results["slow"].status, results["slow"].work) == (StageStatus.FAIL, None)
