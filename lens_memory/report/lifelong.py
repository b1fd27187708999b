"""The report's optional "lifelong editing" stage and section (``lens-memory report --stages ...,lifelong``).

The stage writes the first ``lifelong_batches * lifelong_batch_size`` report facts in sequence with each of
``lifelong_methods`` (:func:`~lens_memory.workflows.lifelong.run_lifelong`, MEMIT's traced window; ROME,
p-ROME and r-ROME at the traced layer), tracking the rest of the report's facts and the dev facts as never-edited held-out
facts; the section shows the health curves and the state after the last batch. It is not in the default stage list:
a sequence costs as many edits as it writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .render import Figure, Section, Table

__all__ = ["stage_lifelong", "lifelong_section"]


def stage_lifelong(lm: Any, cfg: Any, facts: list, dev_facts: list, trace: dict[str, Any], d: Path) -> dict[str, Any]:
    """Run every method's sequence into ``d/<method>``; one health figure of all of them."""
    from .. import viz
    from ..edit.rome import ROME_METHODS
    from ..workflows.lifelong import run_lifelong

    n = cfg.lifelong_batches * cfg.lifelong_batch_size
    edited, heldout = facts[:n], list(facts[n:]) + list(dev_facts)
    out: dict[str, Any] = {"n_edits": len(edited), "batch_size": cfg.lifelong_batch_size, "n_heldout": len(heldout),
                           "split": "test", "methods": {}}
    healths = []
    for method in cfg.lifelong_methods:
        layers = [trace["suggested_layer"]] if method in ROME_METHODS else list(trace["suggested_layers"])
        s = run_lifelong(lm, edited, method, cfg.lifelong_batch_size, heldout=heldout, layers=layers,
                         text_tokens=512)
        s.save(d / method)
        healths.append(s.sequence.health)
        out["methods"][method] = {k: v for k, v in s.to_dict().items() if k not in ("config", "model")}
    viz.save_figure(viz.plot_health(healths), d / "figures" / "health")
    return out


def lifelong_section(summary: dict[str, Any], stage_dir: Path) -> Section:
    """Health after the last batch per method, and the curves."""
    rows = []
    for m, s in summary["methods"].items():
        rows.append({"method": m, "layers": ",".join(map(str, s["layers"])), "edits": s["n_edits"],
                     "retention": s["final_efficacy_success"], "paraphrase": s["final_paraphrase_success"],
                     "neighbourhood": s["final_neighborhood_success"],
                     "held-out acc. ratio": s.get("heldout_accuracy_ratio"), "perplexity ratio": s["perplexity_ratio"],
                     "max ‖ΔW‖/‖W‖": s["max_delta_norm"]})
    text = [f"{summary['n_edits']} test facts written in batches of {summary['batch_size']}, each batch computed on "
            f"the model the earlier ones produced; health measured after every batch on {summary['n_heldout']} "
            "never-edited facts (accuracy of their true objects) and held-out prose (perplexity). AlphaEdit (Fang et "
            "al. 2025) projects each update onto the null space of the preserved keys; sequential MEMIT does not."]
    fm = {c: "{:.3f}" for c in rows[0] if c not in ("method", "layers", "edits")} if rows else {}
    p = stage_dir / "figures" / "health.png"
    figs = [Figure(p, "Health against the number of edits.", pdf=p.with_suffix(".pdf"))] if p.exists() else []
    return Section("Lifelong editing", text, figs,
                   [Table(rows, "After the last batch: ROME's success rates over all edited facts; ratios to the "
                          "unedited model.", formats=fm)])
