"""Rows of a comparison table: knowledge and cost per named set of artifacts, built once for every caller.

:func:`~lens_memory.compare.compare_mechanisms` (every mechanism) and
:func:`~lens_memory.workflows.memory.run_memory` (RAG, dense and sparse KV memory) both build their
knowledge rows with :func:`knowledge_rows` and their cost rows with :func:`cost_rows`. A condition is a name
and its artifacts; ``per_fact`` says whether artifact ``i`` belongs to fact ``i`` (applied alone for it) or
all of a condition's artifacts are applied together.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..metrics import KINDS
from .cost import measure_cost
from .knowledge import EditEvaluation, EvalConfig, _applied, evaluate_edits

__all__ = ["KnowledgeRows", "knowledge_rows", "cost_rows"]

log = logging.getLogger(__name__)


@dataclass
class KnowledgeRows:
    """One knowledge row per condition (``"none"``, the unchanged model, first when asked for), the
    :class:`~lens_memory.harness.EditEvaluation` behind each condition's row, and the seconds each took."""

    rows: list[dict[str, Any]]
    evaluations: dict[str, EditEvaluation]
    seconds: dict[str, float]


def _flag(per_fact: Mapping[str, bool] | bool, name: str) -> bool:
    return per_fact if isinstance(per_fact, bool) else per_fact[name]


def _knowledge_row(name: str, phase: dict[str, Any], fluency: float | None) -> dict[str, Any]:
    """Success (with 95% interval) and top-1 accuracy per prompt set, and fluency, from one summary phase."""
    return {"mechanism": name, **{k: phase[f"{k}_success"] for k in KINDS},
            **{f"{k}_ci95": phase[f"{k}_success_ci95"] for k in KINDS},
            **{f"{k}_accuracy": phase[f"{k}_accuracy"] for k in KINDS}, "fluency": fluency}


def knowledge_rows(lm: Any, facts: Sequence[Any], conditions: Mapping[str, Sequence[Any]], config: EvalConfig, *,
                   per_fact: Mapping[str, bool] | bool = True, provenance: Mapping[str, dict[str, Any]] | None = None,
                   include_baseline: bool = True, reuse_baseline: bool = True,
                   progress: bool = False) -> KnowledgeRows:
    """Score each condition's artifacts with :func:`~lens_memory.harness.evaluate_edits` under ``config``.

    Each row holds ``mechanism`` (the condition's name), ``efficacy`` / ``paraphrase`` / ``neighborhood``
    (success means), their ``_ci95`` and ``_accuracy``, and ``fluency`` (generation entropy after; before
    for ``"none"``); a condition's row adds ``n_artifacts``, ``per_fact`` and ``neighborhood_excluded``.
    The ``"none"`` row is the first evaluation's *pre* phase. ``reuse_baseline``: later evaluations reuse the
    first one's scores and generations of the unchanged model instead of recomputing them (same numbers).
    ``provenance[name]`` goes to that condition's evaluation.
    """
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    evals: dict[str, EditEvaluation] = {}
    seconds: dict[str, float] = {}
    first = None
    for name, arts in tqdm(list(conditions.items()), desc="knowledge", disable=not progress):
        t = time.time()
        ev = evaluate_edits(lm, facts, list(arts), per_fact=_flag(per_fact, name), config=config,
                            provenance=(provenance or {}).get(name), baseline=first if reuse_baseline else None)
        seconds[name] = time.time() - t
        first = first or ev
        s = ev.summary()
        if include_baseline and not rows:
            rows.append(_knowledge_row("none", s["pre"], ev.generation.get("fluency_ngram_entropy_pre")))
        row = _knowledge_row(name, s["post"], ev.generation.get("fluency_ngram_entropy_post"))
        row.update({"n_artifacts": len(arts), "per_fact": _flag(per_fact, name),
                    "neighborhood_excluded": ev.provenance.get("neighborhood_excluded", 0)})
        rows.append(row)
        evals[name] = ev
        log.info("%s: efficacy %.2f paraphrase %.2f neighbourhood %.2f", name, row["efficacy"], row["paraphrase"],
                 row["neighborhood"])
    return KnowledgeRows(rows, evals, seconds)


def cost_rows(lm: Any, prompts: Sequence[str], conditions: Mapping[str, Sequence[Any]], *,
              per_fact: Mapping[str, bool] | bool = True, new_tokens: int = 16,
              include_baseline: bool = True) -> dict[str, dict[str, float]]:
    """:func:`~lens_memory.harness.measure_cost` of ``prompts`` per condition (``"none"`` first when asked for).

    A per-fact condition times prompt ``i`` with its artifact ``i``; any other with all its artifacts applied.
    """
    out: dict[str, dict[str, float]] = {}
    if include_baseline:
        out["none"] = measure_cost(lm, prompts, new_tokens=new_tokens)
    for name, arts in conditions.items():
        if _flag(per_fact, name):
            out[name] = measure_cost(lm, prompts, list(arts)[:len(prompts)], new_tokens=new_tokens)
        else:
            with _applied(lm, arts):
                out[name] = measure_cost(lm, prompts, new_tokens=new_tokens)
    return out
