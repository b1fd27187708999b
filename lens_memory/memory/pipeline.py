"""Moved: the memory workflow is :mod:`lens_memory.workflows.memory` (this path warns for one release)."""

from .._moved import moved

__getattr__ = moved("lens_memory.memory.pipeline", {"run_memory": "lens_memory.workflows.memory"})
