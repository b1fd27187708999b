"""Is the fast estimate of a trace good enough to use? Attribution patching checked against exact tracing.

Kramár et al. (2024) judge an attribution estimator by how it ranks nodes and by its *false negatives*:
nodes with a large true effect that the estimate scores low, which a researcher filtering by the estimate
would never look at. :func:`validate_estimate` compares two :class:`~lens_memory.trace.TraceResult`
objects traced on the same facts and kinds -- one exact (``engine="fast"`` or ``"reference"``), one
estimated (``"atp"`` / ``"atp*"``) -- per fact and kind:

* ``spearman``: Spearman rank correlation of the two effect maps over every cell that can have an effect
  (all layers, tokens from the first subject token on; the cells before it are exactly equal in both and
  would inflate the correlation with ties);
* ``top_cell_agree``: the largest-effect cell is the same;
* ``layer_agree``: the layer of the largest effect at the last subject token (the per-fact version of
  :meth:`~lens_memory.trace.TraceResult.suggest_layers`) is the same;
* ``false_negatives``: cells whose exact effect is at least ``large`` x the map's largest exact effect but
  whose estimate is below ``small`` x the largest estimate (``n_large`` such large cells in all).

Over the fact set it also compares the suggested layers of the two results and the seconds per fact
(``speedup`` = exact seconds / estimate seconds, as each engine recorded for its own scoring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import load_artifact, require, save_artifact
from ..errors import LensMemoryError
from ..metrics import mean_ci

__all__ = ["AtPValidation", "validate_estimate", "fact_agreement"]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def fact_agreement(exact: np.ndarray, estimate: np.ndarray, subject_range: tuple[int, int], *,
                   large: float = 0.5, small: float = 0.1) -> dict[str, Any]:
    """Agreement of one fact's exact and estimated effect maps ``[layer, pos]`` (see the module docstring)."""
    s0, s1 = subject_range
    e, a = exact[:, s0:], estimate[:, s0:]
    top_e, top_a = np.unravel_index(np.argmax(e), e.shape), np.unravel_index(np.argmax(a), a.shape)
    big = e >= large * e.max() if e.max() > 0 else np.zeros_like(e, bool)
    missed = big & (a < small * a.max()) if a.max() > 0 else big
    last = s1 - 1 - s0
    return {"spearman": _spearman(e.ravel(), a.ravel()), "top_cell_agree": bool(top_e == top_a),
            "top_cell_exact": [int(top_e[0]), int(top_e[1]) + s0], "top_cell_estimate": [int(top_a[0]), int(top_a[1]) + s0],
            "layer_exact": int(np.argmax(e[:, last])), "layer_estimate": int(np.argmax(a[:, last])),
            "layer_agree": bool(np.argmax(e[:, last]) == np.argmax(a[:, last])),
            "n_large": int(big.sum()), "false_negatives": int(missed.sum()),
            "false_negative_cells": [[int(i), int(j) + s0] for i, j in zip(*np.nonzero(missed))]}


