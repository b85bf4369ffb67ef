"""The worker side of a hop to another process, run in this process: exactly what ``run_remote`` replies."""

from __future__ import annotations

import logging
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from stageflow import (
    InvalidStageOutputError,
    RemoteStageError,
    StageContext,
    StageOutput,
    UnpicklableStageError,
    UnpicklableValueError,
)
from stageflow._offload import check_picklable, run_remote

from . import _offload_stages as stages
from ._support import make_ctx


def reply(fn: Any, hooks: tuple[Any, ...] = (), ctx: StageContext | None = None) -> tuple[Any, ...]:
    """Send ``fn`` through ``run_remote`` as the parent would, and unpickle what it answers."""
    payload = pickle.dumps((fn, make_ctx(text="hi") if ctx is None else ctx, hooks))
    answer: tuple[Any, ...] = pickle.loads(run_remote(payload))
    return answer


class ExitFails:
    def enter(self) -> None:
        pass

    def exit(self, error: BaseException | None) -> object:
        raise RuntimeError("exit broke")

    def returned(self, report: object) -> None:
        pass


class Tracks:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def enter(self) -> None:
        self.seen.append("enter")

    def exit(self, error: BaseException | None) -> object:
        self.seen.append(f"exit {type(error).__name__ if error else None}")
        return list(self.seen)

    def returned(self, report: object) -> None:
        pass


def emits_a_lock(ctx: StageContext) -> StageOutput:
    ctx.try_emit_event("custom.bad", {"lock": threading.Lock()})
    ctx.try_emit_event("custom.good", {"n": 1})
    return StageOutput.ok()


class TestReply:
    def test_an_output_comes_back_with_the_time_it_took(self) -> None:
        elapsed, output, error, events, reports = reply(stages.where)
        assert error is None and events == [] and reports == []
        assert output.data["text"] == "hi" and output.data["attempt"] == 1
        assert elapsed >= 0.0

    def test_an_error_comes_back_as_itself(self) -> None:
        _, output, error, _, _ = reply(stages.raises_value_error)
        assert output is None
        assert type(error) is ValueError and str(error) == "bad input in pipeline_entry"

    @pytest.mark.parametrize(
        ("fn", "type_name", "message"),
        [
            (stages.raises_unpicklable, "tests._offload_stages.UnpicklableError", "held a lock"),
            (stages.raises_unrebuildable, "tests._offload_stages.NeedsTwoArguments", "503: upstream down"),
        ],
        ids=["does-not-pickle", "does-not-rebuild"],
    )
    def test_an_error_that_cannot_come_back_is_a_remote_stage_error(
        self, fn: Any, type_name: str, message: str
    ) -> None:
        _, _, error, _, _ = reply(fn)
        assert isinstance(error, RemoteStageError)
        assert (error.type_name, error.message) == (type_name, message)
        assert error.remote_traceback.startswith("Traceback (most recent call last):")

    def test_an_output_that_does_not_pickle_names_its_key(self) -> None:
        _, output, error, _, _ = reply(stages.returns_lock)
        assert output is None
        assert isinstance(error, UnpicklableValueError)
        assert (error.what, error.key) == ("output", "'lock'")

    def test_a_returned_coroutine_is_an_invalid_output(self) -> None:
        _, output, error, _, _ = reply(stages.returns_coroutine)
        assert output is None
        assert isinstance(error, InvalidStageOutputError)

    def test_events_come_back_in_order_and_unpicklable_ones_are_dropped_with_a_log(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            _, _, error, events, _ = reply(emits_a_lock)
        assert error is None
        assert [(t, d.get("n")) for t, d in events] == [("custom.good", 1)]
        assert any(
            "1 events of stage 'pipeline_entry' could not be pickled" in r.getMessage()
            for r in caplog.records
        )

    def test_hooks_run_around_the_stage_and_report(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.ERROR, logger="stageflow"):
            _, _, error, _, reports = reply(
                stages.raises_value_error, (Tracks(), stages.EnterFails(), ExitFails())
            )
        assert type(error) is ValueError
        assert reports == [["enter", "exit ValueError"], None, None]
        messages = [r.getMessage() for r in caplog.records]
        assert any("failed on enter" in m and "enter broke" in m for m in messages)
        assert any("failed on exit" in m and "exit broke" in m for m in messages)


class Slotted:
    __slots__ = ("lock",)

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def execute(self, ctx: StageContext) -> StageOutput:
        return StageOutput.ok()


@pytest.fixture(scope="module")
def pool() -> Any:
    with ProcessPoolExecutor(1) as executor:
        yield executor


class TestPicklingParts:
    def test_a_bound_method_names_its_objects_attribute(self, pool: ProcessPoolExecutor) -> None:
        with pytest.raises(UnpicklableStageError) as info:
            check_picklable("s", stages.Holder().execute, {}, pool)
        assert info.value.part == "attribute 'lock' (lock)"

    def test_a_slotted_object_names_its_slot(self, pool: ProcessPoolExecutor) -> None:
        with pytest.raises(UnpicklableStageError) as info:
            check_picklable("s", Slotted(), {}, pool)
        assert info.value.part == "attribute 'lock' (lock)"

    def test_a_class_defined_in_a_function_is_named_so(self, pool: ProcessPoolExecutor) -> None:
        class Local:
            def execute(self, ctx: StageContext) -> StageOutput:
                return StageOutput.ok()

        with pytest.raises(UnpicklableStageError) as info:
            check_picklable("s", Local(), {}, pool)
        assert info.value.part == (
            "its class TestPicklingParts.test_a_class_defined_in_a_function_is_named_so.<locals>.Local "
            "(defined inside a function)"
        )
