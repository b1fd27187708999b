"""The model's health along a sequence of edits: what lifelong editing keeps and what it breaks.

Sequential editing is known to collapse models: sequential MEMIT breaks after a few hundred edits,
ROME's "disabling edits" (Gupta, Baskaran & Anumanchipalli 2024) blow single updates up, and AlphaEdit
(Fang et al. 2025) was built to prevent it. A :class:`HealthProbe` measures, after every ``every``-th
batch of a sequence (:func:`~lens_memory.edit.sequence.sequential_edit`), on fixed inputs:

* ``retention`` -- ROME's efficacy success (``P(o*) > P(o)`` on the edit prompt, probabilities as
  ``exp(-mean token NLL)``) averaged over **every fact edited so far**: are earlier edits still there?
* ``batch_efficacy`` / ``batch_paraphrase`` / ``batch_neighborhood`` -- ROME's ES / PS / NS of the batch
  just written (:func:`~lens_memory.metrics.fact_scores`); neighbourhood prompts about any subject edited so
  far are left out by the same rule as :func:`~lens_memory.harness.evaluate_edits`
  (:func:`~lens_memory.harness.knowledge.unedited_neighbours`), their count is ``batch_neighborhood_dropped``;
* ``heldout_accuracy`` -- EasyEdit's teacher-forced token accuracy of the *true* object on the edit
  prompts of facts that are never edited (their knowledge should survive), and ``heldout_accuracy_ratio``
  (after / before the sequence);
* ``perplexity`` on held-out text (``exp`` of the mean next-token NLL over ``text_tokens`` tokens of
  ``text``, BOS-prefixed blocks, the BOS position not scored) and ``perplexity_ratio`` (after / before);

and the editing side adds the relative norm of the accumulated ``ΔW`` per layer and the condition
number of the batch's solve -- the collapse signature. :class:`LifelongHealth` holds the rows;
:meth:`LifelongHealth.first_failures` names, per metric, the first edit count at which it crossed its
threshold (``HealthConfig.thresholds``: retention < 0.9, held-out accuracy ratio < 0.95, perplexity
ratio > 1.05 by default: the issue's "within 5%" and "≥ 90% retained").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..artifacts import load_artifact, require, save_artifact
from ..corpus import load_corpus, token_blocks
from ..errors import LensMemoryError
from ..metrics import fact_scores, score_targets
from .knowledge import unedited_neighbours

__all__ = ["HealthConfig", "HealthProbe", "LifelongHealth", "HEALTH_METRICS", "DEFAULT_THRESHOLDS"]

#: the curves every health row carries (besides ``n_edits`` and ``batch``)
HEALTH_METRICS = ("retention", "batch_efficacy", "batch_paraphrase", "batch_neighborhood", "heldout_accuracy",
                  "heldout_accuracy_ratio", "perplexity", "perplexity_ratio")
#: metric -> (direction, threshold): ``"min"`` fails below, ``"max"`` fails above
DEFAULT_THRESHOLDS = {"retention": ("min", 0.9), "heldout_accuracy_ratio": ("min", 0.95),
                      "perplexity_ratio": ("max", 1.05)}


@dataclass(frozen=True)
class HealthConfig:
    """What health is measured on, and how often.

    Attributes:
        every: measure after every ``every``-th batch (and always after the last).
        heldout: facts that are never edited (their true objects are scored).
        text: the held-out text corpus for perplexity (a :func:`~lens_memory.corpus.load_corpus` spec).
        text_tokens: tokens of ``text`` scored.
        thresholds: metric -> ``(direction, value)``, see :data:`DEFAULT_THRESHOLDS`.
    """

    every: int = 1
    heldout: tuple = ()
    text: Any = "offline"
    text_tokens: int = 1024
    thresholds: dict = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))

    def __post_init__(self) -> None:
        for name in ("every", "text_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise LensMemoryError(f"HealthConfig.{name} must be an integer >= 1, got {v!r}")
        object.__setattr__(self, "heldout", tuple(self.heldout))
        for m, rule in self.thresholds.items():
            if m not in HEALTH_METRICS or not (isinstance(rule, (tuple, list)) and len(rule) == 2
                                               and rule[0] in ("min", "max")):
                raise LensMemoryError(f"HealthConfig.thresholds[{m!r}] must be ('min'|'max', value) for one of "
                                      f"{HEALTH_METRICS}, got {rule!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"every": self.every, "heldout": [f.case_id for f in self.heldout], "n_heldout": len(self.heldout),
                "text": self.text if isinstance(self.text, str) else "texts", "text_tokens": self.text_tokens,
                "thresholds": {k: list(v) for k, v in self.thresholds.items()}}


class HealthProbe:
    """The fixed inputs of :class:`HealthConfig`, prepared once; :meth:`measure` scores the current model."""

    def __init__(self, lm: Any, config: HealthConfig):
        self.config = config
        # two rows per forward: the 262k-vocabulary logits of 2 x 128 tokens are 0.5 GiB in float64
        self.blocks = list(token_blocks(lm, load_corpus(config.text), config.text_tokens, seq_len=128, batch_size=2))
        self.baseline: dict[str, float] | None = None
        self.last_retention: list[float] = []  # per edited fact, at the last measurement

    def perplexity(self, lm: Any) -> float:
        """``exp`` of the mean next-token NLL over the text blocks (the BOS position is context only)."""
        nll, n = 0.0, 0
        with torch.no_grad():
            for ids in self.blocks:
                logits = lm.hf(input_ids=ids.to(lm.device)).logits[:, :-1].double()
                tgt = ids[:, 1:].to(logits.device)
                nll += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="sum"))
                n += tgt.numel()
        return math.exp(nll / n)

    def measure(self, lm: Any, edited: Sequence[Any], batch: Sequence[Any]) -> dict[str, float]:
        """One health row on the current weights (``edited``: every fact so far; ``batch``: the last batch)."""
        row: dict[str, float] = {"n_edits": len(edited)}
        if edited:
            s = score_targets(lm, [f.prompt for f in edited] * 2, [f.target_new for f in edited]
                              + [f.target_true for f in edited])
            n = len(edited)
            self.last_retention = [float(x) for x in s.mean_logprob[:n] > s.mean_logprob[n:]]
            row["retention"] = float(np.mean(self.last_retention))
            # the one neighbourhood rule (harness.knowledge): prompts about any subject edited so far are the
            # edits working, not leaking, and are left out; how many is recorded
            kept, dropped = unedited_neighbours(batch, edited=[f.subject for f in edited])
            row["batch_neighborhood_dropped"] = dropped
            scores = fact_scores(lm, kept)
            for k in ("efficacy", "paraphrase", "neighborhood"):
                vals = [r[f"{k}_success"] for r in scores if not math.isnan(r[f"{k}_success"])]
                row[f"batch_{k}"] = float(np.mean(vals)) if vals else float("nan")
        held = self.config.heldout
        if held:
            acc = score_targets(lm, [f.prompt for f in held], [f.target_true for f in held]).token_accuracy
            row["heldout_accuracy"] = float(np.mean(acc))
        row["perplexity"] = self.perplexity(lm)
        if self.baseline is None:
            self.baseline = dict(row)
        for m in ("heldout_accuracy", "perplexity"):
            if m in row and self.baseline.get(m):
                row[f"{m}_ratio"] = row[m] / self.baseline[m]
        return row


@dataclass
class LifelongHealth:
    """Health rows of one edit sequence (row 0: the unedited model), with provenance.

    ``rows``: dicts with ``n_edits``, ``batch`` and :data:`HEALTH_METRICS`, plus ``delta_norm.layer{j}``
    (``‖ΔW_accumulated‖_F / ‖W_0‖_F``), ``solve_condition`` and ``update_norm`` (largest ``‖ΔW‖_F`` of the batch).
    """

    method: str
    rows: list[dict[str, Any]]
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def final(self) -> dict[str, Any]:
        """The last row (after the last measured batch)."""
        return dict(self.rows[-1]) if self.rows else {}

    def first_failures(self, thresholds: dict | None = None) -> dict[str, int | None]:
        """Per thresholded metric, the edit count of the first row past its threshold (``None``: never)."""
        rules = thresholds if thresholds is not None else self.provenance.get("thresholds", DEFAULT_THRESHOLDS)
        out: dict[str, int | None] = {}
        for m, (direction, value) in rules.items():
            hits = [r["n_edits"] for r in self.rows if r.get("n_edits", 0) > 0 and m in r
                    and (r[m] < value if direction == "min" else r[m] > value)]
            out[m] = hits[0] if hits else None
        return out

    def plot(self, axes=None):
        """Health curves against the number of edits: retention and batch scores, held-out ratios, ΔW norms."""
        from ..viz import plot_health

        return plot_health(self, axes=axes)

    def save(self, path: str | Path) -> Path:
        """Write ``health.json`` into directory ``path`` atomically."""
        return save_artifact(path, "health", {"method": self.method, "rows": self.rows, "provenance": self.provenance})

    @classmethod
    def load(cls, path: str | Path) -> "LifelongHealth":
        d, _ = load_artifact(path, "health")
        require(d, ("method", "rows"), path)
        return cls(method=d["method"], rows=d["rows"], provenance=d.get("provenance", {}))
