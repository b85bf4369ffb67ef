"""``_metrics._Direct``: measurements handed to the SDK's consumer directly are the SDK's own, exactly."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import logging
import math
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from stageflow_otel._metrics import _Direct


def points(reader: InMemoryMetricReader) -> dict[str, list[dict[str, Any]]]:
    """Each metric's points as plain dicts, without their times; of the exemplars, the spans they point at
    (which values a reservoir keeps is random)."""
    data = reader.get_metrics_data()
    out: dict[str, list[dict[str, Any]]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = [
                    {
                        key: value
                        for key, value in vars(point).items()
                        if key not in ("start_time_unix_nano", "time_unix_nano", "exemplars")
                    }
                    | {"exemplars": {(e.span_id, e.trace_id) for e in point.exemplars}}
                    for point in metric.data.data_points
                ]
    return out


def record_both(values: list[float], adds: list[int]) -> tuple[dict[str, Any], dict[str, Any], trace.Span]:
    """The same measurements through ``_Direct`` and through the SDK's public methods, inside one span."""
    results = []
    span = TracerProvider().get_tracer("test").start_span("around")
    for direct in (True, False):
        reader = InMemoryMetricReader()
        meter = MeterProvider(metric_readers=[reader]).get_meter("test")
        histogram = meter.create_histogram("h", unit="s")
        counter = meter.create_up_down_counter("c")
        with trace.use_span(span):
            for value in values:
                attrs = {"stage": "a", "result": "success"}
                if direct:
                    _Direct(histogram).record(value, attrs)
                else:
                    histogram.record(value, attrs)
            for amount in adds:
                if direct:
                    _Direct(counter).add(amount, {"pipeline": "p"})
                else:
                    counter.add(amount, {"pipeline": "p"})
        results.append(points(reader))
    return results[0], results[1], span


class TestDirect:
    def test_the_direct_path_is_taken_for_the_sdks_instruments(self) -> None:
        meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("test")
        assert _Direct(meter.create_histogram("h"))._consumer is not None
        assert _Direct(meter.create_up_down_counter("c"))._consumer is not None
        no_op = NoOpMeterProvider().get_meter("test")
        assert _Direct(no_op.create_histogram("h"))._consumer is None

    def test_points_and_exemplars_equal_the_public_methods(self) -> None:
        direct, public, span = record_both([0.5, 0.25, 0.0, 3.0], [1, 1, -1])
        assert direct == public
        (histogram,) = direct["h"]
        assert (histogram["count"], histogram["sum"]) == (4, 3.75)
        assert histogram["attributes"] == {"stage": "a", "result": "success"}
        # recorded inside a sampled span: the exemplar points at it
        assert histogram["exemplars"] == {(span.get_span_context().span_id, span.get_span_context().trace_id)}
        (counter,) = direct["c"]
        assert (counter["value"], type(counter["value"])) == (1, int)

    def test_what_the_sdk_refuses_goes_through_its_public_method(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A negative or non-finite value: the SDK warns and ignores it, as for ``Histogram.record``."""
        with caplog.at_level(logging.WARNING):
            direct, public, _ = record_both([1.0, -1.0, math.nan, math.inf], [])
        assert direct == public
        (histogram,) = direct["h"]
        assert (histogram["count"], histogram["sum"]) == (1, 1.0)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 6  # three refused values, each warned about once per path

    def test_an_instrument_without_an_sdk_is_called_as_it_is(self) -> None:
        meter = NoOpMeterProvider().get_meter("test")
        _Direct(meter.create_histogram("h")).record(1.0, {"a": "b"})
        _Direct(meter.create_up_down_counter("c")).add(1, {"a": "b"})
