"""Values: StageOutput and its constructors, RunIdentity, ContextSnapshot, PipelineTimer."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from uuid import UUID

import pytest

from stageflow import (
    Pipeline,
    PipelineFailedError,
    PipelineTimer,
    StageContext,
    StageKind,
    StageOutput,
    StageStatus,
)
from stageflow.context import ContextSnapshot, RunIdentity


class TestStageOutput:
    def test_ok_merges_data_and_keywords(self) -> None:
        """ok() merges its mapping and its keywords, keywords winning, and drops nothing."""
        out = StageOutput.ok({"a": 1, "b": 1}, b=2, c=3, version="v2")
        assert (out.status, dict(out.data), out.error, out.version) == (
            StageStatus.OK,
            {"a": 1, "b": 2, "c": 3},
            None,
            "v2",
        )
        assert dict(StageOutput.ok(x=1).data) == {"x": 1}
        assert dict(StageOutput.ok({"y": 2}).data) == {"y": 2}
        assert dict(StageOutput.ok().data) == {}

    def test_ok_copies_the_given_mapping(self) -> None:
        """The output does not alias the caller's dict."""
        given = {"a": 1}
        out = StageOutput.ok(given)
        given["a"] = 2
        assert dict(out.data) == {"a": 1}

    def test_other_constructors(self) -> None:
        """skip, cancel, fail and retry set their status, reason key and error."""
        assert (
            StageOutput.skip("no audio", {"k": 1}).status,
            dict(StageOutput.skip("no audio", {"k": 1}).data),
        ) == (
            StageStatus.SKIP,
            {"reason": "no audio", "k": 1},
        )
        cancel = StageOutput.cancel("hung up")
        assert (cancel.status, dict(cancel.data)) == (StageStatus.CANCEL, {"cancel_reason": "hung up"})
        fail = StageOutput.fail("boom", {"code": 7})
        assert (fail.status, fail.error, dict(fail.data)) == (StageStatus.FAIL, "boom", {"code": 7})
        assert StageOutput.fail(response="alias").error == "alias"
        assert StageOutput.fail("wins", response="alias").error == "wins"
        assert StageOutput.fail().error == "Unknown error"
        retry = StageOutput.retry("rate limited")
        assert (retry.status, retry.error) == (StageStatus.RETRY, "rate limited")

    def test_outputs_are_frozen(self) -> None:
        """A StageOutput cannot be changed after it is made."""
        with pytest.raises(dataclasses.FrozenInstanceError):
            StageOutput.ok().status = StageStatus.FAIL  # type: ignore[misc]

    def test_direct_construction_coerces_status_values(self) -> None:
        """A status given as its string value becomes the StageStatus member."""
        assert StageOutput("fail", {}, error="boom").status is StageStatus.FAIL  # type: ignore[arg-type]

    def test_direct_construction_rejects_bad_status_and_data(self) -> None:
        """An unknown status or non-mapping data is rejected with the fix in the message."""
        with pytest.raises(ValueError) as bad_status:
            StageOutput("nope")  # type: ignore[arg-type]
        assert str(bad_status.value) == (
            "StageOutput status 'nope' is invalid; use a StageStatus member (OK, SKIP, CANCEL, FAIL, RETRY) "
            "or a constructor such as StageOutput.ok()"
        )
        with pytest.raises(TypeError) as bad_data:
            StageOutput(StageStatus.OK, None)  # type: ignore[arg-type]
        assert (
            str(bad_data.value)
            == "StageOutput data None is not a mapping; pass a dict such as {'key': value}"
        )


async def fetch_rows() -> list[int]:
    return [1, 2]


class TestForgottenAwait:
    async def test_a_stage_returning_a_coroutine_fails_naming_the_key(self) -> None:
        """``StageOutput.ok(rows=fetch_rows())`` fails the stage with a message naming the key and the fix."""

        async def load(ctx: StageContext) -> StageOutput:
            return StageOutput.ok(count=2, rows=fetch_rows())

        with pytest.raises(PipelineFailedError) as info:
            await Pipeline(name="p").with_stage("load", load, StageKind.WORK).build().run()
        assert (info.value.stage, type(info.value.error), str(info.value.error)) == (
            "load",
            TypeError,
            "StageOutput value 'rows' is a coroutine (fetch_rows), not its result: await it, "
            "e.g. StageOutput.ok(rows=await fetch_rows(...))",
        )

    @pytest.mark.parametrize(
        "build",
        [
            lambda c: StageOutput.ok({"my-rows": c}),
            lambda c: StageOutput(StageStatus.OK, {"my-rows": c}),
            lambda c: StageOutput.skip("later", {"my-rows": c}),
            lambda c: StageOutput.fail("no", {"my-rows": c}),
        ],
        ids=["ok-mapping", "constructor", "skip", "fail"],
    )
    def test_every_constructor_refuses_a_coroutine(self, build: Callable[[object], StageOutput]) -> None:
        """Every way to build an output refuses a coroutine value and closes it (no never-awaited warning)."""
        coroutine = fetch_rows()
        with pytest.raises(TypeError) as info:
            build(coroutine)
        assert str(info.value) == (
            "StageOutput value 'my-rows' is a coroutine (fetch_rows), not its result: await it, "
            "e.g. StageOutput.ok({'my-rows': await fetch_rows(...)})"
        )
        assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


class TestRunIdentity:
    def test_each_identity_has_a_fresh_run_id(self) -> None:
        """RunIdentity() gives every run its own pipeline_run_id."""
        ids = {RunIdentity().pipeline_run_id for _ in range(100)}
        assert len(ids) == 100
        assert all(isinstance(i, UUID) for i in ids)

    def test_to_dict_stringifies_ids(self) -> None:
        """to_dict gives string ids and None for unset ones."""
        identity = RunIdentity(pipeline_run_id=UUID(int=1), user_id=UUID(int=2))
        data = identity.to_dict()
        assert {k: v for k, v in data.items() if k != "created_at"} == {
            "pipeline_run_id": "00000000-0000-0000-0000-000000000001",
            "request_id": None,
            "session_id": None,
            "user_id": "00000000-0000-0000-0000-000000000002",
            "org_id": None,
            "interaction_id": None,
        }
        assert data["created_at"] == identity.created_at.isoformat()


class TestContextSnapshot:
    def test_defaults_and_run_id_shortcut(self) -> None:
        """A bare snapshot has a fresh identity, empty metadata and the run id shortcut."""
        snapshot = ContextSnapshot(input_text="hi")
        assert snapshot.pipeline_run_id == snapshot.run_id.pipeline_run_id
        assert (snapshot.input_text, dict(snapshot.metadata), snapshot.topology) == ("hi", {}, None)
        assert ContextSnapshot().pipeline_run_id != ContextSnapshot().pipeline_run_id


class TestPipelineTimer:
    def test_clock_readings_are_consistent(self) -> None:
        """The timer's wall-clock start, now and elapsed readings agree with each other."""
        timer = PipelineTimer()
        elapsed = timer.elapsed_ms()
        now = timer.now_ms()
        assert 0 <= elapsed <= now - timer.pipeline_start_ms + 1
        assert abs(timer.to_wall(timer.perf_start) * 1000 - timer.pipeline_start_ms) < 1
