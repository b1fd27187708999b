"""Does localization inform editing? Fast localizers, the edit-at-every-layer sweep and the Hase et al. test.

* :func:`validate_estimate` -- attribution patching (``TraceConfig(engine="atp" | "atp*")``,
  :mod:`lens_memory.trace.atp`) against exact tracing on the same facts: Spearman of the cell maps, top cell
  and layer agreement, false negatives, speed (:class:`AtPValidation`).
* :func:`edit_layer_sweep` -- ROME (or a MEMIT window) at every layer for each fact, scored with Hase et
  al.'s rewrite score and ROME's success metrics (:class:`EditSweep`).
* :func:`hase_regression` -- R² of edit success on the tracing effect at the edit layer, with and without a
  per-layer fixed effect (:class:`HaseRegression`), and the conclusion the numbers support.

:func:`lens_memory.workflows.localize.run_localize` (CLI ``lens-memory localize``) runs the three.
"""

from .hase import MODELS, HaseRegression, hase_effects, hase_regression, r_squared
from .sweep import SWEEP_METRICS, EditSweep, SweepConfig, edit_layer_sweep, memit_window, rewrite_score
from .validate import (AtPValidation, atp_star_ablation, edit_layer, estimand, exact_magnitude_trace, fact_agreement,
                       validate_estimate)

__all__ = ["AtPValidation", "validate_estimate", "fact_agreement", "EditSweep", "SweepConfig", "edit_layer_sweep",
           "rewrite_score", "memit_window", "SWEEP_METRICS", "HaseRegression", "hase_regression", "hase_effects",
           "r_squared", "MODELS", "estimand", "exact_magnitude_trace", "atp_star_ablation", "edit_layer"]
