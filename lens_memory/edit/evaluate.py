"""Deprecated: knowledge scoring moved to :mod:`lens_memory.harness` (:mod:`lens_memory.harness.knowledge`).

``lens_memory.edit.evaluate.X`` still works for one release and warns ``DeprecationWarning``;
import ``EvalConfig``, ``EditEvaluation``, ``evaluate_edits`` from :mod:`lens_memory.harness`
(or :mod:`lens_memory.edit`).
"""

from __future__ import annotations

from .._moved import moved

_PUBLIC = ("EvalConfig", "EditEvaluation", "evaluate_edits", "METRICS", "GENERATION_METRICS")
_PRIVATE = ("_SCORE_KEYS", "_gen_prompts", "_applied", "_texts", "_generation_metrics", "_unedited_neighbours",
            "_reusable", "_references", "_pre_generation", "_post_generation", "_mean_or_none", "_generation",
            "_check_inputs")

__getattr__ = moved(__name__, {**{n: "lens_memory.harness" for n in _PUBLIC},
                               **{n: "lens_memory.harness.knowledge" for n in _PRIVATE}})
