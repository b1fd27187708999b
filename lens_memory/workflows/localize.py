"""The localization workflow: does tracing inform editing, and can attribution patching replace exact tracing?

On one fact set (the facts the model knows) :func:`run_localize`:

1. traces every fact exactly (the fast engine) and with each estimator (``atp``, ``atp*``), and validates
   the estimates against the exact trace (:func:`lens_memory.localize.validate_estimate`);
2. edits every fact at every layer (:func:`lens_memory.localize.edit_layer_sweep`);
3. regresses edit success on the tracing effect at the edit layer (:func:`lens_memory.localize.hase_regression`).

``save(out)`` writes the three results, their figures (PNG + PDF) and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .summary import WorkflowSummary

__all__ = ["LocalizeSummary", "run_localize", "ESTIMATORS"]

#: the estimators validated, and the prefix of their summary keys
ESTIMATORS = {"atp": "atp", "atp*": "atpstar"}


@dataclass
class LocalizeSummary(WorkflowSummary):
    """Headline numbers plus the exact trace, the estimated traces, their validations, the sweep and the regression."""

    exact: Any = None
    estimates: dict[str, Any] = field(default_factory=dict)
    validations: dict[str, Any] = field(default_factory=dict)
    sweep: Any = None
    regression: Any = None

    def save(self, out: str | Path) -> Path:
        from .. import viz

        out, figs = Path(out), Path(out) / "figures"
        self.exact.save(out / "trace_exact")
        viz.save_figure(self.exact.plot(), figs / "aie_exact")
        for engine, prefix in ESTIMATORS.items():
            if engine in self.estimates:
                self.estimates[engine].save(out / f"trace_{prefix}")
                self.validations[engine].save(out / f"validation_{prefix}")
                viz.save_figure(self.validations[engine].plot(), figs / f"validation_{prefix}")
                viz.save_figure(self.estimates[engine].plot(), figs / f"aie_{prefix}")
        if self.sweep is not None:
            self.sweep.save(out / "sweep")
            self.sweep.to_dataframe().to_csv(out / "sweep.csv", index=False)
            viz.save_figure(self.sweep.plot(trace=self.exact), figs / "sweep")
            for i in range(min(4, len(self.sweep.facts))):
                viz.save_figure(self.sweep.plot(trace=self.exact, fact=i), figs / f"sweep_fact{i:03d}")
        if self.regression is not None:
            self.regression.save(out / "hase")
            viz.save_figure(self.regression.plot(), figs / "hase")
        return super().save(out)


def _estimate_keys(prefix: str, validation: Any) -> dict[str, Any]:
    s = validation.summary()
    return {f"{prefix}_spearman_mean": {k: s[k]["spearman_mean"] for k in validation.kinds},
            f"{prefix}_spearman_ci95": {k: s[k]["spearman_ci95"] for k in validation.kinds},
            f"{prefix}_top_cell_agreement": {k: s[k]["top_cell_agreement"] for k in validation.kinds},
            f"{prefix}_layer_agreement": {k: s[k]["layer_agreement"] for k in validation.kinds},
            f"{prefix}_false_negatives": {k: [s[k]["false_negatives"], s[k]["large_cells"]] for k in validation.kinds},
            f"{prefix}_speedup": round(s["speedup"], 2), f"{prefix}_seconds_per_fact": s["seconds_per_fact_estimate"],
            f"{prefix}_suggested_layer_agree": s.get("suggested_layer_agree")}


def run_localize(lm: Any, facts: Sequence[Any], trace_config: Any = None, sweep_config: Any = None, *,
                 estimators: Sequence[str] = tuple(ESTIMATORS), sweep: bool = True, n_boot: int = 1000,
                 n_perm: int = 1000, checkpoint_dir: str | Path | None = None,
                 only_known: bool = True,
                 progress: bool = True, executor: Any = None, source: str = "") -> LocalizeSummary:
    """Trace (exact and estimated), validate, sweep edits over layers and run the Hase et al. regression.

    ``trace_config``: the exact trace's :class:`~lens_memory.trace.TraceConfig` (engine ``fast`` unless it
    names ``reference``); each estimator traces with the same settings and its own engine. ``sweep=False``
    skips the sweep and the regression (they cost one edit per fact and layer). ``only_known=False`` keeps the
    facts the model does not know (tests on random models; the paper uses known facts only). ``checkpoint_dir``:
    the exact trace and the sweep save each finished fact there and a rerun resumes (the result equals an
    uninterrupted run's); the estimators are re-traced (they are the timed part).
    """
    from ..localize import edit_layer_sweep, estimand, exact_magnitude_trace, hase_effects, hase_regression, validate_estimate
    from ..trace import TraceConfig, trace_facts

    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad:
        raise ValueError(f"unknown estimators {bad}; choose from {list(ESTIMATORS)}")
    t0 = time.time()
    cfg = trace_config or TraceConfig(kinds=("hidden", "mlp", "attn"))
    if cfg.engine not in ("fast", "reference"):
        cfg = dataclasses.replace(cfg, engine="fast")
    exact = trace_facts(lm, facts, cfg, only_known=only_known, progress=progress, source=source, executor=executor,
                        checkpoint_dir=checkpoint_dir)
    known = [t.fact for t in exact.traces]
    estimates, validations, magnitude = {}, {}, None
    for engine in estimators:
        estimates[engine] = trace_facts(lm, known, dataclasses.replace(cfg, engine=engine), only_known=False,
                                        progress=progress, source=source, executor=executor)
        if estimand(estimates[engine]) == "magnitude" and magnitude is None:  # GradDrop: compare with E|exact|
            magnitude = exact_magnitude_trace(lm, exact)
        validations[engine] = validate_estimate(exact, estimates[engine], magnitude=magnitude)
    head: dict[str, Any] = {"command": "localize", "model": lm.identity.to_dict(), "trace_config": cfg.to_dict(),
                            "n_facts": len(list(facts)), "n_known": len(known),
                            "relations": sorted({f.relation_id for f in known}), "exact_seconds_per_fact":
                            exact.summary()["seconds_per_fact"], "suggested_layer": exact.summary().get("suggested_layer")}
    for engine, v in validations.items():
        head.update(_estimate_keys(ESTIMATORS[engine], v))
    sw = reg = None
    if sweep:
        sw = edit_layer_sweep(lm, known, sweep_config, progress=progress, executor=executor,
                              checkpoint_dir=checkpoint_dir)
        effect = hase_effects(exact, sw.layers, "mlp")
        reg = hase_regression(sw.metrics["rewrite_score"], effect, layers=sw.layers, n_boot=n_boot, n_perm=n_perm,
                              provenance={"success": "rewrite_score", "effect": "fraction restored, MLP (exact trace)"})
        head.update(_hase_keys(exact, sw, reg))
    head["wall_seconds"] = round(time.time() - t0, 1)
    return LocalizeSummary(head, exact=exact, estimates=estimates, validations=validations, sweep=sw, regression=reg)


def _hase_keys(exact: Any, sw: Any, reg: Any) -> dict[str, Any]:
    """The regression's headline numbers and how often the best edit layer is the traced peak.

    The traced peak is the MLP cell's largest effect at the last subject token among the *swept* layers (a peak
    at a layer that was not edited could never agree); ``traced_peak_layers_all`` is the peak over every layer."""
    mlp_last = [t.effect("mlp")[:, t.subject_range[1] - 1].numpy() for t in exact.traces]
    per_fact_peak = [int(sw.layers[int(np.argmax(e[list(sw.layers)]))]) for e in mlp_last]
    best = sw.best_layers("rewrite_score")
    mean_curve = sw.curve("rewrite_score")[0]
    s = reg.stats
    return {"hase_r2": round(s["r2_tracing"], 4), "hase_r2_layer_only": round(s["r2_layer"], 4),
            "hase_r2_layer_plus_tracing": round(s["r2_layer+tracing"], 4),
            "hase_r2_layer_times_tracing": round(s["r2_layer*tracing"], 4),
            "r2_diff": round(s["r2_diff"], 4), "r2_diff_ci95": reg.ci95["r2_diff"], "f_test_p": s["f_test_p"],
            "permutation_p": s["permutation_p"], "decision": reg.decision(), "hase_ci95": reg.ci95,
            "hase_conclusion": reg.conclusion(),
            "best_edit_layer_agreement": float(np.mean([b == p for b, p in zip(best, per_fact_peak)])),
            "best_edit_layers": best, "traced_peak_layers": per_fact_peak,
            "traced_peak_layers_all": [int(np.argmax(e)) for e in mlp_last],
            "best_mean_edit_layer": int(sw.layers[int(np.argmax(mean_curve))]),
            "mean_rewrite_score_by_layer": [round(float(x), 4) for x in mean_curve]}
