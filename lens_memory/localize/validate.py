"""Is the fast estimate of a trace good enough to use? Attribution patching checked against exact tracing.

Kramár et al. (2024) judge an attribution estimator by how it ranks nodes and by its *false negatives*:
nodes with a large true effect that the estimate scores low, which a researcher filtering by the estimate
would never look at. :func:`validate_estimate` compares two :class:`~lens_memory.trace.TraceResult`
objects traced on the same facts, noise and kinds -- one exact (``engine="fast"`` or ``"reference"``), one
estimated (``"atp"`` / ``"atp*"``) -- per fact and kind:

* ``spearman``: Spearman rank correlation of the two effect maps over every cell that can have an effect
  (all layers, tokens from the first subject token on; the cells before it are exactly equal in both and
  would inflate the correlation with ties);
* ``top_cell_agree``: the largest-effect cell is the same;
* ``layer_agree``: the layer of the largest effect at the last subject token is the same;
* ``false_negatives``: cells whose exact effect is at least ``large`` x the map's largest exact effect but
  whose estimate is below ``small`` x the largest estimate (``n_large`` such large cells in all).

**Like for like.** An estimator estimates one quantity, and it is compared with the exact value of *that*
quantity. AtP and AtP* with the QK fix alone estimate the signed mean effect over noise samples, the quantity
tracing averages, and are compared with the exact trace. AtP* with GradDrop estimates a magnitude,
``E|I(n)|`` per noise sample (Kramár et al.'s ``c(n)``; :mod:`lens_memory.trace.atp_star`): it is compared
with ``E|exact effect|``, the exact effect of every cell for each noise sample alone, in absolute value,
averaged over the samples (:func:`exact_magnitude_trace`; one exact trace per sample, with the noise rows of
the exact trace, so their signed mean reproduces it, which is checked). Against the signed mean a magnitude
estimator would be penalised for every cell whose samples disagree in sign: a perfect ``E|effect|`` estimate
does not rank like the signed mean (unit test). Without the ``E|exact|`` trace a magnitude estimate falls
back to the signed comparison with a warning; the result records which comparison was used
(``summary()["comparison"]``, ``["like_for_like"]``).

**Peaks.** Per fact, the *edit layer* each trace suggests -- the argmax of the MLP effect at the last subject
token, what :meth:`~lens_memory.trace.TraceResult.suggest_layers` picks for ROME on that fact alone -- from
the exact trace as it is (signed: where exact tracing would edit) and from the estimate; ``summary()`` gives
the fraction of facts where they agree with its Wilson 95% interval (``edit_layer_agreement``).

Over the fact set it also compares the suggested layers of the two results and the seconds per fact
(``speedup`` = exact seconds / estimate seconds, as each engine recorded for its own scoring).
:func:`atp_star_ablation` traces AtP* with the QK fix alone, GradDrop alone and both, each validated like
for like.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts import check_identity, load_artifact, require, save_artifact
from ..errors import LensMemoryError
from ..metrics import mean_ci, proportion_ci

__all__ = ["AtPValidation", "validate_estimate", "fact_agreement", "estimand", "per_sample_effects",
           "exact_magnitude_trace", "edit_layer", "atp_star_ablation", "ATP_STAR_ARMS", "COMPARISONS"]

log = logging.getLogger(__name__)

#: how an estimate is compared: by what it estimates (``"auto"``), or forced to one exact quantity
COMPARISONS = ("auto", "signed", "magnitude")
#: AtP*'s per-fix ablation: arm name -> the fixes it applies (``TraceConfig.atp_fixes``)
ATP_STAR_ARMS: dict[str, tuple[str, ...]] = {"qk": ("qk",), "graddrop": ("graddrop",), "both": ("qk", "graddrop")}


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


def edit_layer(trace: Any, kind: str = "mlp") -> int:
    """The layer one fact's trace suggests for a ROME edit: the argmax of its ``kind`` effect at the last subject
    token (:meth:`~lens_memory.trace.TraceResult.suggest_layers` on a result holding this fact alone)."""
    return int(np.nanargmax(trace.effect(kind)[:, trace.subject_range[1] - 1].numpy()))


def estimand(result: Any) -> str:
    """What a trace's cells hold: ``"magnitude"`` (``low + E|effect|``: AtP* with GradDrop, or an
    :func:`exact_magnitude_trace`) or ``"signed"`` (``low +`` the mean effect: exact tracing, AtP, AtP* with the
    QK fix alone)."""
    prov = result.provenance
    if "estimand" in prov:
        return prov["estimand"]
    cfg = prov.get("config", {})
    return "magnitude" if cfg.get("engine") == "atp*" and "graddrop" in cfg.get("atp_fixes", ()) else "signed"


@torch.no_grad()
def per_sample_effects(lm: Any, prep: Any, cfg: Any, kinds: tuple[str, ...], metric: Any
                       ) -> dict[str, torch.Tensor]:
    """The exact effect of every cell for each noise sample alone: ``{kind: [n_samples layer pos]}`` (float64).

    Sample ``i`` is traced as a one-sample run whose noise is ``prep.noise[i]`` with the engine ``cfg`` names, so
    the samples' mean is the exact trace of ``prep`` and ``|effect|`` per sample is the quantity GradDrop
    estimates. The cells are those of the batched trace, run as ``n_samples`` one-sample passes: the batching over
    samples is lost (:mod:`analyses.bench_localize` reports the cost as ``magnitude_s_per_fact``).
    """
    from ..trace import engine_for

    one = dataclasses.replace(cfg, n_samples=1)
    score = engine_for(lm, one)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
    for i in range(prep.noise.shape[0]):
        scores, _, low = score(lm, dataclasses.replace(prep, noise=prep.noise[i:i + 1]), one, kinds, metric)
        for k in kinds:
            out[k].append(scores[k].double() - low)
    return {k: torch.stack(v) for k, v in out.items()}


def _magnitude_fact(lm: Any, t: Any, cfg: Any, scale: float, metric: Any, rtol: float) -> Any:
    """One fact of :func:`exact_magnitude_trace`: its cells ``low + E|effect|``, the signed mean checked first."""
    from ..trace import FactTrace, prepare_fact

    t0 = time.perf_counter()
    eff = per_sample_effects(lm, prepare_fact(lm, t.fact, cfg, scale), cfg, tuple(t.scores), metric)
    for k, e in eff.items():
        ref = t.effect(k).double()
        err = float((e.mean(0) - ref).abs().max())
        if err > rtol * float(ref.abs().max()) + 1e-6:
            raise LensMemoryError(f"fact {t.fact.subject!r}, kind {k}: the mean of the per-sample effects differs from "
                                  f"the exact trace by {err:.3g}; was it traced with another model, noise or metric?")
    scores = {k: (t.low + e.abs().mean(0)).float() for k, e in eff.items()}
    return FactTrace(fact=t.fact, tokens=t.tokens, subject_range=t.subject_range, answer=t.answer,
                     answer_id=t.answer_id, high=t.high, low=t.low, scores=scores, seconds=time.perf_counter() - t0)


def exact_magnitude_trace(lm: Any, exact: Any, *, metric: Any = None, rtol: float = 0.02) -> Any:
    """``E|exact effect|`` per cell: ``exact``'s facts traced again once per noise sample (same noise rows,
    engine, window and metric), scored ``low + mean_i |effect_i|``, the exact counterpart of GradDrop's estimate.

    Each fact's per-sample effects must average to ``exact``'s effects (to ``rtol`` x its largest effect), so
    the magnitude belongs to exactly the trace it is compared beside. ``metric``: needed only when ``exact``
    was scored with a callable that :data:`~lens_memory.trace.METRICS` does not name.
    """
    from ..trace import METRICS, TraceConfig, TraceResult
    from ..trace.metrics import resolve_metric

    check_identity(exact.provenance.get("model"), lm, "the exact trace")
    cfg = TraceConfig.from_dict(exact.provenance["config"])
    if cfg.engine not in ("fast", "reference") or estimand(exact) != "signed":
        raise LensMemoryError(f"exact_magnitude_trace needs an exact trace (engine 'fast' or 'reference'), got "
                              f"{exact.provenance.get('estimator', cfg.engine)!r}")
    name = exact.provenance.get("metric", "prob")
    if metric is None and name not in METRICS:
        raise LensMemoryError(f"the exact trace was scored by {name!r}, which METRICS does not name; pass metric=")
    metric = resolve_metric(metric if metric is not None else name)
    scale = float(exact.provenance["noise_scale"])
    traces = [_magnitude_fact(lm, t, cfg, scale, metric, rtol) for t in exact.traces]
    prov = {**exact.provenance, "estimand": "magnitude",
            "estimator": f"exact E|effect| over noise samples ({cfg.engine} engine, one run per sample)"}
    return TraceResult(provenance=prov, traces=traces, n_facts=exact.n_facts, n_known=exact.n_known,
                       extra=dict(exact.extra))


def _check_pair(exact: Any, other: Any, what: str) -> None:
    """Refuse to compare traces of different facts, noise, samples, window or metric (not like for like)."""
    if [t.fact.to_dict() for t in exact.traces] != [t.fact.to_dict() for t in other.traces]:
        raise LensMemoryError(f"the exact trace and the {what} hold different facts ({len(exact.traces)} vs "
                              f"{len(other.traces)}, or another order); trace the same fact list with both engines")
    pe, po = exact.provenance, other.provenance
    scales = (pe.get("noise_scale"), po.get("noise_scale"))
    if None not in scales and not math.isclose(*scales, rel_tol=1e-6):
        raise LensMemoryError(f"the exact trace and the {what} used different noise scales "
                              f"({pe['noise_scale']:.6g} vs {po['noise_scale']:.6g})")
    ce, co = pe.get("config", {}), po.get("config", {})
    for key in ("n_samples", "seed", "window"):
        if key in ce and key in co and ce[key] != co[key]:
            raise LensMemoryError(f"the exact trace and the {what} differ in {key} ({ce[key]!r} vs {co[key]!r})")
    if pe.get("metric", "prob") != po.get("metric", "prob"):
        raise LensMemoryError(f"the exact trace and the {what} score different metrics "
                              f"({pe.get('metric', 'prob')!r} vs {po.get('metric', 'prob')!r})")


def _comparison(estimate: Any, magnitude: Any, compare: str) -> tuple[str, bool]:
    """Which exact quantity the estimate is compared with, and whether that is what it estimates."""
    if compare not in COMPARISONS:
        raise LensMemoryError(f"compare must be one of {list(COMPARISONS)}, got {compare!r}")
    wants = estimand(estimate)
    if compare == "auto":
        if wants == "magnitude" and magnitude is None:
            log.warning("%s estimates E|effect| but no E|exact| trace was given (exact_magnitude_trace); comparing "
                        "with the signed mean effect, which is not like for like",
                        estimate.provenance.get("estimator", "the estimate"))
            return "signed", False
        return wants, True
    if compare == "magnitude" and magnitude is None:
        raise LensMemoryError("compare='magnitude' needs magnitude=exact_magnitude_trace(lm, exact)")
    return compare, compare == wants


def _fact_row(te: Any, tr: Any, ta: Any, kind: str, large: float, small: float) -> dict[str, Any]:
    """One fact and kind: agreement of the estimate ``ta`` with the reference ``tr`` (the exact trace ``te`` or its
    E|exact|); with another reference, also the Spearman against the signed mean; for MLP cells the edit layers."""
    row = fact_agreement(tr.effect(kind).numpy(), ta.effect(kind).numpy(), te.subject_range, large=large, small=small)
    if tr is not te:  # what the signed comparison would have said, beside the like-for-like one
        s0 = te.subject_range[0]
        row["spearman_vs_signed_mean"] = _spearman(te.effect(kind)[:, s0:].numpy().ravel(),
                                                   ta.effect(kind)[:, s0:].numpy().ravel())
    if kind == "mlp":  # peaks: where each trace would edit this fact (the exact trace as it is, signed)
        row.update(edit_layer_exact=edit_layer(te), edit_layer_estimate=edit_layer(ta))
        row["edit_layer_agree"] = row["edit_layer_exact"] == row["edit_layer_estimate"]
    return row


def validate_estimate(exact: Any, estimate: Any, *, magnitude: Any = None, compare: str = "auto",
                      large: float = 0.5, small: float = 0.1) -> "AtPValidation":
    """Compare an estimated trace with the exact trace of the same facts (see the module docstring).

    ``magnitude``: the :func:`exact_magnitude_trace` of ``exact``, the exact counterpart of a magnitude estimate
    (AtP* with GradDrop). ``compare``: ``"auto"`` compares each estimate with what it estimates;
    ``"signed"`` / ``"magnitude"`` force one exact quantity (``like_for_like`` then says whether it matches).
    """
    if not (0 < small < 1 and 0 < large <= 1):
        raise LensMemoryError(f"thresholds must satisfy 0 < small < 1 and 0 < large <= 1, got small={small}, large={large}")
    _check_pair(exact, estimate, "estimate")
    kinds = [k for k in exact.kinds if k in estimate.kinds]
    if not kinds:
        raise LensMemoryError(f"no kind traced by both (exact: {exact.kinds}, estimate: {estimate.kinds})")
    comparison, like = _comparison(estimate, magnitude, compare)
    ref = exact
    if comparison == "magnitude":
        _check_pair(exact, magnitude, "E|exact| trace")
        ref = magnitude
    rows = [{"fact": i, "case_id": te.fact.case_id, "kind": k, **_fact_row(te, tr, ta, k, large, small)}
            for i, (te, tr, ta) in enumerate(zip(exact.traces, ref.traces, estimate.traces)) for k in kinds]
    layers = {}
    if "mlp" in kinds:
        layers = {"suggested_layer_exact": exact.suggest_layers().layer,
                  "suggested_layer_estimate": estimate.suggest_layers().layer}
    name = lambda r: r.provenance.get("estimator", r.provenance["config"]["engine"])  # noqa: E731
    prov = {"exact": name(exact), "estimate": name(estimate), "model": exact.provenance["model"],
            "config_exact": exact.provenance["config"], "config_estimate": estimate.provenance["config"],
            "large": large, "small": small, "estimand": estimand(estimate), "comparison": comparison,
            "like_for_like": like}
    return AtPValidation(rows=rows, seconds_exact=float(np.mean([t.seconds for t in exact.traces])),
                         seconds_estimate=float(np.mean([t.seconds for t in estimate.traces])), layers=layers,
                         provenance=prov)


def atp_star_ablation(lm: Any, exact: Any, *, magnitude: Any = None, arms: dict[str, tuple[str, ...]] | None = None,
                      metric: Any = None, checkpoint_dir: Any = None, **kw: Any) -> dict[str, "AtPValidation"]:
    """AtP* per fix: ``exact``'s facts traced with each arm's ``atp_fixes`` (default :data:`ATP_STAR_ARMS`: the QK
    fix alone, GradDrop alone, both) under ``exact``'s config and noise, each validated like for like.

    The ``E|exact|`` trace the GradDrop arms need is computed once (or pass ``magnitude``). ``metric``: only for
    an ``exact`` scored by a callable that :data:`~lens_memory.trace.METRICS` does not name; ``checkpoint_dir``: each
    arm's trace checkpoints there (:func:`~lens_memory.trace.trace_facts`); ``kw`` goes to :func:`validate_estimate`.
    """
    from ..trace import TraceConfig, trace_facts

    cfg = dataclasses.replace(TraceConfig.from_dict(exact.provenance["config"]), engine="atp*",
                              noise=float(exact.provenance["noise_scale"]))
    facts = [t.fact for t in exact.traces]
    metric = metric if metric is not None else exact.provenance.get("metric")
    out = {}
    for name, fixes in (arms or ATP_STAR_ARMS).items():
        est = trace_facts(lm, facts, dataclasses.replace(cfg, atp_fixes=tuple(fixes)), only_known=False,
                          progress=False, metric=metric, checkpoint_dir=checkpoint_dir)
        if estimand(est) == "magnitude" and magnitude is None:
            magnitude = exact_magnitude_trace(lm, exact, metric=metric)
        out[name] = validate_estimate(exact, est, magnitude=magnitude, **kw)
    return out


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

    def edit_layer_agreement(self) -> dict[str, Any]:
        """Share of facts whose suggested edit layer (MLP peak at the last subject token) is exact tracing's, with
        its Wilson 95% interval (``n_same`` of ``n``); empty when MLP cells were not compared."""
        same = [bool(r["edit_layer_agree"]) for r in self.rows if "edit_layer_agree" in r]
        if not same:
            return {}
        frac, lo, hi = proportion_ci(sum(same), len(same))
        return {"fraction": frac, "ci95": [lo, hi], "n_same": sum(same), "n": len(same), "interval": "wilson"}

    def summary(self) -> dict[str, Any]:
        """Means over facts per kind (Spearman with a 95% interval), agreement rates, false negatives, the
        comparison used (``comparison``: ``"signed"`` or ``"magnitude"``; ``like_for_like``) and the edit-layer
        agreement."""
        out: dict[str, Any] = {"n_facts": len({r["fact"] for r in self.rows}), "speedup": self.speedup,
                               "seconds_per_fact_exact": self.seconds_exact,
                               "seconds_per_fact_estimate": self.seconds_estimate, **self.layers,
                               "comparison": self.provenance.get("comparison", "signed"),
                               "like_for_like": self.provenance.get("like_for_like"),
                               "estimand": self.provenance.get("estimand")}
        if self.layers:
            out["suggested_layer_agree"] = self.layers["suggested_layer_exact"] == self.layers["suggested_layer_estimate"]
        agreement = self.edit_layer_agreement()
        if agreement:
            out["edit_layer_agreement"] = agreement
        for k in self.kinds:
            rs = [r for r in self.rows if r["kind"] == k]
            rho = [r["spearman"] for r in rs if not math.isnan(r["spearman"])]
            m, lo, hi = mean_ci(rho) if rho else (float("nan"),) * 3
            out[k] = {"spearman_mean": m, "spearman_ci95": [lo, hi], "n": len(rho),
                      "top_cell_agreement": float(np.mean([r["top_cell_agree"] for r in rs])),
                      "layer_agreement": float(np.mean([r["layer_agree"] for r in rs])),
                      "false_negatives": int(sum(r["false_negatives"] for r in rs)),
                      "large_cells": int(sum(r["n_large"] for r in rs))}
            signed = [r["spearman_vs_signed_mean"] for r in rs if "spearman_vs_signed_mean" in r]
            signed = [x for x in signed if not math.isnan(x)]
            if signed:  # a magnitude estimate: its Spearman against the signed mean, for comparison only
                out[k]["spearman_vs_signed_mean"] = float(np.mean(signed))
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
