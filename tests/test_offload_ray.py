"""Sync stages on a real local Ray through ``stageflow.adapters.ray.RayExecutor``; nothing is mocked.

Ray starts once for the module (``ray.init(num_cpus=2, include_dashboard=False)``); its workers import the
stages of ``tests/_cluster_stages.py`` from this checkout (``PYTHONPATH`` in the job's runtime environment).
Stages and tests coordinate through files, never through sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from stageflow import (
    InvalidExecutorError,
    Pipeline,
    StageStatus,
    UnpicklableStageError,
)
from stageflow.adapters.ray import RayExecutor, _RayFuture

from . import _cluster_cases as cases
from . import _cluster_stages as stages
from ._stages import T
from ._support import MUST_PICKLE, exact, run_fails

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'stageflow-core[ray]'")

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_ENV = {"env_vars": {"PYTHONPATH": str(ROOT)}}
HIDE_RAY = "import sys; sys.modules['ray'] = None\n"


class RecordingRayExecutor(RayExecutor):
    """A ``RayExecutor`` that remembers the futures stageflow asked it to terminate."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.terminated: list[Future[Any]] = []

    def terminate(self, future: Future[Any]) -> bool:
        self.terminated.append(future)
        return super().terminate(future)


@pytest.fixture(name="ray_executor", scope="module")
def _ray_executor() -> Iterator[RecordingRayExecutor]:
    """A local Ray with two CPUs for the module, started by the executor (as ``ray.init(num_cpus=2,
    include_dashboard=False)`` would, on 127.0.0.1), and stopped by its ``shutdown()``."""
    assert not ray.is_initialized()
    try:
        executor = RecordingRayExecutor(init_options={"num_cpus": 2, "runtime_env": RUNTIME_ENV})
    except Exception as exc:
        pytest.skip(f"Ray could not start here: ray.init() raised {type(exc).__name__}: {exc}")
    try:
        yield executor
    finally:
        executor.shutdown()
        assert not ray.is_initialized()


def _descendants() -> set[int]:
    import psutil  # type: ignore[import-untyped]

    return {process.pid for process in psutil.Process().children(recursive=True)}


