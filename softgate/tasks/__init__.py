"""Tasks: the synthetic task, GSM8K, MATH500, AIME (2024 + 2025), DeepMath-103K, and ``fields`` (any
question/answer file).

``get_task(name)`` returns a :class:`~softgate.tasks.base.Task`; ``names()`` lists what can be asked for. Tasks are
registered by import path and imported on first use, so a task module that fails to import (or does not exist yet)
does not break the others, and ``import softgate.tasks`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from softgate.tasks.base import DataError, Example, Examples, SkippedRow, Task

# name -> (module, attribute). The attribute is a Task instance, or a Task subclass / factory called with no
# arguments.
_REGISTRY: dict[str, tuple[str, str]] = {
    "synthetic": ("softgate.tasks.synthetic", "SyntheticTask"),
    "gsm8k": ("softgate.tasks.gsm8k", "TASK"),
    "math500": ("softgate.tasks.latex_answers", "MATH500"),
    "aime": ("softgate.tasks.aime", "TASK"),
    "deepmath": ("softgate.tasks.latex_answers", "DEEPMATH"),
    "fields": ("softgate.tasks.fields", "TASK"),
}
_CACHE: dict[str, Any] = {}


def names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_REGISTRY)


def register(name: str, target: str) -> None:
    """Register a task by import path ``"package.module:attribute"``; a duplicate name is an error."""
    if name in _REGISTRY:
        raise ValueError(f"task {name!r} is already registered")
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"task target must look like 'package.module:attribute', got {target!r}")
    _REGISTRY[name] = (module, attr)


def get_task(name: str) -> Task:
    """The task registered as ``name`` (imported on first use). Unknown names list the valid ones."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(names())}")
    if name not in _CACHE:
        module_name, attr = _REGISTRY[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                raise ImportError(f"task {name!r}: module {module_name} is not available in this build") from err
            raise
        obj = getattr(module, attr)
        _CACHE[name] = obj() if callable(obj) else obj  # a class or factory is built once
    return _CACHE[name]


__all__ = ["DataError", "Example", "Examples", "SkippedRow", "Task", "get_task", "names", "register"]