def validate_estimate(exact: Any, estimate: Any, *, large: float = 0.5, small: float = 0.1) -> "AtPValidation":
    """Compare an estimated trace with the exact trace of the same facts (see the module docstring)."""
    if not (0 < small < 1 and 0 < large <= 1):
        raise LensMemoryError(f"thresholds must satisfy 0 < small < 1 and 0 < large <= 1, got small={small}, large={large}")
    ids_e = [t.fact.to_dict() for t in exact.traces]
    ids_a = [t.fact.to_dict() for t in estimate.traces]
    if ids_e != ids_a:
        raise LensMemoryError(f"the two traces hold different facts ({len(ids_e)} vs {len(ids_a)}, or another order); "
                              f"trace the same fact list with both engines")
    kinds = [k for k in exact.kinds if k in estimate.kinds]
    if not kinds:
        raise LensMemoryError(f"no kind traced by both (exact: {exact.kinds}, estimate: {estimate.kinds})")
    rows = []
    for i, (te, ta) in enumerate(zip(exact.traces, estimate.traces)):
        for k in kinds:
            row = fact_agreement(te.effect(k).numpy(), ta.effect(k).numpy(), te.subject_range, large=large, small=small)
            rows.append({"fact": i, "case_id": te.fact.case_id, "kind": k, **row})
    sec_e = float(np.mean([t.seconds for t in exact.traces]))
    sec_a = float(np.mean([t.seconds for t in estimate.traces]))
    layers = {}
    if "mlp" in kinds:
        layers = {"suggested_layer_exact": exact.suggest_layers().layer,
                  "suggested_layer_estimate": estimate.suggest_layers().layer}
    prov = {"exact": exact.provenance.get("estimator", exact.provenance["config"]["engine"]),
            "estimate": estimate.provenance.get("estimator", estimate.provenance["config"]["engine"]),
            "model": exact.provenance["model"], "config_exact": exact.provenance["config"],
            "config_estimate": estimate.provenance["config"], "large": large, "small": small}
    return AtPValidation(rows=rows, seconds_exact=sec_e, seconds_estimate=sec_a, layers=layers, provenance=prov)


@dataclass
class AtPValidation:
    """Per (fact, kind) agreement of an estimated trace with the exact one; :meth:`summary` aggregates it."""

    rows: list[dict[str, Any]]
    seconds_exact: float
    seconds_estimate: float
    layers: dict[str, int] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> list[str]:
        return list(dict.fromkeys(r["kind"] for r in self.rows))

    @property
    def speedup(self) -> float:
        return self.seconds_exact / self.seconds_estimate if self.seconds_estimate > 0 else math.inf

    def summary(self) -> dict[str, Any]:
        """Means over facts per kind (Spearman with a 95% normal interval), agreement rates, false negatives."""
        out: dict[str, Any] = {"n_facts": len({r["fact"] for r in self.rows}), "speedup": self.speedup,
                               "seconds_per_fact_exact": self.seconds_exact,
                               "seconds_per_fact_estimate": self.seconds_estimate, **self.layers}
        if self.layers:
            out["suggested_layer_agree"] = self.layers["suggested_layer_exact"] == self.layers["suggested_layer_estimate"]
        for k in self.kinds:
            rs = [r for r in self.rows if r["kind"] == k]
            rho = [r["spearman"] for r in rs if not math.isnan(r["spearman"])]
            m, lo, hi = mean_ci(rho) if rho else (float("nan"),) * 3
            out[k] = {"spearman_mean": m, "spearman_ci95": [lo, hi], "n": len(rho),
                      "top_cell_agreement": float(np.mean([r["top_cell_agree"] for r in rs])),
                      "layer_agreement": float(np.mean([r["layer_agree"] for r in rs])),
                      "false_negatives": int(sum(r["false_negatives"] for r in rs)),
                      "large_cells": int(sum(r["n_large"] for r in rs))}
        return out

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in r.items() if k != "false_negative_cells"} for r in self.rows])

    def plot(self, ax=None):
        """Per kind, the Spearman correlation of every fact (dots) and its mean (bar)."""
        from .plots import plot_atp_validation

        return plot_atp_validation(self, ax=ax)

    def save(self, path: str | Path) -> Path:
        meta = {"rows": self.rows, "seconds_exact": self.seconds_exact, "seconds_estimate": self.seconds_estimate,
                "layers": self.layers, "provenance": self.provenance}
        return save_artifact(path, "atp_validation", meta)

    @classmethod
    def load(cls, path: str | Path) -> "AtPValidation":
        d, _ = load_artifact(path, "atp_validation")
        require(d, ("rows", "seconds_exact", "seconds_estimate"), path)
        return cls(rows=d["rows"], seconds_exact=d["seconds_exact"], seconds_estimate=d["seconds_estimate"],
                   layers=d.get("layers", {}), provenance=d.get("provenance", {}))