class TestRayExecutor:
    def test_the_local_ray_listens_on_loopback_only(self, ray_executor: RayExecutor) -> None:
        """Every server of the Ray the executor started (GCS, raylet, workers) listens on 127.0.0.1 only."""
        import psutil

        ray_executor.submit(os.getpid).result(timeout=cases.BOUND)  # a worker is up
        names: set[str] = set()
        listening: set[str] = set()
        for process in psutil.Process().children(recursive=True):
            try:
                name, command = process.name(), process.cmdline()
                if name in {"gcs_server", "raylet"} or (command and command[0].startswith("ray::")):
                    names.add(name if name in {"gcs_server", "raylet"} else "worker")
                    listening |= {
                        conn.laddr.ip
                        for conn in process.net_connections(kind="inet")
                        if conn.status == psutil.CONN_LISTEN
                    }
            except psutil.NoSuchProcess:  # ended while we looked (a short-lived helper)
                continue
        assert names >= {"gcs_server", "raylet", "worker"}
        assert listening
        assert listening <= {"127.0.0.1", "::ffff:127.0.0.1"}
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")

    def test_submit_runs_the_call_as_a_ray_task(self, ray_executor: RayExecutor) -> None:
        """``submit(fn, *args, **kwargs)`` runs ``fn`` in a Ray worker and returns a concurrent future."""
        future = ray_executor.submit(divmod, 17, 5)
        assert isinstance(future, Future)
        assert future.result(timeout=cases.BOUND) == (3, 2)
        assert ray_executor.submit(int, "ff", base=16).result(timeout=cases.BOUND) == 255
        pid = ray_executor.submit(os.getpid).result(timeout=cases.BOUND)
        assert pid != os.getpid()
        assert pid in _descendants()

    def test_a_raised_exception_comes_back_as_rays_task_error(self, ray_executor: RayExecutor) -> None:
        """An exception keeps its type (Ray's ``RayTaskError`` subclasses it) and its message."""
        error = ray_executor.submit(int, "x").exception(timeout=cases.BOUND)
        assert isinstance(error, ray.exceptions.RayTaskError)
        assert isinstance(error, ValueError)
        assert "ValueError: invalid literal for int() with base 10: 'x'" in str(error)

    def test_an_unpicklable_exception_is_reported_by_ray(self, ray_executor: RayExecutor) -> None:
        """Called directly, a task raising an exception that cannot be pickled ends with Ray's own error
        naming the exception and why (stageflow's stages never get there: see ``TestErrors``)."""
        error = ray_executor.submit(stages.raise_locked, None).exception(timeout=cases.BOUND)
        assert isinstance(error, ray.exceptions.RayTaskError)
        assert not isinstance(error, stages.UnpicklableError)
        assert type(error.cause) is ray.exceptions.RayError
        assert str(error.cause).startswith(
            "Exception tests._offload_stages.UnpicklableError isn't serializable: "
            "cannot pickle '_thread.lock' object.\nOriginal exception details:\n"
        )

    def test_a_shut_down_executor_refuses_work(self, ray_executor: RayExecutor) -> None:
        """After ``shutdown()`` an executor refuses new calls, and ``with_stage`` refuses it."""
        executor = RayExecutor()
        executor.shutdown()
        executor.shutdown()  # a second call does nothing
        assert ray.is_initialized()  # a Ray the executor found is left running
        with pytest.raises(RuntimeError, match="^cannot schedule new futures after shutdown$"):
            executor.submit(os.getpid)
        with pytest.raises(InvalidExecutorError) as caught:
            Pipeline("ray").with_stage("source", stages.source, T, executor=executor)
        assert str(caught.value) == (
            "stage 'source' has executor=RayExecutor(num_cpus=1, max_retries=0, shut down): it was shut "
            "down and accepts no work; pass a running executor"
        )

    def test_terminate_ignores_other_futures(self, ray_executor: RayExecutor) -> None:
        """``terminate`` answers ``False`` for a future that is not a Ray task's."""
        assert ray_executor.terminate(Future()) is False

    def test_an_address_while_connected_is_refused(self, ray_executor: RayExecutor) -> None:
        """Asking for a cluster while this process is connected to Ray says how to proceed."""
        with pytest.raises(RuntimeError) as caught:
            RayExecutor(address="auto")
        assert str(caught.value) == (
            "RayExecutor(address='auto'): this process is already connected to Ray; pass address=None to "
            "use that connection, or call ray.shutdown() first"
        )

    @pytest.mark.parametrize(
        ("keywords", "error", "message"),
        [
            (
                {"address": ""},
                TypeError,
                "RayExecutor(address='') is invalid; pass a Ray address such as 'auto', or None",
            ),
            (
                {"num_cpus": -1},
                ValueError,
                "RayExecutor(num_cpus=-1) is invalid; pass the CPUs a task reserves, such as 1",
            ),
            (
                {"num_cpus": True},
                ValueError,
                "RayExecutor(num_cpus=True) is invalid; pass the CPUs a task reserves, such as 1",
            ),
            (
                {"max_retries": 1.5},
                ValueError,
                "RayExecutor(max_retries=1.5) is invalid; pass an int >= 0, such as 0",
            ),
            (
                {"init_options": ["num_cpus"]},
                TypeError,
                "RayExecutor(init_options=['num_cpus']) is invalid; pass a mapping of ray.init() keywords, "
                "such as {'num_cpus': 4}",
            ),
        ],
        ids=["empty-address", "negative-cpus", "bool-cpus", "float-retries", "list-options"],
    )
    def test_bad_arguments_are_refused(
        self, keywords: dict[str, Any], error: type[Exception], message: str
    ) -> None:
        """Each bad argument is refused before Ray is touched, naming the value and the fix."""
        with pytest.raises(error, match=exact(message)):
            RayExecutor(**keywords)


