"""The edit workflow, written once: choose layers on dev facts, fit ROME or MEMIT, evaluate, re-trace.

Used by ``lens-memory edit``, by the report's ``rome`` / ``memit`` stages and by notebook 05::

    run = fit_edits(model, facts, "rome", layers=[5])          # key statistics + one edit per fact
    run.save(out)                                               # out/edits/000, 001, ...
    ev = evaluate_edits(model, facts, run.edits, per_fact=run.per_fact)

:func:`fit_edits` computes (no figure, no file); :func:`run_edit` is the CLI's whole workflow and
returns an :class:`EditSummary` whose ``save(out)`` writes results, figures and ``summary.json``.
Layers the suite picks are traced on the **dev** split (:func:`suggest_edit_layers`), never on the
facts that are edited and reported.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .summary import WorkflowSummary

__all__ = ["EditRun", "fit_edits", "suggest_edit_layers", "edit_config", "EditSummary", "run_edit",
           "EDIT_SUMMARY_METRICS", "edit_metrics"]

#: the edit command's headline metrics (post-edit means; definitions in lens_memory.metrics)
EDIT_SUMMARY_METRICS = ("efficacy_success", "paraphrase_success", "neighborhood_success", "efficacy_accuracy",
                        "paraphrase_accuracy", "neighborhood_accuracy", "efficacy_magnitude", "paraphrase_magnitude",
                        "neighborhood_magnitude", "fluency_ngram_entropy", "consistency_model_text_tfidf")


@dataclass
class EditRun:
    """Edits fitted on a fact set, with what they were fitted with.

    Attributes:
        method: ``"rome"``, ``"prome"`` (p-ROME), ``"rrome"`` (r-ROME), ``"memit"`` or ``"alphaedit"``.
        layers: edited layers.
        config: the method's config (RomeConfig / MemitConfig).
        edits: one edit per fact (ROME) or one for all facts (MEMIT).
        stats: the key statistics used, per layer.
        sequential: ROME edits computed each on the model with the earlier ones applied.
        seconds: ``{"stats": ..., "edit": ...}``.
    """

    method: str
    layers: list[int]
    config: Any
    edits: list[Any]
    stats: dict[int, Any]
    sequential: bool = False
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def per_fact(self) -> bool:
        """Whether each fact is evaluated with its own edit only (independent ROME edits)."""
        return rome_like(self.method) and not self.sequential

    def save(self, out: str | Path) -> list[Path]:
        """Save every edit as ``out/edits/NNN`` (artifact directories)."""
        return [e.save(Path(out) / "edits" / f"{i:03d}") for i, e in enumerate(self.edits)]

    def summary(self) -> dict[str, Any]:
        return {"method": self.method, "layers": self.layers, "config": self.config.to_dict(),
                "stats_seconds": self.seconds.get("stats"), "edit_seconds": self.seconds.get("edit"),
                "stats_tokens": {str(j): self.stats[j].n_tokens for j in self.layers},
                "stats_corpus": self.stats[self.layers[0]].corpus, "sequential": self.sequential}


def rome_like(method: str) -> bool:
    """Whether ``method`` is one of the rank-one ROME variants (:data:`lens_memory.edit.rome.ROME_METHODS`)."""
    from ..edit.rome import ROME_METHODS

    return method in ROME_METHODS


def edit_config(lm: Any, method: str, layers: Sequence[int] | None, *, seed: int = 0, corpus: str | None = None,
                stats_tokens: int | None = None) -> Any:
    """The model's config of ``method`` at ``layers`` (ROME, p-ROME, r-ROME: one layer; ``None``: the model's default),
    with key-statistics overrides."""
    from ..edit.sequence import sequence_config

    cfg = sequence_config(lm, method, layers, seed=seed)
    overrides = {k: v for k, v in (("corpus", corpus), ("n_tokens", stats_tokens)) if v is not None}
    return dataclasses.replace(cfg, stats=dataclasses.replace(cfg.stats, **overrides)) if overrides else cfg


def fit_edits(lm: Any, facts: Sequence[Any], method: str, layers: Sequence[int], *, config: Any = None, seed: int = 0,
              sequential: bool = False, progress: bool = True, executor: Any = None) -> EditRun:
    """Key statistics at ``layers``, then ROME (one edit per fact) or MEMIT (one edit for all).

    ``executor`` (:mod:`lens_memory.parallel`; default ``lm.parallel``'s, else this process) runs the key
    statistics' shards and the independent ROME edits; sequential ROME and MEMIT run here.
    """
    from ..edit import key_statistics, memit
    from ..edit.alphaedit import alphaedit
    from ..parallel import executor_for

    cfg = config if config is not None else edit_config(lm, method, layers, seed=seed)
    layers = [lm.check_layer(j) for j in layers]
    t0 = time.time()
    stats = key_statistics(lm, layers, cfg.stats, executor=executor)
    t1 = time.time()
    one_layer = rome_like(method)
    if one_layer and not sequential:  # independent edits: one item per fact through the execution seam
        edits = executor_for(lm, executor).map(lm, _rome_item, list(facts), shared=(cfg, stats[layers[0]]),
                                               desc="ROME edits", progress=progress)
    elif one_layer:
        edits = _sequential_rome(lm, facts, cfg, stats[layers[0]], progress)
    elif method == "alphaedit":  # one batch; a sequence of batches is lens_memory.edit.sequential_edit
        edits = [alphaedit(lm, list(facts), cfg, stats=stats)]
    else:
        edits = [memit(lm, list(facts), cfg, stats=stats)]
    return EditRun(method, layers, cfg, edits, stats, sequential and one_layer,
                   {"stats": t1 - t0, "edit": time.time() - t1})


def _rome_item(lm: Any, fact: Any, shared: tuple) -> Any:
    """The execution seam's item: one ROME edit of ``fact`` on the unedited model."""
    from ..edit import rome

    cfg, stats = shared
    return rome(lm, fact, cfg, stats=stats)


def _sequential_rome(lm: Any, facts: Sequence[Any], cfg: Any, stats: Any, progress: bool) -> list[Any]:
    """ROME edits each computed with the earlier ones applied (all removed again before returning)."""
    from tqdm.auto import tqdm

    from ..edit import rome

    edits, handles = [], []
    try:
        for f in tqdm(facts, desc="ROME edits", unit="edit", disable=not progress):
            edits.append(rome(lm, f, cfg, stats=stats))  # same-layer edits leave C unchanged
            handles.append(edits[-1].apply(lm))
    finally:
        for h in reversed(handles):
            h.remove()
    return edits


def suggest_edit_layers(lm: Any, dev_facts: Sequence[Any], *, width: int | None = None, out: Path | None = None):
    """Trace the MLP of ``dev_facts`` and return the :class:`~lens_memory.trace.LayerSuggestion` (and the trace)."""
    from ..trace import TraceConfig, trace_facts

    tr = trace_facts(lm, list(dev_facts), TraceConfig(kinds=("mlp",)), only_known=False)
    if out is not None:
        tr.save(out)
    return (tr.suggest_layers() if width is None else tr.suggest_layers(width=width)), tr


def edit_metrics(s: dict, ev: Any) -> dict:
    """Post-edit means with ``_ci95`` and ``_n``, ROME's ``score_s``, and the same under ``"pre"``."""
    out: dict = {"n": s["n_facts"], "n_generation_facts": s["n_generation_facts"]}
    for m in EDIT_SUMMARY_METRICS:
        if m in s["post"]:
            out.update({m: s["post"][m], m + "_ci95": s["post"][m + "_ci95"], m + "_n": s["post"][m + "_n"]})
        elif m == "fluency_ngram_entropy":  # not generated (--fluency-facts 0)
            out.update({m: None, m + "_ci95": [None, None], m + "_n": 0})
    out["score_s"] = s["post"]["score_s"]
    out["pre"] = {k: s["pre"][k] for k in EDIT_SUMMARY_METRICS + ("score_s",) if k in s["pre"]}
    out.update({k: ev.generation.get(k) for k in ("generation_protocol", "gen_tokens", "max_out_len",
                                                   "fluency_tokenizer") if k in ev.generation})
    out.update({"neighborhood_prompts": ev.provenance.get("neighborhood_prompts"),
                "neighborhood_excluded": ev.provenance.get("neighborhood_excluded")})
    return out


@dataclass
class EditSummary(WorkflowSummary):
    """What ``lens-memory edit`` computed: the edits, their evaluation, the traces (drawn on ``save``)."""

    run: Any = None
    evaluation: Any = None
    trace_pre: Any = None
    retrace: Any = None

    def save(self, out: str | Path) -> Path:
        from .. import viz
        from ..trace import plots

        out = Path(out)
        self.run.save(out)
        self.evaluation.save(out / "evaluation")
        self.evaluation.to_dataframe().to_csv(out / "edit_scores.csv", index=False)
        viz.save_figure(self.evaluation.plot(), out / "figures" / "edit_scores")
        if self.trace_pre is not None:
            self.trace_pre.save(out / "trace_pre")
            viz.save_figure(plots.plot_aie(self.trace_pre, ["mlp"]), out / "figures" / "aie_pre")
        if self.retrace is not None:
            self.retrace.save(out / "trace_post")
            for kind in self.retrace.kinds:
                viz.save_figure(plots.plot_trace_heatmap(self.retrace.traces[0], kind, window=self.retrace.window),
                                out / "figures" / f"retrace_{kind}")
        return super().save(out)


def _retrace(lm: Any, run: EditRun, fact: Any) -> tuple[Any, dict[str, Any]]:
    """Trace the new fact on the edited model: does its MLP peak sit at the edited layers?"""
    from ..artifacts import applied
    from ..trace import TraceConfig, trace_facts

    new_fact = dataclasses.replace(fact, target_true=fact.target_new, target_new=fact.target_true)
    with applied(lm, run.edits if not run.per_fact else run.edits[:1]):
        rt = trace_facts(lm, [new_fact], TraceConfig(kinds=("mlp", "hidden")), only_known=False)
    sug = rt.suggest_layers()
    return rt, {"fact": new_fact.prompt, "target": new_fact.target_true, "peak_mlp_layer": sug.layer,
                "edited_layers": run.layers, "clean_prob": float(rt.traces[0].high),
                "corrupted_prob": float(rt.traces[0].low)}


def run_edit(lm: Any, facts: Sequence[Any], dev_facts: Sequence[Any], method: str, *, layers: Sequence[int] | None = None,
             seed: int = 0, sequential: bool = False, corpus: str | None = None, stats_tokens: int | None = None,
             eval_config: Any = None, retrace: bool = True, provenance: dict | None = None) -> EditSummary:
    """The CLI's edit workflow: layers (given, traced on ``dev_facts``, or the model's default), fit, evaluate."""
    from ..edit.memit import default_layers
    from ..edit.rome import default_layer
    from ..harness import evaluate_edits

    t = time.time()
    suggestion = trace_pre = None
    choice = "given" if layers is not None else "model default"
    if layers is None and dev_facts:
        suggestion, trace_pre = suggest_edit_layers(lm, dev_facts)
    seconds = {"trace": time.time() - t}
    if layers is None:
        one = rome_like(method)
        layers = ([suggestion.layer] if one else list(suggestion.layers)) if suggestion else (
            [default_layer(lm)] if one else list(default_layers(lm)))
    cfg = edit_config(lm, method, layers, seed=seed, corpus=corpus, stats_tokens=stats_tokens)
    run = fit_edits(lm, facts, method, layers, config=cfg, sequential=sequential)
    seconds.update(run.seconds)
    t = time.time()
    ev = evaluate_edits(lm, facts, run.edits, per_fact=run.per_fact, config=eval_config,
                        provenance={"method": method, "layers": run.layers, "config": cfg.to_dict(),
                                    "sequential": run.sequential, **(provenance or {})})
    seconds["evaluate"] = time.time() - t
    rt, re_summary = (None, None)
    if retrace:
        t = time.time()
        rt, re_summary = _retrace(lm, run, facts[0])
        seconds["retrace"] = time.time() - t
    choice = "traced on dev facts" if suggestion is not None else choice
    head = {"command": "edit", "method": method, "n_edits": len(facts), "layers": run.layers, "layer_choice": choice,
            "sequential": run.sequential, **edit_metrics(ev.summary(), ev),
            "seconds_per_edit": run.seconds["edit"] / len(facts), "stats_seconds": run.seconds["stats"],
            "stats_tokens": {j: run.stats[j].n_tokens for j in run.layers},
            "stats_corpus": run.stats[run.layers[0]].corpus,
            "trace_suggestion": dataclasses.asdict(suggestion) if suggestion else None, "retrace": re_summary,
            "seconds": {k: round(v, 1) for k, v in seconds.items()}, "model": lm.identity.to_dict(),
            "config": cfg.to_dict(), **(provenance or {})}
    return EditSummary(head, run=run, evaluation=ev, trace_pre=trace_pre, retrace=rt)
