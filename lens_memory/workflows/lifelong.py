"""The lifelong-editing workflow: a sequence of edit batches with the model's health tracked along it.

Used by ``lens-memory edit --sequential`` and ``analyses/bench_lifelong.py``::

    summary = run_lifelong(model, facts, "alphaedit", batch_size=20, heldout=unedited_known_facts)
    summary.save(out)     # sequence/ (the artifact), health/, health.csv, figures/health.{png,pdf}, summary.json

:func:`run_lifelong` runs :func:`~lens_memory.edit.sequence.sequential_edit` with a
:class:`~lens_memory.harness.lifelong.HealthConfig`, then scores every edited fact once more on the
final model (:func:`final_scores`: ROME's efficacy, paraphrase and neighbourhood success, 95% intervals;
neighbourhood prompts about edited subjects left out, as :func:`~lens_memory.harness.evaluate_edits` does).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .summary import WorkflowSummary

__all__ = ["run_lifelong", "final_scores", "LifelongSummary"]


def final_scores(lm: Any, sequence: Any, facts: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """ES / PS / NS of every edited fact with the whole ``sequence`` applied: mean, 95% interval, n.

    Neighbourhood prompts about any subject of ``facts`` (all edited by the sequence) are left out by the one
    rule of :func:`~lens_memory.harness.knowledge.unedited_neighbours` -- their changed answers are retained
    edits, not leakage; ``neighborhood["dropped"]`` and ``["prompts"]`` count the prompts left out and kept.
    Intervals: :func:`~lens_memory.metrics.mean_ci` (Wilson for 0/1 values, bootstrap otherwise).
    """
    from ..harness.knowledge import unedited_neighbours
    from ..metrics import fact_scores, mean_ci

    kept, dropped = unedited_neighbours(list(facts))
    with sequence.apply(lm):
        rows = fact_scores(lm, kept)
    out: dict[str, dict[str, Any]] = {}
    for k in ("efficacy", "paraphrase", "neighborhood"):
        vals = [r[f"{k}_success"] for r in rows if not math.isnan(r[f"{k}_success"])]
        m, lo, hi = mean_ci(vals)
        out[k] = {"mean": m, "ci95": [lo, hi], "n": len(vals)}
    out["neighborhood"].update(dropped=dropped, prompts=sum(len(f.neighborhood) for f in kept))
    return out


@dataclass
class LifelongSummary(WorkflowSummary):
    """What ``lens-memory edit --sequential`` computed: the sequence (with its health curves)."""

    sequence: Any = None

    def save(self, out: str | Path) -> Path:
        from .. import viz

        out = Path(out)
        self.sequence.save(out / "sequence")
        self.sequence.health.save(out / "health")
        self.sequence.health.to_dataframe().to_csv(out / "health.csv", index=False)
        viz.save_figure(self.sequence.health.plot(), out / "figures" / "health")
        return super().save(out)


def run_lifelong(lm: Any, facts: Sequence[Any], method: str, batch_size: int, *, heldout: Sequence[Any] = (),
                 layers: Sequence[int] | None = None, config: Any = None, every: int = 1, text_tokens: int = 1024,
                 checkpoint: str | Path | None = None, provenance: dict | None = None) -> LifelongSummary:
    """Write ``facts`` in batches with ``method``, tracking health; then score every edited fact again."""
    from ..edit.sequence import sequential_edit
    from ..harness.lifelong import HealthConfig

    t = time.time()
    health = HealthConfig(every=every, heldout=tuple(heldout), text_tokens=text_tokens)
    seq = sequential_edit(lm, facts, method, batch_size, layers=layers, config=config, health=health,
                          checkpoint=checkpoint)
    scores = final_scores(lm, seq, facts)
    final = seq.health.final()
    head = {"command": "edit", "sequential": True, "method": method, "n_edits": seq.n_edits,
            "batch_size": batch_size, "n_batches": seq.n_batches, "layers": seq.layers,
            **{f"final_{k}_success": v["mean"] for k, v in scores.items()},
            **{f"final_{k}_success_ci95": v["ci95"] for k, v in scores.items()}, "final_n": scores["efficacy"]["n"],
            "final_neighborhood_n": scores["neighborhood"]["n"],
            "final_neighborhood_dropped": scores["neighborhood"]["dropped"],
            "final_neighborhood_prompts": scores["neighborhood"]["prompts"],
            **{k: final.get(k) for k in ("heldout_accuracy", "heldout_accuracy_ratio", "perplexity",
                                         "perplexity_ratio", "solve_condition")},
            "max_delta_norm": max([v for k, v in final.items() if k.startswith("delta_norm.")] or [0.0]),
            "first_failure": seq.health.first_failures(), "n_heldout": len(heldout),
            "edit_seconds": sum(seq.info["batch_seconds"]), "seconds": round(time.time() - t, 1),
            "config": seq.config, "model": lm.identity.to_dict(), **(provenance or {})}
    return LifelongSummary(head, sequence=seq)
