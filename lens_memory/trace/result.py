"""Causal-tracing results: per-fact score grids, average indirect effects, layer suggestions.

The *indirect effect* of a cell is its restored score minus the corrupted score. Averaged over
facts by the paper's token categories (first / middle / last subject token, first subsequent
token, further tokens, last token) it gives the average indirect effect (AIE) curves of Meng et
al. (2022), Fig. 2, with 95% normal intervals over facts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..facts import Fact

__all__ = ["FactTrace", "TraceResult", "CATEGORIES", "token_categories", "AIE", "LayerSuggestion"]

CATEGORIES = ("first subject", "middle subject", "last subject", "first subsequent", "further tokens", "last token")


def token_categories(subject_range: tuple[int, int], n_tokens: int) -> dict[str, list[int]]:
    """Token indices of each category (a category may be empty, e.g. no middle for 2-token subjects)."""
    s0, s1 = subject_range
    last = n_tokens - 1
    return {
        "first subject": [s0],
        "middle subject": list(range(s0 + 1, s1 - 1)),
        "last subject": [s1 - 1],
        "first subsequent": [s1] if s1 <= last else [],
        "further tokens": list(range(s1 + 1, last)),
        "last token": [last],
    }


@dataclass
class FactTrace:
    """Scores of one fact: ``scores[kind]`` is ``[layer, pos]`` (probability of the answer)."""

    fact: Fact
    tokens: list[str]
    subject_range: tuple[int, int]
    answer: str
    answer_id: int
    high: float
    low: float
    scores: dict[str, torch.Tensor]
    seconds: float = 0.0

    def effect(self, kind: str) -> torch.Tensor:
        """Indirect effect ``score - low`` per ``[layer, pos]``."""
        return self.scores[kind] - self.low

    def category_effects(self, kind: str) -> dict[str, np.ndarray]:
        """Per category, the indirect effect per layer averaged over the category's tokens (NaN if empty)."""
        eff = self.effect(kind).numpy()
        cats = token_categories(self.subject_range, len(self.tokens))
        return {c: (eff[:, idx].mean(1) if idx else np.full(eff.shape[0], np.nan)) for c, idx in cats.items()}

    def meta(self) -> dict[str, Any]:
        return {"fact": self.fact.to_dict(), "tokens": self.tokens, "subject_range": list(self.subject_range),
                "answer": self.answer, "answer_id": self.answer_id, "high": self.high, "low": self.low,
                "seconds": self.seconds, "kinds": list(self.scores)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str) -> "FactTrace":
        return cls(fact=Fact.from_dict(meta["fact"]), tokens=meta["tokens"], subject_range=tuple(meta["subject_range"]),
                   answer=meta["answer"], answer_id=meta["answer_id"], high=meta["high"], low=meta["low"],
                   scores={k: tensors[f"{prefix}{k}"] for k in meta["kinds"]}, seconds=meta.get("seconds", 0.0))


@dataclass
class AIE:
    """Average indirect effect of one kind: ``mean/lo/hi[category][layer]`` and facts counted."""

    kind: str
    mean: dict[str, np.ndarray]
    lo: dict[str, np.ndarray]
    hi: dict[str, np.ndarray]
    n: dict[str, int]

    def peak(self) -> tuple[float, str, int]:
        """Largest mean AIE with its category and layer."""
        best = (-math.inf, "", -1)
        for c, m in self.mean.items():
            if np.all(np.isnan(m)):
                continue
            i = int(np.nanargmax(m))
            if m[i] > best[0]:
                best = (float(m[i]), c, i)
        return best


@dataclass
class LayerSuggestion:
    """Where to edit: the best single layer (ROME) and a window of layers (MEMIT)."""

    layer: int
    layers: list[int]
    curve: list[float]
    kind: str = "mlp"
    category: str = "last subject"


