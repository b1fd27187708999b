"""Moved: the steering workflow is :mod:`lens_memory.workflows.steer` (this path warns for one release)."""

from .._moved import moved

__getattr__ = moved("lens_memory.steer.pipeline", {n: "lens_memory.workflows.steer" for n in
                                                   ("run_steering", "DEFAULT_STRENGTHS", "METHODS", "get_sae")})