@pytest.mark.usefixtures("ray_executor")  # ray.cancel() would start a Ray of its own
class TestRayFuture:
    """How a task's future takes the outcome of Ray's own future of it (``_settle`` runs on Ray's thread)."""

    def _settled(self, outcome: Future[Any]) -> Future[Any]:
        future = _RayFuture(None, ray)
        future._settle(outcome)
        return future

    def test_a_result_is_copied(self) -> None:
        """The task's value becomes the future's result."""
        outcome: Future[Any] = Future()
        outcome.set_result(5)
        assert self._settled(outcome).result(timeout=0) == 5

    def test_an_exception_is_copied(self) -> None:
        """The task's exception becomes the future's, the same object."""
        outcome: Future[Any] = Future()
        error = ValueError("bad")
        outcome.set_exception(error)
        assert self._settled(outcome).exception(timeout=0) is error

    @pytest.mark.parametrize("how", ["task-cancelled-error", "cancelled-future"])
    def test_a_cancelled_task_cancels_the_future(self, how: str) -> None:
        """Ray's ``TaskCancelledError``, or a cancelled future, ends the future cancelled."""
        outcome: Future[Any] = Future()
        if how == "task-cancelled-error":
            outcome.set_exception(ray.exceptions.TaskCancelledError())
        else:
            outcome.cancel()
        future = self._settled(outcome)
        assert future.cancelled()
        assert future.cancel() is True  # cancelling it again changes nothing

    def test_an_outcome_after_the_future_failed_is_ignored(self) -> None:
        """A result arriving after the future ended (Ray was shut down first) leaves it as it was."""
        future = _RayFuture(None, ray)
        gone = RuntimeError("gone")
        future._end(gone)
        outcome: Future[Any] = Future()
        outcome.set_result(5)
        future._settle(outcome)
        future._end(RuntimeError("again"))
        assert future.exception(timeout=0) is gone
        assert future.cancel() is False

    def test_a_cancel_ray_refuses_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        """``cancel()`` logs what ``ray.cancel`` raised and answers ``False``: the task may still run."""
        future = _RayFuture("not a reference", ray)
        with caplog.at_level("ERROR", logger="stageflow"):
            assert future.cancel() is False
        [record] = caplog.records
        assert record.getMessage().startswith("stageflow: ray.cancel('not a reference') failed: TypeError(")

    def test_terminate_of_an_ended_task_does_nothing(self, ray_executor: RayExecutor) -> None:
        """``terminate`` of a future whose task ended answers ``True`` without asking Ray."""
        future = _RayFuture(None, ray)
        future._end(RuntimeError("ended"))
        assert ray_executor.terminate(future) is True


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in a process of its own: its exit status and output."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=cases.BOUND)


class TestWithoutRay:
    def test_importing_the_adapter_does_not_import_ray(self) -> None:
        """``import stageflow.adapters.ray`` (and ``stageflow.RayExecutor``) leaves ray unimported."""
        code = (
            "import sys, stageflow, stageflow.adapters.ray\n"
            "stageflow.RayExecutor\n"
            "print('ray' in sys.modules)\n"
        )
        proc = _python(code)
        assert (proc.returncode, proc.stdout) == (0, "False\n"), proc.stderr

    def test_constructing_without_ray_names_the_extra(self) -> None:
        """Without ray installed, ``RayExecutor()`` raises an ImportError naming the install command."""
        code = HIDE_RAY + (
            "from stageflow.adapters.ray import RayExecutor\n"
            "try:\n    RayExecutor()\nexcept ImportError as exc:\n    print(exc)\n"
        )
        proc = _python(code)
        assert (proc.returncode, proc.stdout) == (
            0,
            "RayExecutor needs ray, which is not installed: pip install 'stageflow-core[ray]'\n",
        ), proc.stderr


class TestAcrossTheCluster(cases.ClusterCases):
    name = "ray"


