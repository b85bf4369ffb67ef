"""The public surface: ``__all__`` hygiene of every module and the documented error tree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType
from uuid import UUID

import pytest

import stageflow
from stageflow import (
    CircuitOpenError,
    CriticalInterceptorError,
    CycleError,
    DuplicateStageError,
    ExecutorError,
    InterceptorError,
    InterceptorFailedError,
    InvalidExecutorError,
    InvalidRunnerError,
    InvalidStageKindError,
    InvalidStageNameError,
    InvalidStageOutputError,
    PipelineCancelledError,
    PipelineDefinitionError,
    PipelineFailedError,
    PipelineRunError,
    RemoteStageError,
    RetriesExhaustedError,
    RetryNotConfiguredError,
    RunResult,
    SelfDependencyError,
    StageBlockedError,
    StageError,
    StageFailedError,
    StageflowError,
    StageTimeoutError,
    StreamError,
    StreamInputError,
    UndeclaredDependencyError,
    UnknownDependencyError,
    UnpicklableStageError,
    UnpicklableValueError,
    _errors,
)


def _all_modules() -> list[ModuleType]:
    packages = [stageflow]
    try:  # the OpenTelemetry package is checked too when its extra is installed
        import stageflow_otel
    except ImportError:
        pass
    else:
        packages.append(stageflow_otel)
    names = [p.__name__ for p in packages] + [
        m.name for p in packages for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")
    ]
    return [importlib.import_module(name) for name in sorted(names)]


MODULES = _all_modules()
MODULE_IDS = [m.__name__ for m in MODULES]


def _defined_public(module: ModuleType) -> set[str]:
    return {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    }


class TestDunderAll:
    @pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
    def test_is_a_tuple(self, module: ModuleType) -> None:
        """Every module of stageflow (and stageflow_otel) declares ``__all__`` as a tuple."""
        assert isinstance(getattr(module, "__all__", None), tuple)

    @pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
    def test_lists_only_existing_names(self, module: ModuleType) -> None:
        """Every name in a module's ``__all__`` exists in that module."""
        assert [name for name in module.__all__ if not hasattr(module, name)] == []

    @pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
    def test_has_no_duplicates(self, module: ModuleType) -> None:
        """No module lists a name twice in ``__all__``."""
        assert len(set(module.__all__)) == len(module.__all__)

    @pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
    def test_lists_every_public_class_and_function(self, module: ModuleType) -> None:
        """Every public class or function defined in a module is listed in its ``__all__``."""
        assert sorted(_defined_public(module) - set(module.__all__)) == []

    def test_star_import_gives_exactly_all(self) -> None:
        """``from stageflow import *`` binds exactly the names of ``stageflow.__all__``."""
        namespace: dict[str, object] = {}
        exec("from stageflow import *", namespace)
        assert sorted(set(namespace) - {"__builtins__"}) == sorted(stageflow.__all__)

    @pytest.mark.parametrize(
        "module_name", ["stageflow.context", "stageflow.stages", "stageflow.interceptors"]
    )
    def test_public_submodule_star_import(self, module_name: str) -> None:
        """A star import of each public submodule binds exactly its ``__all__``."""
        namespace: dict[str, object] = {}
        exec(f"from {module_name} import *", namespace)
        module = importlib.import_module(module_name)
        assert sorted(set(namespace) - {"__builtins__"}) == sorted(module.__all__)

    def test_seed_imports(self) -> None:
        """The names the seed README imports by path are where it imports them from."""
        from stageflow.context import ContextSnapshot, RunIdentity
        from stageflow.interceptors import BaseInterceptor, InterceptorResult
        from stageflow.stages import StageInputs

        assert (ContextSnapshot, RunIdentity, StageInputs) == (
            stageflow.ContextSnapshot,
            stageflow.RunIdentity,
            stageflow.StageInputs,
        )
        assert BaseInterceptor.__module__ == "stageflow._interceptors"
        assert InterceptorResult.__module__ == "stageflow._interceptors"

    def test_unknown_interceptor_attribute(self) -> None:
        """An unknown attribute of ``stageflow.interceptors`` raises a plain AttributeError."""
        import stageflow.interceptors

        with pytest.raises(AttributeError, match="^module 'stageflow.interceptors' has no attribute 'Nope'$"):
            stageflow.interceptors.Nope  # noqa: B018


