"""Artifacts: the protocol every memory change implements, and how artifacts are saved.

* :mod:`.handle` -- ``apply(model) -> Handle``, one :class:`Handle` class, :func:`applied`,
  :func:`check_identity` (by weight hash).
* :mod:`.persist` -- :func:`save_artifact` / :func:`load_artifact`: a manifest with every file's
  SHA-256, safetensors + JSON, whole-directory atomic swaps that never delete foreign files.
"""

from .handle import Artifact, Handle, active_handles, applied, check_identity
from .persist import atomic_dir, is_artifact, load_artifact, read_manifest, require, save_artifact

__all__ = ["Artifact", "Handle", "active_handles", "applied", "check_identity", "atomic_dir", "is_artifact",
           "load_artifact", "read_manifest", "require", "save_artifact"]