@dataclass
class TraceResult:
    """Causal tracing over a fact set, with provenance.

    Attributes:
        provenance: model identity, config (window resolved to an integer), ``window`` (requested, resolved,
            rule), noise scale, hook names, lens_memory version, fact source.
        traces: one :class:`FactTrace` per traced (known) fact.
        n_facts: facts asked for (before the knowledge filter).
        n_known: facts the model knows (the ones traced).
    """

    provenance: dict[str, Any]
    traces: list[FactTrace]
    n_facts: int
    n_known: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> list[str]:
        return list(self.traces[0].scores) if self.traces else []

    @property
    def n_layers(self) -> int:
        return int(self.provenance["model"]["n_layers"])

    @property
    def window(self) -> int:
        """Layers restored together per MLP / attention cell, as resolved for this model."""
        rec = self.provenance.get("window")
        return int(rec["resolved"] if rec else self.provenance["config"]["window"])

    def aie(self, kind: str) -> AIE:
        per_fact = [t.category_effects(kind) for t in self.traces]
        mean, lo, hi, n = {}, {}, {}, {}
        for c in CATEGORIES:
            arr = np.stack([pf[c] for pf in per_fact])  # [facts layer]
            valid = ~np.isnan(arr[:, 0])
            k = int(valid.sum())
            n[c] = k
            if k == 0:
                mean[c] = lo[c] = hi[c] = np.full(arr.shape[1], np.nan)
                continue
            m = arr[valid].mean(0)
            half = 1.96 * arr[valid].std(0, ddof=1) / math.sqrt(k) if k > 1 else np.zeros_like(m)
            mean[c], lo[c], hi[c] = m, m - half, m + half
        return AIE(kind=kind, mean=mean, lo=lo, hi=hi, n=n)

    def suggest_layers(self, width: int = 5, kind: str = "mlp") -> LayerSuggestion:
        """Best edit layer = argmax of the AIE of ``kind`` at the last subject token; MEMIT range =
        the ``width`` consecutive layers with the largest summed AIE there, ending below the last
        layer (MEMIT reads its target at the window's last layer output and refuses the last layer)."""
        if kind not in self.kinds:
            raise ValueError(f"kind {kind!r} was not traced (traced: {self.kinds}); trace with kinds including it")
        curve = self.aie(kind).mean["last subject"]
        usable = max(1, len(curve) - 1)
        width = max(1, min(width, usable))
        best = int(np.nanargmax(curve))
        sums = [float(np.nansum(curve[i:i + width])) for i in range(usable - width + 1)]
        start = int(np.argmax(sums))
        return LayerSuggestion(layer=best, layers=list(range(start, start + width)), curve=[float(x) for x in curve], kind=kind)

    def summary(self) -> dict[str, Any]:
        requested = self.provenance.get("window", {}).get("requested", self.window)
        out: dict[str, Any] = {"n_facts": self.n_facts, "n_known": self.n_known, "n_traced": len(self.traces),
                               "window": self.window, "window_requested": requested}
        secs = [t.seconds for t in self.traces]
        out["seconds_per_fact"] = float(np.mean(secs)) if secs else None
        if "mlp" in self.kinds and self.traces:
            s = self.suggest_layers()
            out["suggested_layer"], out["suggested_layers"] = s.layer, s.layers
        out["peak_aie"] = {}
        for k in self.kinds:
            val, cat, layer = self.aie(k).peak()
            out["peak_aie"][k] = {"value": val, "category": cat, "layer": layer}
        out["mean_high"] = float(np.mean([t.high for t in self.traces])) if self.traces else None
        out["mean_low"] = float(np.mean([t.low for t in self.traces])) if self.traces else None
        return out

    def to_dataframe(self):
        """Long table: one row per (fact, kind, layer, token) with score, effect and token category."""
        import pandas as pd

        rows = []
        for t in self.traces:
            cats = token_categories(t.subject_range, len(t.tokens))
            cat_of = {}
            for c, idx in cats.items():
                for i in idx:
                    cat_of.setdefault(i, c)
            for kind, sc in t.scores.items():
                arr = sc.numpy()
                for layer in range(arr.shape[0]):
                    for pos in range(arr.shape[1]):
                        rows.append((t.fact.case_id, t.fact.relation_id, kind, layer, pos, t.tokens[pos],
                                     cat_of.get(pos, "before subject"), float(arr[layer, pos]),
                                     float(arr[layer, pos] - t.low), t.high, t.low))
        return pd.DataFrame(rows, columns=["case_id", "relation_id", "kind", "layer", "pos", "token", "category",
                                           "score", "effect", "high", "low"])

    def plot(self, fact: int | None = None, kind: str | None = None, **kw):
        """``plot()``: AIE curves for every kind; ``plot(fact=i, kind=k)``: that fact's heatmap."""
        from . import plots

        if fact is None:
            return plots.plot_aie(self, **kw)
        return plots.plot_trace_heatmap(self.traces[fact], kind or self.kinds[0], **kw)

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``trace.json`` + ``trace.safetensors`` into directory ``path`` (atomically).

        An existing ``path`` is replaced only if it is empty or a saved trace result: anything else
        raises :class:`~lens_memory.errors.ArtifactMismatchError` and is left untouched
        (:func:`~lens_memory.artifacts.save_artifact`).
        """
        from ..artifacts import save_artifact

        tensors = {f"{i}/{k}": v.float() for i, t in enumerate(self.traces) for k, v in t.scores.items()}
        return save_artifact(path, "trace", {"provenance": self.provenance, "n_facts": self.n_facts,
                                             "n_known": self.n_known, "extra": self.extra,
                                             "traces": [t.meta() for t in self.traces]}, tensors)

    @classmethod
    def load(cls, path: str | Path) -> "TraceResult":
        from ..artifacts import load_artifact, require

        meta, tensors = load_artifact(path, "trace")
        require(meta, ("provenance", "traces", "n_facts", "n_known"), path)
        traces = [FactTrace.from_meta(m, tensors, f"{i}/") for i, m in enumerate(meta["traces"])]
        return cls(provenance=meta["provenance"], traces=traces, n_facts=meta["n_facts"], n_known=meta["n_known"],
                   extra=meta.get("extra", {}))
