"""Errors that say where stageflow-core 0.9.1's renamed or removed names and modules went.

``from stageflow import CycleDetectedError`` and ``import stageflow.core`` would otherwise fail with a
bare ``ImportError``; these name the replacement (``CycleError``; ``from stageflow import ...``) instead.
Nothing here is importable under the old names: this module only words the errors. It is loaded when one
of those names is asked for (``stageflow.__getattr__`` and the finder in ``stageflow._compat``).
"""

from __future__ import annotations

__all__ = ("module_message", "old_name_error")

_MIGRATING = "README's 'Migrating from stageflow-core' section lists what replaces it"

RENAMED = {
    "CycleDetectedError": ("CycleError", "from stageflow import CycleError"),
    "PipelineValidationError": ("PipelineDefinitionError", "from stageflow import PipelineDefinitionError"),
    "StageExecutionError": (
        "PipelineFailedError",
        "except PipelineFailedError as exc: (the stage is exc.stage, its exception exc.error)",
    ),
    "CircuitBreakerOpenError": ("CircuitOpenError", "from stageflow import CircuitOpenError"),
    "CircuitBreaker": ("CircuitBreakerInterceptor", "from stageflow import CircuitBreakerInterceptor"),
    "run_with_interceptors": (
        "StageGraph.run",
        "pipeline.build(interceptors=[...]) and await graph.run(ctx)",
    ),
    **dict.fromkeys(
        (
            "create_test_context",
            "create_test_pipeline_context",
            "create_test_snapshot",
            "create_test_stage_context",
        ),
        ("stageflow.testing.make_context", "from stageflow.testing import make_context"),
    ),
}
"""0.9.1's top-level names that stageflow has under another name: (new name, how to use it)."""

REMOVED = frozenset(
    {
        "AudioPorts",
        "ChildRunTracker",
        "ChildTrackerMetricsInterceptor",
        "CorePorts",
        "CorrelationIds",
        "DependencyIssue",
        "DependencyLintResult",
        "ExtensionHelper",
        "ExtensionRegistry",
        "InterceptorContext",
        "IssueSeverity",
        "LLMPorts",
        "LinearPipeline",
        "MaxDepthExceededError",
        "PipelineRegistry",
        "PipelineRunLogger",
        "ProjectorService",
        "ProviderCallLogger",
        "SubpipelineResult",
        "SubpipelineSpawner",
        "TypedExtension",
        "WSMessageProjector",
        "WSMetadata",
        "WSOutboundMessage",
        "WSStatusUpdatePayload",
        "WideEventEmitter",
        "create_audio_ports",
        "create_core_ports",
        "create_llm_ports",
        "emit_pipeline_wide_event",
        "emit_stage_wide_event",
        "error_summary_to_stages_patch",
        "error_summary_to_string",
        "extract_service",
        "get_child_tracker",
        "get_circuit_breaker",
        "get_subpipeline_spawner",
        "lint_pipeline",
        "lint_pipeline_file",
        "pipeline_registry",
        "summarize_pipeline_error",
    }
)
"""0.9.1's top-level names that are not part of stageflow."""

MOVED_MODULES = ("stageflow.core", "stageflow.events", "stageflow.pipeline")
"""0.9.1's inner modules whose names stageflow exports from ``stageflow`` itself."""

REMOVED_MODULES = (
    "stageflow.agent",
    "stageflow.auth",
    "stageflow.cli",
    "stageflow.compression",
    "stageflow.contracts",
    "stageflow.extensions",
    "stageflow.helpers",
    "stageflow.observability",
    "stageflow.projector",
    "stageflow.protocols",
    "stageflow.route",
    "stageflow.tools",
    "stageflow.utils",
    "stageflow.websearch",
)
"""0.9.1's modules that are not part of stageflow."""


def old_name_error(name: str) -> ImportError | None:
    """The error for ``from stageflow import name`` when ``name`` is one of 0.9.1's, else ``None``."""
    if name in RENAMED:
        new, use = RENAMED[name]
        msg = f"stageflow-core 0.9.1's {name} is {new} in stageflow: {use}"
    elif name in REMOVED:
        msg = f"stageflow-core 0.9.1's {name} is not part of stageflow; {_MIGRATING}"
    else:
        return None
    return ImportError(msg, name="stageflow")


def module_message(fullname: str) -> str | None:
    """The error message for ``import fullname`` when it is one of 0.9.1's modules, else ``None``."""

    def within(module: str) -> bool:
        return fullname == module or fullname.startswith(module + ".")

    if any(within(m) for m in MOVED_MODULES):
        return (
            f"No module named {fullname!r}: stageflow-core 0.9.1's inner modules are gone, their names "
            "are in stageflow itself (from stageflow import Pipeline, StageOutput, StageContext, ...) and "
            "interceptors in stageflow.interceptors (from stageflow.interceptors import BaseInterceptor)"
        )
    if any(within(m) for m in REMOVED_MODULES):
        return (
            f"No module named {fullname!r}: stageflow-core 0.9.1's module is not part of stageflow; "
            + _MIGRATING
        )
    return None
