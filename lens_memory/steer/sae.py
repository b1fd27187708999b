"""Deprecated: SAEs moved to :mod:`lens_memory.sae` (config, features, quality, artifact, training, pretrained).

``lens_memory.steer.sae.NAME`` still returns ``lens_memory.sae.NAME``, with a
``DeprecationWarning("lens_memory.steer.sae.NAME moved to lens_memory.sae.NAME")``. Library code
imports :mod:`lens_memory.sae` directly, so the warning only reaches code that still uses the old name.
"""

from __future__ import annotations

from .._moved import moved

#: the public names of the old module, all in :mod:`lens_memory.sae` now
_MOVED = ("SAETrainConfig", "SAEQuality", "TrainedSAE", "SAEConfigError", "SAEMismatchError", "train_sae",
          "sae_quality", "check_sae", "feature_acts", "load_pretrained_sae", "pretrained_sae_ids", "resid_post_hook",
          "GEMMA_SCOPE_RELEASE")

__all__ = list(_MOVED)  # resolved lazily by __getattr__, each with a DeprecationWarning

__getattr__ = moved(__name__, dict.fromkeys(_MOVED, "lens_memory.sae"))


def __dir__() -> list[str]:
    return sorted(_MOVED)