@pytest.fixture(name="cluster")
def _cluster_under_test(ray_executor: RayExecutor) -> cases.Cluster:
    """The Ray executor; a pid is a worker's when it is a process Ray started under this one (never this
    one)."""
    return cases.Cluster(ray_executor, lambda pid: pid != os.getpid() and pid in _descendants())


class TestErrors:
    def test_a_stage_holding_a_lock_is_refused_at_build(self, ray_executor: RayExecutor) -> None:
        """A stage routed to Ray must pickle: one holding a lock is refused at ``build()``, naming it."""
        pipeline = Pipeline("ray").with_stage("embed", stages.Holder, T, executor=ray_executor)
        with pytest.raises(UnpicklableStageError) as caught:
            pipeline.build()
        assert str(caught.value) == (
            "stage 'embed' runs on RecordingRayExecutor, in another process, but attribute 'lock' (lock) "
            "cannot be pickled (TypeError: cannot pickle '_thread.lock' object); " + MUST_PICKLE
        )


class TestCancellation:
    async def test_a_failing_sibling_stops_the_ray_task(
        self, ray_executor: RecordingRayExecutor, tmp_path: Path
    ) -> None:
        """Fail-fast cancels the Ray task (``ray.cancel``: its Python code is interrupted) within the grace:
        work "stopped", nothing forced, the worker process lives on."""
        graph = cases.slow_beside_boom("ray", tmp_path, stages.wait_for_release, ray_executor).build(
            cancel_grace=60.0
        )
        before = len(ray_executor.terminated)
        await cases.fail_fast_stops(graph)
        assert len(ray_executor.terminated) == before
        assert int((tmp_path / "started").read_text()) in _descendants()
        assert not (tmp_path / "finished").exists()

    async def test_a_queued_task_is_dropped(self, ray_executor: RayExecutor, tmp_path: Path) -> None:
        """A task still queued in Ray when its stage is cancelled is dropped (it never runs): "stopped"."""
        config = {"dir": str(tmp_path)}
        whole_node = RayExecutor(num_cpus=2)  # one task at a time on the module's two CPUs
        graph = (
            Pipeline("ray")
            .with_stage("running", stages.wait_for_release, T, config=config, executor=whole_node)
            .with_stage("gate", stages.gate_on_started, T, config=config)
            # its task submits before "failing" runs: it comes first among the gate's children
            .with_stage("queued", stages.touch_ran, T, ("gate",), config=config, executor=whole_node)
            .with_stage("failing", stages.fail_now, T, ("gate",))
            .build(cancel_grace=60.0)
        )
        try:
            caught = await run_fails(asyncio.wait_for(graph.run(), cases.BOUND))
        finally:
            whole_node.shutdown()
        results = caught.results
        assert [(results[n].status, results[n].work) for n in ("running", "queued")] == [
            (StageStatus.CANCEL, "stopped"),
            (StageStatus.CANCEL, "stopped"),
        ]
        # both ended before the run did: a task that finished at last would have written its file
        assert sorted(os.listdir(tmp_path)) == ["started"]

    async def test_work_outliving_the_grace_is_terminated(
        self, ray_executor: RecordingRayExecutor, tmp_path: Path
    ) -> None:
        """Work that the cancel cannot reach (blocked outside Python) is force-cancelled once the grace ran
        out: ``terminate`` kills its worker process and the stage reports its work "stopped"."""
        graph = cases.slow_beside_boom("ray", tmp_path, stages.block_outside_python, ray_executor).build(
            cancel_grace=0.5
        )
        before = len(ray_executor.terminated)
        caught = await run_fails(asyncio.wait_for(graph.run(), cases.BOUND))
        slow = caught.results["slow"]
        assert (slow.status, slow.work) == (StageStatus.CANCEL, "stopped")
        assert len(ray_executor.terminated) == before + 1
        worker = int((tmp_path / "started").read_text())
        await asyncio.wait_for(asyncio.to_thread(_wait_gone, worker), cases.BOUND)

    async def test_a_timeout_stops_the_ray_task(self, ray_executor: RayExecutor, tmp_path: Path) -> None:
        """A ``TimeoutInterceptor`` timeout fails the Ray stage (``StageTimeoutError``), work "stopped"."""
        await cases.a_timeout_stops_slow("ray", tmp_path, executor=ray_executor, cancel_grace=60.0)


