"""The Hase et al. test: does the tracing effect at a layer predict how well an edit there works?

Hase, Bansal, Kim & Ghandeharioun (2023), "Does Localization Inform Editing? Surprising Differences in
Causality-Based Localization vs. Knowledge Editing in Language Models" (NeurIPS; code:
``google/belief-localization``) edit every fact at every layer and ask how much of the variance of edit
success across (fact, layer) pairs the causal-tracing effect at that (fact, layer) explains. They fit
ordinary least squares and compare R²:

* ``tracing``: ``success ~ 1 + effect`` -- the tracing effect alone;
* ``layer``: ``success ~ layer`` -- one indicator per edit layer (a per-layer fixed effect), no tracing;
* ``layer+tracing``: ``success ~ layer + effect`` -- does the effect add anything once the layer is known?
* ``layer*tracing``: ``success ~ layer * effect`` -- the same with a slope per layer, the model their analysis
  code fits (``lm(score ~ as.factor(layer) * fraction_restored)``); ``r2_added_by_tracing`` is its R² minus
  the layer-only R², their ``R2_diff``.

Their finding on GPT-J: the layer explains much of the variance, the tracing effect little beyond it.

The tracing effect they regress on (:func:`hase_effects`) is the *fraction restored* at the edit layer:
``max(0, (p_restored - p_corrupted) / |p_clean - p_corrupted|)`` of the MLP cell, maximised over the tokens
from the first subject token on. (Their ``p_clean`` is the larger of the clean score and the best restored
score; here it is the clean score, so a fraction can exceed 1 where a restoration overshoots.) :func:`hase_regression` fits the three models on any success and
effect grids of shape ``[fact, layer]`` and adds 95% percentile-bootstrap intervals, resampling *facts*
(all layers of a resampled fact together, so the intervals respect that a fact's layers are not
independent). The conclusion it states is a rule on those intervals, written out in
:meth:`HaseRegression.conclusion`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from ..artifacts import load_artifact, require, save_artifact
from ..errors import LensMemoryError

__all__ = ["HaseRegression", "hase_regression", "hase_effects", "r_squared", "MODELS"]

#: the three regressions, in the order reported
MODELS = ("tracing", "layer", "layer+tracing", "layer*tracing")


def _ols(y: np.ndarray, X: np.ndarray) -> tuple[float, np.ndarray]:
    """Ordinary least squares of ``y`` on ``X``: (R² = ``1 - SS_res / SS_tot``, NaN when ``y`` is constant; β)."""
    y = np.asarray(y, float)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    ss_res = float(np.sum((y - X @ beta) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return (float("nan") if ss_tot == 0 else 1.0 - ss_res / ss_tot), beta


def r_squared(y: np.ndarray, X: np.ndarray) -> float:
    """Ordinary least squares R² of ``y`` on the columns of ``X`` (``X`` must contain the intercept,
    explicitly or as a full set of indicators): ``1 - SS_res / SS_tot``; NaN when ``y`` is constant."""
    return _ols(y, X)[0]


def _design(model: str, effect: np.ndarray, layer: np.ndarray, n_layers: int) -> np.ndarray:
    """Design matrix of one of :data:`MODELS` for flattened observations."""
    ones = np.ones((effect.shape[0], 1))
    onehot = np.eye(n_layers)[layer]
    if model == "tracing":
        return np.hstack([ones, effect[:, None]])
    if model == "layer":
        return onehot
    if model == "layer+tracing":
        return np.hstack([onehot, effect[:, None]])
    return np.hstack([onehot, onehot * effect[:, None]])


def _fit_all(success: np.ndarray, effect: np.ndarray) -> dict[str, float]:
    """R² of every model, the increase over the layer-only model and the effect's slopes, for ``[fact, layer]`` grids."""
    n_facts, n_layers = success.shape
    y, x = success.reshape(-1), effect.reshape(-1)
    layer = np.tile(np.arange(n_layers), n_facts)
    fits = {m: _ols(y, _design(m, x, layer, n_layers)) for m in MODELS}
    out = {f"r2_{m}": r2 for m, (r2, _) in fits.items()}
    out["r2_added_by_tracing"] = out["r2_layer*tracing"] - out["r2_layer"]
    out["r2_added_by_tracing_additive"] = out["r2_layer+tracing"] - out["r2_layer"]
    for m in ("tracing", "layer+tracing"):  # the interaction model has one slope per layer: no single slope
        out[f"slope_{m}"] = float(fits[m][1][-1])
    return out


def hase_effects(trace: Any, layers: list[int], kind: str = "mlp") -> Float[np.ndarray, "fact layer"]:
    """Hase et al.'s tracing regressor per fact and layer: the fraction of the clean-minus-corrupted score that
    restoring ``kind`` at that layer recovers, floored at 0, maximised over the tokens from the subject on."""
    if kind not in trace.kinds:
        raise LensMemoryError(f"kind {kind!r} was not traced (traced: {trace.kinds})")
    rows = []
    for t in trace.traces:
        gap = abs(t.high - t.low)
        eff = t.effect(kind).numpy()[:, t.subject_range[0]:]
        frac = np.maximum(0.0, eff / gap) if gap > 0 else np.zeros_like(eff)
        rows.append([float(frac[layer].max()) for layer in layers])
    return np.array(rows, float)