ERROR_CHILDREN: list[tuple[tuple[type[BaseException], ...], list[type[BaseException]]]] = [
    ((Exception,), [StageflowError]),
    ((StageflowError,), [PipelineRunError, StageError, InterceptorError]),
    ((StageflowError, ValueError), [PipelineDefinitionError]),
    (
        (PipelineDefinitionError,),
        [
            InvalidStageNameError,
            DuplicateStageError,
            UnknownDependencyError,
            SelfDependencyError,
            CycleError,
            InvalidStageKindError,
            UnpicklableStageError,
        ],
    ),
    ((PipelineDefinitionError, TypeError), [InvalidRunnerError, InvalidExecutorError]),
    ((PipelineRunError,), [PipelineFailedError, PipelineCancelledError]),
    (
        (StageError,),
        [
            StageFailedError,
            RetryNotConfiguredError,
            RetriesExhaustedError,
            StreamError,
            RemoteStageError,
            ExecutorError,
        ],
    ),
    ((StageError, TypeError), [InvalidStageOutputError, UnpicklableValueError]),
    ((StageError, KeyError), [UndeclaredDependencyError]),
    ((StageError, LookupError), [StreamInputError]),
    ((InterceptorError,), [CriticalInterceptorError]),
    ((CriticalInterceptorError,), [InterceptorFailedError, StageBlockedError, CircuitOpenError]),
    ((CriticalInterceptorError, TimeoutError), [StageTimeoutError]),
]
"""The documented error tree, parent by parent: the exact ``__bases__`` and the classes that have them."""
ERROR_TREE = [(cls, bases) for bases, classes in ERROR_CHILDREN for cls in classes]


class TestErrorTree:
    @pytest.mark.parametrize(("cls", "bases"), ERROR_TREE, ids=[c.__name__ for c, _ in ERROR_TREE])
    def test_bases(self, cls: type[BaseException], bases: tuple[type[BaseException], ...]) -> None:
        """Each error class has exactly the bases the ``_errors`` module docstring documents."""
        assert cls.__bases__ == bases

    def test_every_error_is_in_the_tree(self) -> None:
        """Every exception class of ``stageflow._errors`` is covered by the documented tree."""
        classes = {obj for name in _errors.__all__ if inspect.isclass(obj := vars(_errors)[name])}
        assert classes == {cls for cls, _ in ERROR_TREE}

    def test_every_exported_error_has_one_base(self) -> None:
        """Every exception class stageflow exports derives from ``StageflowError``."""
        exported = [
            name
            for name in stageflow.__all__
            if inspect.isclass(obj := getattr(stageflow, name))
            and issubclass(obj, BaseException)
            and not issubclass(obj, StageflowError)
        ]
        assert exported == []

    def test_messages_name_the_values(self) -> None:
        """Run and stage errors build their messages from their fields."""
        assert str(StageTimeoutError("llm", 1.5)) == "stage 'llm' timed out after 1.5 s"
        assert str(CircuitOpenError("llm", 2.0)) == (
            "circuit breaker for stage 'llm' is open; the next trial call is allowed in 2 s"
        )
        assert (
            str(PipelineCancelledError("a", "", RunResult(UUID(int=0), "p", 0.0, {})))
            == "stage 'a' cancelled the pipeline: (no reason given)"
        )
        assert (
            str(StageBlockedError("a", "auth", None))
            == "interceptor 'auth' blocked stage 'a': (no reason given)"
        )
