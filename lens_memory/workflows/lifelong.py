"""The lifelong-editing workflow: a sequence of edit batches with the model's health tracked along it.

Used by ``lens-memory edit --sequential`` and ``analyses/bench_lifelong.py``::

    summary = run_lifelong(model, facts, "alphaedit", batch_size=20, heldout=unedited_known_facts)
    summary.save(out)     # sequence/ (the artifact), health/, health.csv, figures/health.{png,pdf}, summary.json

:func:`run_lifelong` runs :func:`~lens_memory.edit.sequence.sequential_edit` with a
:class:`~lens_memory.harness.lifelong.HealthConfig`, then scores every edited fact once more on the
final model (:func:`final_scores`: ROME's efficacy, paraphrase and neighbourhood success, 95% intervals).
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
    """ES / PS / NS of every edited fact with the whole ``sequence`` applied: mean, 95% interval, n."""
    from ..metrics import fact_scores, mean_ci

    with sequence.apply(lm):
        rows = fact_scores(lm, list(facts))
    out = {}
    for k in ("efficacy", "paraphrase", "neighborhood"):
        vals = [r[f"{k}_success"] for r in rows if not math.isnan(r[f"{k}_success"])]
        m, lo, hi = mean_ci(vals)
        out[k] = {"mean": m, "ci95": [lo, hi], "n": len(vals)}
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
            **{k: final.get(k) for k in ("heldout_accuracy", "heldout_accuracy_ratio", "perplexity",
                                         "perplexity_ratio", "solve_condition")},
            "max_delta_norm": max([v for k, v in final.items() if k.startswith("delta_norm.")] or [0.0]),
            "first_failure": seq.health.first_failures(), "n_heldout": len(heldout),
            "edit_seconds": sum(seq.info["batch_seconds"]), "seconds": round(time.time() - t, 1),
            "config": seq.config, "model": lm.identity.to_dict(), **(provenance or {})}
    return LifelongSummary(head, sequence=seq)
