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
  code fits (``lm(score ~ as.factor(layer) * fraction_restored)``); ``r2_diff`` is its R² minus
  the layer-only R², their ``R2_diff``.

Their finding on GPT-J: the layer explains much of the variance, the tracing effect little beyond it.

The tracing effect they regress on (:func:`hase_effects`) is the *fraction restored* at the edit layer:
``max(0, (p_restored - p_corrupted) / |p_clean - p_corrupted|)`` of the MLP cell, maximised over the tokens
from the first subject token on. (Their ``p_clean`` is the larger of the clean score and the best restored
score; here it is the clean score, so a fraction can exceed 1 where a restoration overshoots.)

**Does tracing add?** The in-sample R² gain of a nested OLS model is never negative, so bootstrapping it (what
this module did before issue 29) is biased towards "adds": simulated with a layer effect like Gemma's and a
tracing effect unrelated to success, the null's mean gain at 8 facts x 6 layers was 0.054, and at 8 x 18 the old
interval rule said "explains" for 27 of 60 null draws. Hase et al. test the nested models with an F-test
(``anova(model_both, model_lyr)`` in their ``data-analysis.ipynb``); :func:`hase_regression` does the same
(statsmodels' ``compare_f_test``, layer-only against layer x tracing) and, as a check that does not assume
independent errors (a fact's layers are not independent), a **permutation test**: the effect grid's rows are
shuffled over facts (each fact keeps its own effect profile across layers; only its pairing with success is
broken) ``n_perm`` times, and ``permutation_p = (1 + #{R2_diff_perm >= R2_diff}) / (1 + n_perm)``.

The decision (:meth:`HaseRegression.decision`), a rule fixed before any run (``ALPHA = 0.05``, ``SMALL = 0.05``):

* ``"adds"`` -- the F-test *and* the permutation test both reject at ``ALPHA``;
* ``"adds_little"`` -- otherwise, when the upper ends of two 95% intervals of the population ``R2_diff`` are both
  below ``SMALL``: (a) the noncentral-F interval, inverting the distribution of the F statistic (Steiger & Fouladi
  1997; Steiger 2004, "Beyond the F test"): ``λ`` with ``ncf.cdf(F; df1, df2, λ) = 0.975 / 0.025``, ``f² = λ / N``
  (``N`` observations), ``R2_diff = f² (1 - R²_full)`` with the sample's ``R²_full`` -- it assumes independent
  observations and alone called planted effects "little" in 20% of simulated draws at 8 facts x 18 layers; (b)
  the percentile interval of a cluster bootstrap of facts of the bias-corrected gain (:func:`debiased_gain_interval`:
  each resample's gain minus its row-permuted gains' mean), which keeps a fact's layers together;
* ``"cannot_tell"`` -- otherwise.

Under a simulated null the rule says ``"adds"`` at most at ``ALPHA`` (the permutation test is exact; requiring
both tests can only lower the rate), tested in ``tests/unit/test_localize.py`` and measured at Gemma-like sizes
by ``analyses/bench_hase_null.py``. The percentile-bootstrap intervals over facts (all layers of a resampled fact
together) are kept for the R² values themselves as descriptive intervals; they do not enter the decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from ..artifacts import load_artifact, require, save_artifact
from ..errors import LensMemoryError

__all__ = ["HaseRegression", "hase_regression", "hase_effects", "r_squared", "nested_f_test", "r2_diff_interval",
           "permutation_p", "debiased_gain_interval",
           "MODELS", "DECISIONS", "ALPHA", "SMALL"]

#: the three regressions, in the order reported
MODELS = ("tracing", "layer", "layer+tracing", "layer*tracing")
#: the decision's outcomes (:meth:`HaseRegression.decision`)
DECISIONS = ("adds", "adds_little", "cannot_tell")
#: the decision rule's test level, and the population R² increase below which tracing "adds little"
ALPHA, SMALL = 0.05, 0.05


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
    out["r2_diff"] = out["r2_layer*tracing"] - out["r2_layer"]
    out["r2_diff_additive"] = out["r2_layer+tracing"] - out["r2_layer"]
    for m in ("tracing", "layer+tracing"):  # the interaction model has one slope per layer: no single slope
        out[f"slope_{m}"] = float(fits[m][1][-1])
    return out


def _grid(model: str, effect: np.ndarray) -> np.ndarray:
    """The design matrix of one of :data:`MODELS` for a ``[fact, layer]`` effect grid, rows fact-major."""
    n_facts, n_layers = effect.shape
    return _design(model, effect.reshape(-1), np.tile(np.arange(n_layers), n_facts), n_layers)


def nested_f_test(success: np.ndarray, effect: np.ndarray) -> dict[str, float]:
    """Hase et al.'s F-test of ``success ~ layer`` against ``success ~ layer * effect`` (their
    ``anova(model_both, model_lyr)``), by statsmodels: ``f_stat``, ``f_test_p``, ``df1``, ``df2``, ``n_obs``."""
    import statsmodels.api as sm

    y = np.asarray(success, float).reshape(-1)
    small = sm.OLS(y, _grid("layer", effect)).fit()
    big = sm.OLS(y, _grid("layer*tracing", effect)).fit()
    if big.df_resid <= 0:
        return {"f_stat": float("nan"), "f_test_p": float("nan"), "df1": float("nan"), "df2": 0.0, "n_obs": len(y)}
    F, p, df1 = big.compare_f_test(small)
    return {"f_stat": float(F), "f_test_p": float(p), "df1": float(df1), "df2": float(big.df_resid), "n_obs": len(y)}


def _noncentrality(F: float, df1: float, df2: float, q: float) -> float:
    """The noncentrality ``λ`` with ``ncf.cdf(F; df1, df2, λ) = q`` (0 where even ``λ = 0`` gives a cdf ``<= q``)."""
    from scipy.optimize import brentq
    from scipy.stats import f as f_dist, ncf

    if f_dist.cdf(F, df1, df2) <= q:
        return 0.0
    hi = max(1.0, F * df1)
    while ncf.cdf(F, df1, df2, hi) > q and hi < 1e9:
        hi *= 2.0
    return float(brentq(lambda lam: ncf.cdf(F, df1, df2, lam) - q, 1e-12, hi, xtol=1e-10))


def r2_diff_interval(test: dict[str, float], r2_full: float) -> list[float]:
    """95% interval of the population ``R2_diff`` by inverting the noncentral F (Steiger & Fouladi 1997):
    ``R2_diff = λ / N · (1 - R²_full)`` at the ``λ`` bounds of :func:`_noncentrality` (0.975, 0.025)."""
    F, df1, df2, n = test["f_stat"], test["df1"], test["df2"], test["n_obs"]
    if not (np.isfinite(F) and df2 > 0):
        return [float("nan"), float("nan")]
    scale = (1.0 - r2_full) / n
    return [_noncentrality(F, df1, df2, 0.975) * scale, _noncentrality(F, df1, df2, 0.025) * scale]


def _gain(success: np.ndarray, effect: np.ndarray) -> float:
    """``R2_diff`` of one ``[fact, layer]`` grid: (SS_res(layer) - SS_res(layer x tracing)) / SS_tot."""
    y = np.asarray(success, float).reshape(-1)
    return _ols(y, _grid("layer*tracing", effect))[0] - _ols(y, _grid("layer", effect))[0]


def _null_gains(success: np.ndarray, effect: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``R2_diff`` with the effect grid's rows shuffled over facts, ``n`` times (the null: no pairing)."""
    return np.array([_gain(success, effect[rng.permutation(effect.shape[0])]) for _ in range(n)], float)


def permutation_p(success: np.ndarray, effect: np.ndarray, n_perm: int = 1000, seed: int = 0) -> float:
    """``(1 + #{R2_diff(permuted) >= R2_diff}) / (1 + n_perm)``, the effect grid's rows shuffled over facts."""
    observed = _gain(success, effect)
    if n_perm == 0 or not np.isfinite(observed):
        return float("nan")
    null = _null_gains(success, effect, n_perm, np.random.default_rng(seed))
    return float((1 + np.sum(null >= observed - 1e-12 * max(1.0, abs(observed)))) / (1 + n_perm))


def debiased_gain_interval(success: np.ndarray, effect: np.ndarray, n_boot: int = 1000, n_null: int = 10,
                           seed: int = 0) -> list[float]:
    """95% percentile interval of the *bias-corrected* ``R2_diff`` over a cluster bootstrap of facts.

    Each resample draws facts with replacement (a fact's layers stay together, so the within-fact dependence the
    F-test ignores is kept) and scores ``R2_diff - mean(R2_diff of n_null row-permutations of the same resample)``:
    the in-sample gain minus what the same design gains by chance. Simulated (``analyses/bench_hase_null.py``), it
    rarely calls a real effect small, where the noncentral-F interval alone did (20% of planted draws at 8 x 18).
    """
    rng = np.random.default_rng(seed + 1)
    n, vals = success.shape[0], []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        s, e = success[idx], effect[idx]
        vals.append(_gain(s, e) - float(np.nanmean(_null_gains(s, e, n_null, rng))))
    v = np.asarray(vals, float)
    v = v[np.isfinite(v)]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v.size else [float("nan")] * 2


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
                    n_boot: int = 1000, n_perm: int = 1000, seed: int = 0, layers: list[int] | None = None,
                    provenance: dict[str, Any] | None = None) -> "HaseRegression":
    """Regress edit success on the tracing effect over (fact, layer) pairs, with and without layer fixed effects,
    and decide whether the effect adds to the layer (module docstring: F-test, permutation check, fixed rule).

    Args:
        success: edit success per fact and edit layer (e.g. the rewrite score), ``[fact, layer]``.
        effect: the tracing effect at the same fact and layer, ``[fact, layer]``.
        n_boot: bootstrap resamples of facts for the descriptive 95% intervals of the R² values (0: none).
        n_perm: permutations of facts for the permutation test (0: none; the decision then can't say "adds").
        layers: the layer numbers of the columns (default ``0 .. n-1``).
    """
    s, e = np.asarray(success, float), np.asarray(effect, float)
    if s.ndim != 2 or s.shape != e.shape:
        raise LensMemoryError(f"success and effect must be [fact, layer] grids of one shape, got {s.shape} and {e.shape}")
    if s.shape[0] < 2 or s.shape[1] < 2:
        raise LensMemoryError(f"the regression needs at least 2 facts and 2 layers, got {s.shape[0]} x {s.shape[1]}")
    if not (np.isfinite(s).all() and np.isfinite(e).all()):
        raise LensMemoryError("success and effect must be finite (a NaN or inf is in the grids)")
    for name, v in (("n_boot", n_boot), ("n_perm", n_perm)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise LensMemoryError(f"{name} must be an integer >= 0, got {v!r}")
    cols = list(layers) if layers is not None else list(range(s.shape[1]))
    if len(cols) != s.shape[1]:
        raise LensMemoryError(f"layers has {len(cols)} entries for {s.shape[1]} grid columns")
    stats = _fit_all(s, e)
    test = nested_f_test(s, e)
    stats.update({k: test[k] for k in ("f_stat", "f_test_p", "df1", "df2")},
                 permutation_p=permutation_p(s, e, n_perm, seed))
    ci: dict[str, list[float]] = {}
    if n_boot:
        rng = np.random.default_rng(seed)
        draws = [_fit_all(s[idx], e[idx]) for idx in (rng.integers(0, s.shape[0], s.shape[0]) for _ in range(n_boot))]
        for k in (k for k in draws[0] if not k.startswith("r2_diff")):  # R² gains: the F interval below
            vals = np.array([d[k] for d in draws], float)
            vals = vals[np.isfinite(vals)]
            ci[k] = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if vals.size else [np.nan] * 2
    ci["r2_diff"] = r2_diff_interval(test, stats["r2_layer*tracing"])
    if n_boot:
        ci["r2_diff_debiased"] = debiased_gain_interval(s, e, n_boot, seed=seed)
    return HaseRegression(stats=stats, ci95=ci, success=s, effect=e, layers=cols,
                          provenance={**(provenance or {}), "n_boot": n_boot, "n_perm": n_perm, "seed": seed,
                                      "alpha": ALPHA, "small": SMALL,
                                      "method": "Hase et al. 2023 regression: OLS R², nested F-test (statsmodels), "
                                                "permutation of facts, noncentral-F interval of R2_diff"})


@dataclass
class HaseRegression:
    """R² of edit success on the tracing effect (:data:`MODELS`), the F-test and permutation test of the R² gain,
    and the decision they support.

    ``stats`` keys: ``r2_<model>`` for each of :data:`MODELS`; ``r2_diff`` (interaction model minus layer only,
    Hase et al.'s ``R2_diff``) and ``r2_diff_additive`` (one slope); the effect's slopes ``slope_tracing`` /
    ``slope_layer+tracing``; ``f_stat``, ``f_test_p``, ``df1``, ``df2`` (the nested F-test) and ``permutation_p``.
    ``ci95``: descriptive fact-bootstrap intervals of the R² values and slopes, and ``r2_diff``'s noncentral-F
    interval.
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

    def decision(self) -> str:
        """One of :data:`DECISIONS` by the rule fixed in advance (module docstring): ``"adds"`` when the F-test and
        the permutation test both have ``p < ALPHA``; else ``"adds_little"`` when the upper ends of both 95%
        intervals of the gain (noncentral F, bias-corrected cluster bootstrap) are below ``SMALL``; else
        ``"cannot_tell"``."""
        f_p, perm_p = self.stats.get("f_test_p", np.nan), self.stats.get("permutation_p", np.nan)
        if f_p < ALPHA and perm_p < ALPHA:
            return "adds"
        highs = [self.ci95.get(k, [np.nan, np.nan])[1] for k in ("r2_diff", "r2_diff_debiased")]
        # an interval that could not be computed (a saturated model: no residual degrees of freedom) decides nothing
        return "adds_little" if all(np.isfinite(h) and h < SMALL for h in highs) else "cannot_tell"

    def conclusion(self) -> str:
        """The decision in words, with the numbers behind it."""
        st, (lo, hi) = self.stats, self.ci95.get("r2_diff", [np.nan, np.nan])
        blo, bhi = self.ci95.get("r2_diff_debiased", [np.nan, np.nan])
        head = (f"Over {self.n_facts} facts x {len(self.layers)} layers, the layer alone explains "
                f"R² = {st['r2_layer']:.3f} of edit success, the tracing effect alone {st['r2_tracing']:.3f}; "
                f"adding the tracing effect (one slope per layer) raises R² by {st['r2_diff']:.3f} "
                f"(95% intervals: noncentral F {lo:.3f} to {hi:.3f}, bias-corrected bootstrap {blo:.3f} to {bhi:.3f}; "
                f"F-test p = {st.get('f_test_p', np.nan):.3g}, permutation p = {st.get('permutation_p', np.nan):.3g})")
        return head + {
            "adds": ": unlike Hase et al.'s GPT-J result, the tracing effect explains edit success beyond the layer here.",
            "adds_little": ": as in Hase et al., where the trace peaks says little about where an edit works beyond "
                           "the layer.",
            "cannot_tell": ": the data cannot tell whether the tracing effect adds to the layer."}[self.decision()]

    def summary(self) -> dict[str, Any]:
        return {"n_facts": self.n_facts, "n_layers": len(self.layers), **{k: round(v, 4) for k, v in self.stats.items()},
                "f_test_p": self.stats.get("f_test_p"), "permutation_p": self.stats.get("permutation_p"),
                "ci95": self.ci95, "decision": self.decision(), "conclusion": self.conclusion()}

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
