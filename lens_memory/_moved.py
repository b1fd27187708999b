"""Deprecated import paths: a module ``__getattr__`` that finds a moved name in its new module, with a warning."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Mapping

__all__ = ["moved"]


def moved(old: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """``__getattr__`` for module ``old``: ``names[name]`` is the module where ``name`` lives now.

    Getting a moved name warns ``DeprecationWarning("<old>.<name> moved to <new>.<name>")`` (attributed to
    the caller) and returns the object itself; any other name raises :class:`AttributeError`.
    """

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        new = names[name]
        warnings.warn(f"{old}.{name} moved to {new}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)

    return __getattr__
