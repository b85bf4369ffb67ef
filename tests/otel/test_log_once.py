"""``LogOnce``: the first failure is logged, naming the function that reported it; later ones are not."""

from __future__ import annotations

import logging

import pytest

from stageflow_otel._once import LogOnce


def _failing_caller(report: LogOnce, exc: BaseException) -> None:
    report(exc)


def test_logs_the_first_failure_only_and_names_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    report = LogOnce("stageflow_otel: the exporter raised %r (logged once)")
    with caplog.at_level(logging.DEBUG, logger="stageflow_otel"):
        _failing_caller(report, ValueError("first"))
        _failing_caller(report, ValueError("second"))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "stageflow_otel: the exporter raised ValueError('first') (logged once)")
    ]
    record = caplog.records[0]
    assert (record.name, record.funcName, record.filename) == (
        "stageflow_otel",
        "_failing_caller",
        "test_log_once.py",
    )
    assert report.logged is True


def test_level_is_the_one_given(caplog: pytest.LogCaptureFixture) -> None:
    report = LogOnce("stageflow_otel: %r", level=logging.ERROR)
    with caplog.at_level(logging.DEBUG, logger="stageflow_otel"):
        report(RuntimeError("x"))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "stageflow_otel: RuntimeError('x')")
    ]
