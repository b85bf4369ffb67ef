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
    InvalidExecutorError,
    Pipeline,
    StageStatus,
    UnpicklableStageError,
)

from . import _cluster_cases as cases
from . import _cluster_stages as stages
from ._stages import T
from ._support import MUST_PICKLE, local_dask_cluster, run_fails

pytest.importorskip("distributed", reason="needs the dask extra: pip install 'stageflow-core[dask]'")

import dask
from distributed import Client, LocalCluster


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


class TestAcrossTheCluster(cases.ClusterCases):
    name = "dask"


@pytest.fixture(name="cluster")
def _cluster_under_test(dask_executor: Executor, worker_pids: set[int]) -> cases.Cluster:
    """The Dask executor; a pid is a worker's when it is one of the cluster's worker processes."""
    return cases.Cluster(dask_executor, worker_pids.__contains__)


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
    def test_a_lambda_is_refused_at_build(self, dask_executor: Executor) -> None:
        """A stage routed to Dask must pickle: a lambda is refused at ``build()``, naming it and the fix."""
        pipeline = Pipeline("dask").with_stage("embed", lambda ctx: stages.source(ctx), T)
        with pytest.raises(UnpicklableStageError) as caught:
            pipeline.build(executor=dask_executor)
        assert (caught.value.stage, caught.value.part) == ("embed", "its function (a lambda)")
        assert str(caught.value) == (
            "stage 'embed' runs on ClientExecutor, in another process, but its function (a lambda) cannot be "
            "pickled (AttributeError: Can't pickle local object "
            "'TestErrors.test_a_lambda_is_refused_at_build.<locals>.<lambda>'); " + MUST_PICKLE
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


class TestCancellation:
    """Dask's executor future never reports "running", so ``future.cancel()`` always succeeds: the stage
    reports its work stopped at once, and Dask releases the task. A task already running keeps its worker
    thread until it returns; its result is discarded."""

    async def test_a_failing_sibling_stops_the_dask_stage(
        self, dask_executor: Executor, tmp_path: Path
    ) -> None:
        """Fail-fast cancels the Dask stage: cancelled, work "stopped", and the event says so."""
        graph = cases.slow_beside_boom("dask", tmp_path, stages.wait_for_release, dask_executor).build()
        try:
            await cases.fail_fast_stops(graph)
        finally:
            (tmp_path / "release").touch()
        # the task that was already running goes on in its worker thread until it returns
        await asyncio.wait_for(stages.file_exists(tmp_path / "finished"), cases.BOUND)

    async def test_a_timeout_stops_the_dask_stage(self, dask_executor: Executor, tmp_path: Path) -> None:
        """A ``TimeoutInterceptor`` timeout fails the Dask stage (``StageTimeoutError``), work "stopped"."""
        try:
            await cases.a_timeout_stops_slow("dask", tmp_path, stage_executor=dask_executor)
        finally:
            (tmp_path / "release").touch()
        await asyncio.wait_for(stages.file_exists(tmp_path / "finished"), cases.BOUND)


class TestDyingCluster:
    """A cluster of its own per test: each one is killed."""

    async def test_a_killed_worker_fails_the_stage_and_keeps_finished_results(self, tmp_path: Path) -> None:
        """A worker killed under a running stage fails that stage with Dask's ``KilledWorker``; the run ends
        and the stage that had finished keeps its result (``allowed-failures: 0``: Dask does not rerun it)."""
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = _cluster()
        with cluster, _connect(cluster) as client:
            run = await cases.start_slow_run("dask", _executor(client), tmp_path)
            os.kill(int((tmp_path / "started").read_text()), signal.SIGKILL)
            caught = await run_fails(asyncio.wait_for(run, cases.BOUND))
        error = caught.failures["slow"]
        assert type(error).__name__ == "KilledWorker"
        assert re.fullmatch(
            r"stage 'slow' failed: KilledWorker: Attempted to run task 'run_remote-[0-9a-f]+' on 1 different "
            r"workers, but all those workers died while running it\. .+",
            str(caught),
        )
        results = caught.results
        assert (results["source"].status, results["source"].data["n"]) == (StageStatus.OK, 41)
        assert (results["slow"].status, results["slow"].work) == (StageStatus.FAIL, None)

    async def test_a_closed_cluster_ends_the_run_and_keeps_finished_results(self, tmp_path: Path) -> None:
        """A cluster closed under a running stage fails that stage with ``ExecutorError`` (Dask cancels its
        future although the run did not), ends the run, and the stage that had finished keeps its result."""
        cluster = _cluster()
        with _connect(cluster) as client:
            run = await cases.start_slow_run("dask", _executor(client), tmp_path)
            await asyncio.to_thread(cluster.close)
            caught = await run_fails(asyncio.wait_for(run, cases.BOUND))
        error = caught.error
        assert isinstance(error, ExecutorError)
        assert str(error) == (
            "stage 'slow' lost its work on its executor ClientExecutor: RuntimeError: the executor "
            "cancelled the work, although the run did not cancel it (its cluster closed or lost the task); "
            "check that the executor (its cluster) stays up for the whole run"
        )
        results = caught.results
        assert (results["source"].status, results["source"].data["n"]) == (StageStatus.OK, 41)
        assert (results["slow"].status, results["slow"].work) == (StageStatus.FAIL, None)