def _wait_gone(pid: int) -> None:
    """Return once process ``pid`` is gone."""
    import psutil

    try:
        psutil.Process(pid).wait()
    except psutil.NoSuchProcess:
        pass


class TestDyingCluster:
    async def test_a_killed_worker_fails_the_stage_and_keeps_finished_results(
        self, ray_executor: RayExecutor, tmp_path: Path
    ) -> None:
        """A Ray worker killed under a running stage fails that stage with Ray's ``WorkerCrashedError``
        (``max_retries=0``: Ray does not rerun it); the run ends and finished stages keep their results."""
        run = await cases.start_slow_run("ray", ray_executor, tmp_path)
        os.kill(int((tmp_path / "started").read_text()), signal.SIGKILL)
        caught = await run_fails(asyncio.wait_for(run, cases.BOUND))
        assert isinstance(caught.failures["slow"], ray.exceptions.WorkerCrashedError)
        assert str(caught) == (
            "stage 'slow' failed: WorkerCrashedError: The worker died unexpectedly while executing this "
            "task. Check python-core-worker-*.log files for more information."
        )
        results = caught.results
        assert (results["source"].status, results["source"].data["n"]) == (StageStatus.OK, 41)
        assert results["slow"].status is StageStatus.FAIL

    def test_ray_shut_down_under_a_running_stage_fails_it(self, tmp_path: Path) -> None:
        """``ray.shutdown()`` while a stage runs fails the stage with an error saying so (Ray itself would
        never end the task's future); finished stages keep their results; the executor then refuses work
        rather than start a new Ray. In a process of its own, with a Ray of its own."""
        proc = subprocess.run(
            [sys.executable, "-c", _SHUTDOWN_SCRIPT, str(tmp_path), str(ROOT)],
            capture_output=True,
            text=True,
            timeout=cases.BOUND,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == [
            "ok 41",
            "fail RuntimeError: Ray was shut down in this process (ray.shutdown()) while the task was "
            "pending, so its outcome will never arrive; shut the RayExecutor down after the runs that use it",
            "Ray was shut down in this process (ray.shutdown()), so this RayExecutor has no cluster; make a "
            "new RayExecutor",
            "owned ray stopped: True",
        ]


_SHUTDOWN_SCRIPT = """
import asyncio, sys
from pathlib import Path
import ray
from stageflow import Pipeline, PipelineFailedError, StageKind
from stageflow.adapters.ray import RayExecutor, _RayFuture
from tests import _cluster_stages as stages

where, root = Path(sys.argv[1]), sys.argv[2]

async def main():
    executor = RayExecutor(init_options={"num_cpus": 1, "runtime_env": {"env_vars": {"PYTHONPATH": root}}})
    graph = (
        Pipeline("ray")
        .with_stage("source", stages.source, StageKind.TRANSFORM)
        .with_stage("slow", stages.wait_for_release, StageKind.TRANSFORM, ("source",),
                    config={"dir": str(where)})
        .build(executor=executor)
    )
    run = asyncio.create_task(graph.run())
    await asyncio.wait_for(stages.file_exists(where / "started"), 60)
    ray.shutdown()
    try:
        await asyncio.wait_for(run, 60)
    except PipelineFailedError as exc:
        source, slow = exc.results["source"], exc.results["slow"]
        print(source.status.value, source.data["n"])
        print(slow.status.value, f"{type(slow.error).__name__}: {slow.error}")
    try:
        executor.submit(sum, ())
    except RuntimeError as exc:
        print(exc)
    executor.shutdown()
    print("owned ray stopped:", not ray.is_initialized())

asyncio.run(main())
"""
