"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", NeurIPS).

Where does a model keep a fact? Run the prompt three times:

* **clean** -- the model predicts the answer with probability ``high``;
* **corrupted** -- Gaussian noise on the subject tokens' input embeddings drops it to ``low``;
* **corrupted-with-restoration** -- as corrupted, but one activation (a hidden state, or the MLP
  or attention outputs of a window of layers, at one token) is set back to its clean value.

The probability recovered by a restoration is that activation's *indirect effect*; averaged
over facts (AIE) it shows that mid-layer MLPs at the last subject token carry factual recall,
which is where ROME and MEMIT then edit (:meth:`TraceResult.suggest_layers`).

Entry points: :func:`trace_fact` (one fact) and :func:`trace_facts` (a fact set: knowledge
filter, noise scale, per-fact checkpoints, :class:`TraceResult`).

Fidelity. Reference code: ``kmeng01/rome``, ``experiments/causal_trace.py`` (``trace_with_patch``,
``trace_important_window``, ``collect_embedding_std``) and ``notebooks/causal_trace_frozen_mlp_attn.ipynb``
(``trace_with_repatch``, the severed paths). The ``reference`` engine does per cell what that code does;
the ``fast`` engine gives the same scores (tested to 1e-6). Deviations, and why:

* **Window width.** ROME restores MLP / attention outputs over 10 consecutive layers of GPT-2 XL's 48, with
  the same placement ``[l - w//2, l + ceil(w/2))`` used here. On an 18-layer model 10 layers smear the
  curve over half the depth, so the default is ``window="scaled"``, ``round(10/48 x n_layers)`` = 4 on
  Gemma 3 270M; the measurements behind it are in :class:`TraceConfig`. Integers are still accepted, and the
  resolved width is recorded in the result (``provenance["window"]``, ``summary()["window"]``).
* **Noise scale.** ROME's code takes 3 x the standard deviation of the token embeddings of *every subject
  of its known-facts set, each tokenized on its own*. Here it is 3 x the standard deviation of the
  subject tokens *as they occur in the traced prompts* (leading space, after Gemma's sqrt(d_model)
  embedding scaling, i.e. what the noise is added to), over the *traced* facts. The reason: no external
  fact set is needed and the noise matches the embeddings it corrupts. ``noise=<float>`` fixes the scale.
  Measured on Gemma 3 270M: 1.03093 over the 6 traced facts of :class:`TraceConfig`'s table, and 1.03099 by
  ROME's rule over the 176 known DEV facts. The scales differ by 0.006%, so this deviation does not
  change the traces there.
* **Answer token.** ROME's code takes the clean run's argmax token and requires its text to equal the whole
  expected answer. Here the answer is the first token of ``target_true``, and a fact is known when the
  top-1 token is that token. The two agree for single-token answers.
* **Noise draws.** ROME re-seeds numpy's ``RandomState(1)`` on every call. Here a torch generator is seeded
  with ``cfg.seed`` once per fact. In both, every cell of a fact sees the same noise, but the numbers differ.
* **Hook points.** ROME patches the outputs of GPT-2's ``transformer.h.L.mlp`` / ``.attn`` modules. Here
  the patches go to ``blocks.L.hook_mlp_out`` / ``hook_attn_out``. Gemma normalises each sublayer output
  per token before adding it to the residual stream, so restoring the output at one token also restores
  what is added there.
* **Severed paths** (``hidden_sever_mlp`` / ``_attn``) freeze the MLP (attention) outputs at the restored
  token in every layer at their corrupted values, as ``trace_with_repatch``. No deviation.
* **Statistics.** The paper averages 1,000 facts. A run here traces few facts, so :meth:`TraceResult.aie`
  adds 95% normal intervals over facts, and :meth:`TraceResult.suggest_layers` turns the curve into edit
  layers automatically (ROME chose its layer by hand).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import NoKnownFactsError
from ..facts import Fact, check_knowledge
from ..io import load_tensors, read_checkpoint, save_tensors, write_json
from .metrics import METRICS, Metric, answer_probability, metric_name, resolve_metric
from .config import (KINDS, REFERENCE_LAYERS, REFERENCE_WINDOW, SEVERED_KINDS, TraceConfig, restore_hooks,
                     scaled_window, window_layers)
from .corrupt import PreparedFact, noise_scale, prepare_fact
from .result import AIE, CATEGORIES, FactTrace, LayerSuggestion, TraceResult, token_categories

__all__ = [
    "TraceConfig", "TraceResult", "FactTrace", "AIE", "LayerSuggestion", "KINDS", "SEVERED_KINDS", "CATEGORIES",
    "trace_fact", "trace_facts", "engine_for", "prepare_fact", "noise_scale", "token_categories", "restore_hooks", "window_layers", "METRICS", "answer_probability",
    "PreparedFact", "scaled_window", "window_record", "REFERENCE_WINDOW", "REFERENCE_LAYERS",
]

log = logging.getLogger(__name__)

#: what each engine computes, recorded as ``provenance["estimator"]``
ESTIMATORS = {"fast": "exact (fast engine)", "reference": "exact (reference engine)",
              "atp": "attribution patching (first-order estimate)",
              "atp*": "AtP* (Kramár et al. 2024)"}


def engine_for(lm: Any, cfg: TraceConfig):
    """The scoring function ``cfg.engine`` names on this model (no silent fallback).

    ``"fast"`` needs the partial-forward engine (:mod:`lens_memory.stack`), which knows every
    family in :mod:`lens_memory.families`; on an unknown layout it raises
    :class:`~lens_memory.stack.UnsupportedArchitectureError` naming ``engine="reference"``.
    """
    if cfg.engine == "reference":
        from .reference import reference_scores

        return reference_scores
    if cfg.engine in ("atp", "atp*"):
        from .atp import atp_scores

        return atp_scores
    from ..stack import UnsupportedArchitectureError
    from .fast import fast_scores

    try:
        lm.stack
    except UnsupportedArchitectureError as exc:
        raise UnsupportedArchitectureError(f"{exc}; or trace with TraceConfig(engine='reference')") from None
    return fast_scores


def window_record(cfg: TraceConfig, n_layers: int) -> dict[str, Any]:
    """Provenance of the restoration window: what was asked for, the layers it means here, and the rule."""
    rule = (f"round({REFERENCE_WINDOW}/{REFERENCE_LAYERS} x n_layers), half up (ROME's window scaled to depth)"
            if cfg.window == "scaled" else "fixed")
    return {"requested": cfg.window, "resolved": cfg.window_for(n_layers), "n_layers": n_layers, "rule": rule}


def trace_fact(lm: Any, fact: Fact, cfg: TraceConfig | None = None, scale: float | None = None, *,
               metric: str | Metric | None = None) -> FactTrace:
    """Trace one fact. ``scale`` is the noise scale (default: from ``cfg``, measured on this fact alone).

    ``metric``: what a run scores (:mod:`.metrics`; default the answer probability, ROME's score).
    """
    cfg = (cfg or TraceConfig()).resolved(lm.n_layers)
    if scale is None:
        scale = noise_scale(lm, [fact], cfg)
    prep = prepare_fact(lm, fact, cfg, scale)
    t0 = time.perf_counter()
    scores, high, low = engine_for(lm, cfg)(lm, prep, cfg, cfg.kinds, resolve_metric(metric))
    return FactTrace(fact=fact, tokens=[lm.decode(int(i)) for i in prep.ids], subject_range=prep.subject_range,
                     answer=lm.decode(prep.answer_id), answer_id=prep.answer_id, high=high, low=low,
                     scores=scores, seconds=time.perf_counter() - t0)


def _checkpoint_key(lm: Any, cfg: TraceConfig, scale: float, metric: str = "prob") -> str:
    parts = {"model": lm.identity.to_dict(), "cfg": cfg.to_dict(), "scale": round(scale, 6)}
    if metric != "prob":  # keys of probability traces are unchanged
        parts["metric"] = metric
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def trace_facts(lm: Any, facts: Sequence[Fact], cfg: TraceConfig | None = None, *, only_known: bool = True,
                checkpoint_dir: str | Path | None = None, progress: bool = True, source: str = "",
                metric: str | Metric | None = None, executor: Any = None) -> TraceResult:
    """Trace a fact set.

    Facts the model does not know (top-1 is not the target) are skipped when ``only_known``;
    if it knows none, :class:`NoKnownFactsError` is raised. The noise scale is measured over the
    traced facts. With ``checkpoint_dir`` each finished fact is saved atomically and reused by a
    re-run with the same model, config and noise scale, so an interrupted run loses nothing.
    ``metric`` is what each run scores (:mod:`.metrics`; default the answer probability).
    ``executor``: where the facts are traced (:mod:`lens_memory.parallel`; default: the one ``lm.parallel``
    opened, else this process). The traces are the same either way.
    """
    metric = resolve_metric(metric)
    requested = cfg or TraceConfig()
    cfg = requested.resolved(lm.n_layers)
    facts = list(facts)
    for f in facts:  # fail fast on bad input, before any long computation
        lm.fact_subject_range(f)
        lm.continuation_ids(f.target_true)
    knowledge = check_knowledge(lm, facts) if only_known else None
    traced = knowledge.known_facts() if knowledge else facts
    if not traced:
        raise NoKnownFactsError(
            f"{lm.name} knows none of the {len(facts)} facts (top-1 prediction never equals the target); nothing to trace"
        )
    scale = noise_scale(lm, traced, cfg)
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = Path(checkpoint_dir) / _checkpoint_key(lm, cfg, scale, metric_name(metric))
        ckpt.mkdir(parents=True, exist_ok=True)
    traces = _trace_all(lm, traced, cfg, scale, metric, ckpt, progress, executor)
    provenance = _provenance(lm, cfg, requested, scale, metric, source)
    extra = {"knowledge": {"top1": knowledge.top1, "target_prob": knowledge.target_prob, "known": knowledge.known,
                           "case_ids": [f.case_id for f in facts]}} if knowledge else {}
    return TraceResult(provenance=provenance, traces=traces, n_facts=len(facts),
                       n_known=knowledge.n_known if knowledge else len(facts), extra=extra)


def _trace_item(lm: Any, fact: Fact, shared: tuple) -> FactTrace:
    """The execution seam's item: one fact traced with the run's config, noise scale and metric."""
    cfg, scale, metric = shared
    return trace_fact(lm, fact, cfg, scale, metric=metric)


def _trace_all(lm: Any, facts: list[Fact], cfg: TraceConfig, scale: float, metric: Metric, ckpt: Path | None,
               progress: bool, executor: Any) -> list[FactTrace]:
    """Every fact's trace: checkpointed ones loaded, the rest through the executor (checkpointed as they finish)."""
    from ..parallel import executor_for

    stems = [ckpt / f"fact{i:05d}" if ckpt else None for i in range(len(facts))]
    traces: list[FactTrace | None] = [_load_checkpoint(s, f) if s is not None else None for s, f in zip(stems, facts)]
    todo = [i for i, t in enumerate(traces) if t is None]

    def done(j: int, tr: FactTrace) -> None:
        stem = stems[todo[j]]
        if stem is not None:
            save_tensors(stem.with_suffix(".safetensors"), {k: v.float() for k, v in tr.scores.items()})
            write_json(stem.with_suffix(".json"), tr.meta())

    got = executor_for(lm, executor).map(lm, _trace_item, [facts[i] for i in todo], shared=(cfg, scale, metric),
                                         desc="causal tracing", progress=progress, on_result=done)
    for i, tr in zip(todo, got):
        traces[i] = tr
    return traces  # type: ignore[return-value]


def _load_checkpoint(stem: Path, fact: Fact) -> FactTrace | None:
    """The checkpointed trace of ``fact`` at ``stem``, or ``None`` (absent, another fact, or corrupt)."""
    if not stem.with_suffix(".safetensors").exists():
        return None
    return read_checkpoint(stem.with_suffix(".json"), lambda meta: FactTrace.from_meta(
        meta, load_tensors(stem.with_suffix(".safetensors")), "") if meta["fact"] == fact.to_dict() else None, "trace")


def _provenance(lm: Any, cfg: TraceConfig, requested: TraceConfig, scale: float, metric: Metric,
                source: str) -> dict[str, Any]:
    from .. import __version__

    return {
        "model": lm.identity.to_dict(),
        "config": cfg.to_dict(),
        "window": window_record(requested, lm.n_layers),
        "noise_scale": scale,
        "seed": cfg.seed,
        "metric": metric_name(metric),
        "hooks": {"noise": "hook_embed", **{k: restore_hooks(k) for k in cfg.kinds}},
        "layers": list(range(lm.n_layers)),
        "facts_source": source,
        "lens_memory": __version__,
        "method": "causal tracing (Meng et al. 2022)",
        "estimator": ESTIMATORS[cfg.engine] + (f" with {'+'.join(cfg.atp_fixes) or 'no fixes'}" if cfg.engine == "atp*" else ""),
    }