def hase_regression(success: Float[np.ndarray, "fact layer"], effect: Float[np.ndarray, "fact layer"], *,
                    n_boot: int = 1000, seed: int = 0, layers: list[int] | None = None,
                    provenance: dict[str, Any] | None = None) -> "HaseRegression":
    """Regress edit success on the tracing effect over (fact, layer) pairs, with and without layer fixed effects.

    Args:
        success: edit success per fact and edit layer (e.g. the rewrite score), ``[fact, layer]``.
        effect: the tracing effect at the same fact and layer, ``[fact, layer]``.
        n_boot: bootstrap resamples of facts for the 95% intervals (0: no intervals).
        layers: the layer numbers of the columns (default ``0 .. n-1``).
    """
    s, e = np.asarray(success, float), np.asarray(effect, float)
    if s.ndim != 2 or s.shape != e.shape:
        raise LensMemoryError(f"success and effect must be [fact, layer] grids of one shape, got {s.shape} and {e.shape}")
    if s.shape[0] < 2 or s.shape[1] < 2:
        raise LensMemoryError(f"the regression needs at least 2 facts and 2 layers, got {s.shape[0]} x {s.shape[1]}")
    if not (np.isfinite(s).all() and np.isfinite(e).all()):
        raise LensMemoryError("success and effect must be finite (a NaN or inf is in the grids)")
    if not isinstance(n_boot, int) or n_boot < 0:
        raise LensMemoryError(f"n_boot must be an integer >= 0, got {n_boot!r}")
    stats = _fit_all(s, e)
    ci: dict[str, list[float]] = {}
    if n_boot:
        rng = np.random.default_rng(seed)
        draws = [_fit_all(s[idx], e[idx]) for idx in (rng.integers(0, s.shape[0], s.shape[0]) for _ in range(n_boot))]
        for k in stats:
            vals = np.array([d[k] for d in draws], float)
            vals = vals[np.isfinite(vals)]
            ci[k] = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if vals.size else [np.nan] * 2
    cols = list(layers) if layers is not None else list(range(s.shape[1]))
    if len(cols) != s.shape[1]:
        raise LensMemoryError(f"layers has {len(cols)} entries for {s.shape[1]} grid columns")
    return HaseRegression(stats=stats, ci95=ci, success=s, effect=e, layers=cols,
                          provenance={**(provenance or {}), "n_boot": n_boot, "seed": seed,
                                      "method": "Hase et al. 2023 regression (OLS R², facts bootstrapped)"})


@dataclass
class HaseRegression:
    """R² of edit success on the tracing effect (:data:`MODELS`), with 95% bootstrap intervals over facts.

    ``stats`` keys: ``r2_<model>`` for each of :data:`MODELS`, ``r2_added_by_tracing`` (interaction model minus
    layer only, Hase et al.'s ``R2_diff``), ``r2_added_by_tracing_additive`` and the effect's slopes
    ``slope_tracing`` / ``slope_layer+tracing``; ``ci95`` the same keys' intervals.
    """

    stats: dict[str, float]
    ci95: dict[str, list[float]]
    success: np.ndarray
    effect: np.ndarray
    layers: list[int]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n_facts(self) -> int:
        return int(self.success.shape[0])

    def conclusion(self) -> str:
        """What the numbers support, by a fixed rule: the tracing effect "adds little" when the upper end of the
        95% interval of its R² increase over the layer-only model is below 0.05, "adds" when the lower end is
        above 0.05, else the data cannot tell."""
        added, lo_hi = self.stats["r2_added_by_tracing"], self.ci95.get("r2_added_by_tracing", [np.nan, np.nan])
        head = (f"Over {self.n_facts} facts x {len(self.layers)} layers, the layer alone explains "
                f"R² = {self.stats['r2_layer']:.3f} of edit success, the tracing effect alone "
                f"{self.stats['r2_tracing']:.3f}, and adding the tracing effect to the layer raises R² by {added:.3f}")
        if not np.isfinite(lo_hi[1]):
            return head + " (no interval computed)."
        head += f" (95% interval {lo_hi[0]:.3f} to {lo_hi[1]:.3f})"
        if lo_hi[1] < 0.05:
            return head + ": as in Hase et al., where the trace peaks says little about where an edit works beyond the layer."
        if lo_hi[0] > 0.05:
            return head + ": unlike Hase et al.'s GPT-J result, the tracing effect explains edit success beyond the layer here."
        return head + ": the interval is too wide to tell whether the tracing effect adds to the layer."

    def summary(self) -> dict[str, Any]:
        return {"n_facts": self.n_facts, "n_layers": len(self.layers), **{k: round(v, 4) for k, v in self.stats.items()},
                "ci95": self.ci95, "conclusion": self.conclusion()}

    def to_dataframe(self):
        """One row per (fact, layer): the success and the tracing effect."""
        import pandas as pd

        n_f, n_l = self.success.shape
        return pd.DataFrame({"fact": np.repeat(np.arange(n_f), n_l), "layer": np.tile(self.layers, n_f),
                             "effect": self.effect.reshape(-1), "success": self.success.reshape(-1)})

    def plot(self, ax=None):
        """Edit success against the tracing effect, coloured by layer, with the R² values in the title."""
        from .plots import plot_hase

        return plot_hase(self, ax=ax)

    def save(self, path: str | Path) -> Path:
        import torch

        meta = {"stats": self.stats, "ci95": self.ci95, "layers": self.layers, "provenance": self.provenance}
        return save_artifact(path, "hase_regression", meta, {"success": torch.from_numpy(self.success),
                                                            "effect": torch.from_numpy(self.effect)})

    @classmethod
    def load(cls, path: str | Path) -> "HaseRegression":
        d, t = load_artifact(path, "hase_regression")
        require(d, ("stats", "layers"), path)
        return cls(stats=d["stats"], ci95=d.get("ci95", {}), success=t["success"].numpy(), effect=t["effect"].numpy(),
                   layers=list(d["layers"]), provenance=d.get("provenance", {}))
