"""stageflow: an asyncio DAG pipeline framework with a dependency-free core.

Example::

    from stageflow import Pipeline, StageKind, StageOutput

    async def greet(ctx):
        return StageOutput.ok(greeting="Hello")

    graph = Pipeline(name="hello").with_stage("greet", greet, StageKind.TRANSFORM).build()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._compat import create_stage_context as create_stage_context
from ._compat import create_stage_inputs as create_stage_inputs
from ._compat import install_module_hints
from ._context import PipelineContext as PipelineContext
from ._context import PipelineTimer as PipelineTimer
from ._context import StageContext as StageContext
from ._context import StageInputs as StageInputs
from ._dag import StageInfo as StageInfo
from ._dag import StageSpec as StageSpec
from ._dag import UnifiedStageSpec as UnifiedStageSpec
from ._errors import CircuitOpenError as CircuitOpenError
from ._errors import CriticalInterceptorError as CriticalInterceptorError
from ._errors import CycleError as CycleError
from ._errors import DuplicateStageError as DuplicateStageError
from ._errors import ExecutorError as ExecutorError
from ._errors import InterceptorError as InterceptorError
from ._errors import InterceptorFailedError as InterceptorFailedError
from ._errors import InvalidExecutorError as InvalidExecutorError
from ._errors import InvalidRunnerError as InvalidRunnerError
from ._errors import InvalidStageKindError as InvalidStageKindError
from ._errors import InvalidStageNameError as InvalidStageNameError
from ._errors import InvalidStageOutputError as InvalidStageOutputError
from ._errors import PipelineCancelledError as PipelineCancelledError
from ._errors import PipelineDefinitionError as PipelineDefinitionError
from ._errors import PipelineFailedError as PipelineFailedError
from ._errors import PipelineRunError as PipelineRunError
from ._errors import RemoteStageError as RemoteStageError
from ._errors import RetriesExhaustedError as RetriesExhaustedError
from ._errors import RetryNotConfiguredError as RetryNotConfiguredError
from ._errors import SelfDependencyError as SelfDependencyError
from ._errors import StageBlockedError as StageBlockedError
from ._errors import StageError as StageError
from ._errors import StageFailedError as StageFailedError
from ._errors import StageflowError as StageflowError
from ._errors import StageTimeoutError as StageTimeoutError
from ._errors import StreamError as StreamError
from ._errors import StreamInputError as StreamInputError
from ._errors import UndeclaredDependencyError as UndeclaredDependencyError
from ._errors import UnknownDependencyError as UnknownDependencyError
from ._errors import UnpicklableStageError as UnpicklableStageError
from ._errors import UnpicklableValueError as UnpicklableValueError
from ._errors import error_category as error_category
from ._errors import error_type_name as error_type_name
from ._events import EventSink as EventSink
from ._events import InMemoryEventSink as InMemoryEventSink
from ._events import LoggingEventSink as LoggingEventSink
from ._events import NoOpEventSink as NoOpEventSink
from ._events import RecordedEvent as RecordedEvent
from ._events import clear_event_sink as clear_event_sink
from ._events import dropped_event_count as dropped_event_count
from ._events import get_event_sink as get_event_sink
from ._events import set_event_sink as set_event_sink
from ._pipeline import Pipeline as Pipeline
from ._runner import StageExecutor as StageExecutor
from ._runner import StageFunction as StageFunction
from ._runner import StageRunner as StageRunner
from ._runner import StreamStageExecutor as StreamStageExecutor
from ._runner import StreamStageFunction as StreamStageFunction
from ._runner import SyncStageExecutor as SyncStageExecutor
from ._runner import SyncStageFunction as SyncStageFunction
from ._snapshot import ContextSnapshot as ContextSnapshot
from ._snapshot import RunIdentity as RunIdentity
from ._types import OutcomeCategory as OutcomeCategory
from ._types import Stage as Stage
from ._types import StageArtifact as StageArtifact
from ._types import StageEvent as StageEvent
from ._types import StageKind as StageKind
from ._types import StageOutput as StageOutput
from ._types import StageStatus as StageStatus

if TYPE_CHECKING:
    from ._config import ConfigError as ConfigError
    from ._config import ConfigProvider as ConfigProvider
    from ._config import DictConfigProvider as DictConfigProvider
    from ._config import EnvConfigProvider as EnvConfigProvider
    from ._graph import StageGraph as StageGraph
    from ._monitor import LoopBlock as LoopBlock
    from ._monitor import LoopMonitor as LoopMonitor
    from ._monitor import get_loop_monitor as get_loop_monitor
    from ._monitor import set_loop_monitor as set_loop_monitor
    from ._offload import WorkerHook as WorkerHook
    from ._offload import add_worker_hook as add_worker_hook
    from ._offload import remove_worker_hook as remove_worker_hook
    from ._results import RunResult as RunResult
    from ._results import StageResult as StageResult
    from ._retry import RetryPolicy as RetryPolicy
    from ._store import MAX_MESSAGE_CHARS as MAX_MESSAGE_CHARS
    from ._store import InMemoryRunStore as InMemoryRunStore
    from ._store import MalformedRunError as MalformedRunError
    from ._store import RunRecord as RunRecord
    from ._store import RunStore as RunStore
    from ._store import RunStoreWrite as RunStoreWrite
    from ._store import SQLiteRunStore as SQLiteRunStore
    from ._store import StageRecord as StageRecord
    from ._store import WriteObserver as WriteObserver
    from ._store import current_run_trace_id as current_run_trace_id
    from ._store import reset_run_trace_id as reset_run_trace_id
    from ._store import set_run_trace_id as set_run_trace_id
    from ._streams import Streaming as Streaming
    from ._streams import StreamReader as StreamReader
    from ._terminal import terminal_safe as terminal_safe
    from .adapters._events_db import DatabaseEventSink as DatabaseEventSink
    from .adapters._postgres import PostgresRunStore as PostgresRunStore
    from .adapters.ray import RayExecutor as RayExecutor
    from .interceptors import BaseInterceptor as BaseInterceptor
    from .interceptors import CircuitBreakerInterceptor as CircuitBreakerInterceptor
    from .interceptors import ErrorAction as ErrorAction
    from .interceptors import InterceptorResult as InterceptorResult
    from .interceptors import TimeoutInterceptor as TimeoutInterceptor
    from .interceptors import get_default_interceptors as get_default_interceptors

__version__ = "0.10.0"

__all__ = (
    "MAX_MESSAGE_CHARS",
    "BaseInterceptor",
    "CircuitBreakerInterceptor",
    "CircuitOpenError",
    "ConfigError",
    "ConfigProvider",
    "ContextSnapshot",
    "CriticalInterceptorError",
    "CycleError",
    "DatabaseEventSink",
    "DictConfigProvider",
    "DuplicateStageError",
    "EnvConfigProvider",
    "ErrorAction",
    "EventSink",
    "ExecutorError",
    "InMemoryEventSink",
    "InMemoryRunStore",
    "InterceptorError",
    "InterceptorResult",
    "InterceptorFailedError",
    "InvalidExecutorError",
    "InvalidRunnerError",
    "InvalidStageKindError",
    "InvalidStageNameError",
    "InvalidStageOutputError",
    "LoggingEventSink",
    "LoopBlock",
    "LoopMonitor",
    "MalformedRunError",
    "NoOpEventSink",
    "OutcomeCategory",
    "Pipeline",
    "PipelineCancelledError",
    "PipelineContext",
    "PipelineDefinitionError",
    "PipelineFailedError",
    "PipelineRunError",
    "PipelineTimer",
    "PostgresRunStore",
    "RayExecutor",
    "RecordedEvent",
    "RemoteStageError",
    "RetriesExhaustedError",
    "RetryNotConfiguredError",
    "RetryPolicy",
    "RunIdentity",
    "RunRecord",
    "RunResult",
    "RunStore",
    "RunStoreWrite",
    "SQLiteRunStore",
    "SelfDependencyError",
    "Stage",
    "StageArtifact",
    "StageBlockedError",
    "StageContext",
    "StageError",
    "StageExecutor",
    "StageEvent",
    "StageFailedError",
    "StageFunction",
    "StageGraph",
    "StageInfo",
    "StageInputs",
    "StageKind",
    "StageOutput",
    "StageRecord",
    "StageResult",
    "StageRunner",
    "StageSpec",
    "StageStatus",
    "StageTimeoutError",
    "StreamError",
    "StreamInputError",
    "StreamReader",
    "StreamStageExecutor",
    "StreamStageFunction",
    "Streaming",
    "SyncStageExecutor",
    "SyncStageFunction",
    "StageflowError",
    "TimeoutInterceptor",
    "UndeclaredDependencyError",
    "UnifiedStageSpec",
    "UnknownDependencyError",
    "UnpicklableStageError",
    "UnpicklableValueError",
    "WorkerHook",
    "add_worker_hook",
    "WriteObserver",
    "clear_event_sink",
    "create_stage_context",
    "create_stage_inputs",
    "current_run_trace_id",
    "dropped_event_count",
    "get_default_interceptors",
    "error_category",
    "error_type_name",
    "get_event_sink",
    "get_loop_monitor",
    "remove_worker_hook",
    "reset_run_trace_id",
    "set_event_sink",
    "set_loop_monitor",
    "terminal_safe",
    "set_run_trace_id",
)


_OTEL_INTERCEPTORS = ("LoggingInterceptor", "MetricsInterceptor", "TracingInterceptor")
# Loaded on first use, so ``import stageflow`` stays cheap: what a run needs beyond defining its pipeline
# (the graph, results, stores, the loop monitor, configuration, retry policies, streams, the built-in
# interceptors), and the
# adapters that lean on a third-party package (``import stageflow`` stays standard-library only).
_LAZY = {
    "RetryPolicy": "stageflow._retry",
    "Streaming": "stageflow._streams",
    "StreamReader": "stageflow._streams",
    "ConfigError": "stageflow._config",
    "ConfigProvider": "stageflow._config",
    "DictConfigProvider": "stageflow._config",
    "EnvConfigProvider": "stageflow._config",
    "StageGraph": "stageflow._graph",
    "LoopBlock": "stageflow._monitor",
    "LoopMonitor": "stageflow._monitor",
    "get_loop_monitor": "stageflow._monitor",
    "set_loop_monitor": "stageflow._monitor",
    "WorkerHook": "stageflow._offload",
    "add_worker_hook": "stageflow._offload",
    "remove_worker_hook": "stageflow._offload",
    "RunResult": "stageflow._results",
    "StageResult": "stageflow._results",
    "MAX_MESSAGE_CHARS": "stageflow._store",
    "InMemoryRunStore": "stageflow._store",
    "MalformedRunError": "stageflow._store",
    "RunRecord": "stageflow._store",
    "RunStore": "stageflow._store",
    "RunStoreWrite": "stageflow._store",
    "SQLiteRunStore": "stageflow._store",
    "StageRecord": "stageflow._store",
    "WriteObserver": "stageflow._store",
    "current_run_trace_id": "stageflow._store",
    "reset_run_trace_id": "stageflow._store",
    "set_run_trace_id": "stageflow._store",
    "terminal_safe": "stageflow._terminal",
    "BaseInterceptor": "stageflow.interceptors",
    "CircuitBreakerInterceptor": "stageflow.interceptors",
    "ErrorAction": "stageflow.interceptors",
    "InterceptorResult": "stageflow.interceptors",
    "TimeoutInterceptor": "stageflow.interceptors",
    "get_default_interceptors": "stageflow.interceptors",
    "DatabaseEventSink": "stageflow.adapters._events_db",
    "PostgresRunStore": "stageflow.adapters._postgres",
    "RayExecutor": "stageflow.adapters.ray",
}


install_module_hints()


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))  # the names loaded on first use too


def __getattr__(name: str) -> Any:
    # stageflow-core 0.9.1 exported these from the top level: they come from stageflow_otel, like
    # ``stageflow.interceptors``'s, and are not in ``__all__`` (a star import must work without the extra).
    if name in _OTEL_INTERCEPTORS:
        from . import interceptors

        return getattr(interceptors, name)
    module = _LAZY.get(name)
    if module is not None:
        from importlib import import_module

        value = getattr(import_module(module), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):  # a submodule being imported, or a probe for a dunder: no 0.9.1 name
        from ._renamed import old_name_error

        error = old_name_error(name)
        if error is not None:  # stageflow-core 0.9.1's name: say what it is now
            raise error
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
