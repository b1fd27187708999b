"""Knowledge scoring: CounterFact evaluation of any memory artifact with ``.apply(model)`` (a weight edit, a
steering vector, a KV memory, retrieved text), as ROME and MEMIT publish it for edits.

:func:`evaluate_edits` scores facts before and after (definitions and sources in :mod:`lens_memory.metrics`):

* ``{efficacy,paraphrase,neighborhood}_success`` -- ROME's ES / PS / NS;
* ``..._magnitude`` -- ROME's / MEMIT's EM / PM / NM (``P = exp(-mean token NLL)``);
* ``..._accuracy`` -- EasyEdit's teacher-forced top-1 token accuracy;
* ``score_s`` (in :meth:`EditEvaluation.summary`) -- ROME's S, the harmonic mean of the ES, PS, NS means;
* ``fluency_ngram_entropy`` -- ROME's generation entropy GE of prompt + generation;
* ``consistency_model_text_tfidf`` -- **not** ROME's consistency RS (TF-IDF similarity to Wikipedia text about
  the new object, which is not available offline): the TF-IDF cosine between the text generated about the
  edited subject and the *unedited model's own* text about other subjects that truly have the new object
  (the fact's ``attribute_prompts``). It says whether generations moved towards how the model talks about
  the new object; it is not comparable with published RS numbers.

Generation follows ROME's ``test_generation``: one top-k (k = 5) sample per generation prompt, continued to
``max_out_len`` = 100 tokens *including the prompt* (ROME's ``generate_fast(..., max_out_len=100)``; the
prompt's tokens are counted as the model sees them, BOS included). ``EvalConfig.gen_tokens`` instead generates
a fixed number of new tokens per prompt (faster, shorter texts: lower entropies, not comparable with ROME's GE);
which protocol ran is recorded as ``generation_protocol``. When a fact has no generation prompts, its edit
prompt and first paraphrase are used. Deviation: ROME scores every case's generations; here only the first
``fluency_facts`` facts are generated for (recorded as ``n_generation_facts``).

Two ways of pairing artifacts with facts:

* ``per_fact=True`` -- artifact ``i`` is applied alone for fact ``i`` (the standard ROME
  evaluation: every edit on the unedited model);
* otherwise all artifacts are applied together, in order (MEMIT's batch edit, or sequential edits).

It only calls ``artifact.apply(lm)``, so it does not know which mechanism it measures. Means over facts
(each fact's value is the mean over its prompts, as ROME's ``summarize.py``) come with Wilson (0/1 values) or
BCa-bootstrap (other values; :func:`lens_memory.metrics.mean_ci`)
95% intervals and the number of facts behind them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifacts import load_artifact, require, save_artifact
from ..errors import LensMemoryError
from ..facts import Fact
from ..generation import generate
from ..metrics import (KINDS, fact_scores, fluency_tokenizer, generation_entropy, mean_ci, rome_generation_text,
                       score_s, tfidf_similarity)

__all__ = ["EvalConfig", "EditEvaluation", "evaluate_edits", "unedited_neighbours", "METRICS", "GENERATION_METRICS"]

#: per-fact knowledge metrics, each summarised as a mean with a 95% interval
METRICS = (tuple(f"{k}_success" for k in KINDS) + tuple(f"{k}_accuracy" for k in KINDS)
           + tuple(f"{k}_magnitude" for k in KINDS))
#: per-fact generation metrics (only for the first ``fluency_facts`` facts)
GENERATION_METRICS = ("fluency_ngram_entropy", "consistency_model_text_tfidf")
_SCORE_KEYS = METRICS + ("p_new", "p_true")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings.

    Args:
        fluency_facts: facts whose generations are scored (0 = skip generation metrics).
        gen_tokens: ``None`` (default) generates as ROME does, up to ``max_out_len`` tokens in all,
            prompt included; a number generates that many new tokens per prompt instead (faster).
        max_out_len: ROME's total length (prompt + generation) in tokens, 100 in ROME.
        top_k: top-k sampling, 5 in ROME.
        consistency_model_text_tfidf: also compute the model-text TF-IDF similarity (module docstring).
    """

    fluency_facts: int = 10
    gen_tokens: int | None = None
    max_out_len: int = 100
    top_k: int = 5
    seed: int = 0
    consistency_model_text_tfidf: bool = True

    def __post_init__(self) -> None:
        if (self.fluency_facts < 0 or (self.gen_tokens is not None and self.gen_tokens < 1)
                or self.max_out_len < 2 or self.top_k < 1):
            raise LensMemoryError(f"invalid EvalConfig {self!r}: fluency_facts >= 0, gen_tokens None or >= 1, "
                                  "max_out_len >= 2, top_k >= 1")

    def new_tokens(self, prompt_tokens: int) -> int:
        """Tokens to generate after a prompt of ``prompt_tokens`` tokens (at least 1)."""
        return self.gen_tokens if self.gen_tokens is not None else max(1, self.max_out_len - prompt_tokens)

    @property
    def generation_protocol(self) -> str:
        """``"rome"`` (ROME's length and sampling) or a description of the shortened protocol."""
        if self.gen_tokens is None and self.max_out_len == 100 and self.top_k == 5:
            return "rome"
        length = f"{self.gen_tokens} new tokens" if self.gen_tokens is not None else f"{self.max_out_len} tokens in all"
        return f"custom: {length}, top_k={self.top_k} (ROME: 100 tokens in all, top_k=5)"


def _gen_prompts(f: Fact) -> list[str]:
    return list(f.generation_prompts) or [f.prompt] + list(f.paraphrases[:1])


@dataclass
class EditEvaluation:
    """Per-fact scores before and after, generation metrics, and provenance."""

    provenance: dict[str, Any]
    rows: list[dict[str, Any]]
    generation: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Means over facts with 95% intervals, before and after.

        ``{"n_facts", "n_generation_facts", "pre": {...}, "post": {...}, <generation provenance>}``; each phase
        holds, for every metric ``m`` in :data:`METRICS` (and :data:`GENERATION_METRICS` where computed),
        ``m`` (mean), ``m_ci95`` (``[lo, hi]``) and ``m_n`` (facts with a value), plus ``score_s``
        (ROME's S: harmonic mean of the three success means; no interval).
        """
        out: dict[str, Any] = {"n_facts": len(self.rows),
                               "n_generation_facts": self.generation.get("n_generation_facts", 0)}
        for phase in ("post", "pre"):
            out[phase] = {}
            for m in METRICS + GENERATION_METRICS:
                vals = [r.get(f"{phase}_{m}") for r in self.rows]
                vals = [float(v) for v in vals if v is not None and not np.isnan(v)]
                if m in GENERATION_METRICS and not vals:
                    continue
                mean, lo, hi = mean_ci(vals)
                out[phase].update({m: mean, m + "_ci95": [lo, hi], m + "_n": len(vals)})
            out[phase]["score_s"] = score_s(*(out[phase][f"{k}_success"] for k in KINDS))
        for k, v in self.generation.items():
            if not isinstance(v, (list, dict)):
                out[k] = v
        return out

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def plot(self, ax=None):
        """Bars of the three success scores before and after, with 95% intervals."""
        from ..viz import plot_edit_scores

        return plot_edit_scores(self, ax=ax)

    def save(self, path: str | Path) -> Path:
        """Write ``evaluation.json`` into directory ``path`` atomically."""
        return save_artifact(path, "evaluation", {"provenance": self.provenance, "rows": self.rows,
                                                  "generation": self.generation})

    @classmethod
    def load(cls, path: str | Path) -> "EditEvaluation":
        d, _ = load_artifact(path, "evaluation")
        require(d, ("provenance", "rows"), path)
        return cls(provenance=d["provenance"], rows=d["rows"], generation=d.get("generation", {}))

@contextlib.contextmanager
def _applied(lm: Any, artifacts: Sequence[Any]):
    with contextlib.ExitStack() as stack:
        for a in artifacts:
            stack.enter_context(a.apply(lm))
        yield


def _texts(lm: Any, prompts: Sequence[str], cfg: EvalConfig, seed: int) -> list[str]:
    """One sample per prompt, as ROME's text: prompt + generation (:func:`~lens_memory.metrics.rome_generation_text`).

    Prompts needing the same number of new tokens are generated in one batch.
    """
    n_new = [cfg.new_tokens(len(lm.encode(p))) for p in prompts]
    out = [""] * len(prompts)
    for n in sorted(set(n_new)):
        idx = [i for i, k in enumerate(n_new) if k == n]
        conts = generate(lm, [prompts[i] for i in idx], max_new_tokens=n, top_k=cfg.top_k, seed=seed)
        for i, c in zip(idx, conts):
            out[i] = rome_generation_text(prompts[i], c)
    return out


def _generation_metrics(lm: Any, facts: Sequence[Fact], cfg: EvalConfig, references: dict[int, list[str]] | None):
    """Per fact ``i``: its texts, their generation entropy and (with references) model-text TF-IDF similarity."""
    texts = {i: _texts(lm, _gen_prompts(f), cfg, cfg.seed + i) for i, f in enumerate(facts)}
    ent = {i: generation_entropy(ts) for i, ts in texts.items()}
    cons = {i: tfidf_similarity(texts[i], references[i]) for i in texts if references and references.get(i)}
    return texts, ent, cons


def unedited_neighbours(facts: Sequence[Fact], edited: Sequence[str] | None = None) -> tuple[list[Fact], int]:
    """Drop neighbourhood prompts about subjects that are themselves edited: **the** rule, used by every path
    that scores edits together (:func:`evaluate_edits` on a batch, the lifelong health rows and final scores).

    Neighbourhood prompts test that *unedited* subjects keep their answer. When many facts are
    edited together (MEMIT, a sequence of edits), a fact's neighbours -- other subjects with the same
    true object -- are often edited too, and their changed answers are the edit working, not leaking.

    Args:
        facts: the facts whose neighbourhood prompts are filtered.
        edited: the edited subjects (default: the subjects of ``facts``); a prompt is dropped when it
            contains one of them.

    Returns:
        ``(facts with the remaining prompts, number of prompts dropped)``.
    """
    subjects = [f.subject for f in facts] if edited is None else list(edited)
    out, dropped = [], 0
    for f in facts:
        keep = tuple(p for p in f.neighborhood if not any(s in p for s in subjects))
        dropped += len(f.neighborhood) - len(keep)
        out.append(dataclasses.replace(f, neighborhood=keep))
    return out, dropped


_unedited_neighbours = unedited_neighbours  # the name before issue 29 (lens_memory.edit.evaluate still maps it)


def _reusable(baseline: "EditEvaluation | None", facts: Sequence[Fact], cfg: EvalConfig) -> bool:
    """Whether ``baseline`` scored exactly these facts (prompts and neighbourhood) with this config."""
    if baseline is None or len(baseline.rows) != len(facts):
        return False
    if baseline.provenance.get("eval_config") != dataclasses.asdict(cfg):
        return False
    if baseline.provenance.get("neighborhood_prompts") != sum(len(f.neighborhood) for f in facts):
        return False
    return all(r["subject"] == f.subject and r["prompt"] == f.prompt and r["target_new"] == f.target_new
               for r, f in zip(baseline.rows, facts))


def _references(lm: Any, gfacts: Sequence[Fact], cfg: EvalConfig, baseline: "EditEvaluation | None",
                reuse: bool) -> dict[int, list[str]] | None:
    """The unedited model's texts on each fact's ``attribute_prompts`` (for the model-text TF-IDF similarity)."""
    if not cfg.consistency_model_text_tfidf:
        return None
    if reuse:
        refs = baseline.generation.get("references")
        return {int(k): v for k, v in refs.items()} if refs else None
    return {i: _texts(lm, list(f.attribute_prompts[:3]), cfg, cfg.seed + 1000 + i)
            for i, f in enumerate(gfacts) if f.attribute_prompts}


def _pre_generation(lm: Any, gfacts: Sequence[Fact], cfg: EvalConfig, refs, baseline, reuse: bool):
    """Generation metrics of the unchanged model: the baseline's when reusable, else computed."""
    rows = baseline.rows[:len(gfacts)] if reuse else []
    if reuse and all("pre_fluency_ngram_entropy" in r for r in rows):
        return ({i: [r["pre_generation"]] for i, r in enumerate(rows)},
                {i: r["pre_fluency_ngram_entropy"] for i, r in enumerate(rows)},
                {i: r["pre_consistency_model_text_tfidf"] for i, r in enumerate(rows)
                 if r.get("pre_consistency_model_text_tfidf") is not None})
    return _generation_metrics(lm, gfacts, cfg, refs)


def _mean_or_none(d: dict[int, float]) -> float | None:
    return float(np.nanmean(list(d.values()))) if d else None


def _generation(lm: Any, facts: Sequence[Fact], arts: Sequence[Any], cfg: EvalConfig,
                baseline: "EditEvaluation | None", reuse: bool, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Fluency (GE) and model-text TF-IDF similarity of the first ``cfg.fluency_facts`` facts, into ``rows``
    (all artifacts applied together; the per-fact pairing computes them per item, :func:`_fact_item`)."""
    n_gen = min(cfg.fluency_facts, len(facts))
    if not n_gen:
        return {}
    gfacts = facts[:n_gen]
    refs = _references(lm, gfacts, cfg, baseline, reuse)
    pre = _pre_generation(lm, gfacts, cfg, refs, baseline, reuse)
    with _applied(lm, arts):
        post = _generation_metrics(lm, gfacts, cfg, refs)
    return _fill_generation(rows, n_gen, refs, pre, post, cfg)


def _fill_generation(rows: list[dict[str, Any]], n_gen: int, refs: dict[int, list[str]] | None, pre: tuple,
                     post: tuple, cfg: EvalConfig) -> dict[str, Any]:
    """Write each generated fact's texts, entropies and similarities into ``rows``; return the summary."""
    (t_pre, e_pre, c_pre), (t_post, e_post, c_post) = pre, post
    for i in range(n_gen):
        rows[i].update({"pre_fluency_ngram_entropy": e_pre[i], "post_fluency_ngram_entropy": e_post[i],
                        "pre_consistency_model_text_tfidf": c_pre.get(i),
                        "post_consistency_model_text_tfidf": c_post.get(i),
                        "pre_generation": t_pre[i][0], "post_generation": t_post[i][0]})
    return {"fluency_ngram_entropy_pre": _mean_or_none(e_pre), "fluency_ngram_entropy_post": _mean_or_none(e_post),
            "consistency_model_text_tfidf_pre": _mean_or_none(c_pre),
            "consistency_model_text_tfidf_post": _mean_or_none(c_post),
            "n_generation_facts": n_gen, "gen_tokens": cfg.gen_tokens, "max_out_len": cfg.max_out_len,
            "top_k": cfg.top_k, "generation_protocol": cfg.generation_protocol,
            "fluency_tokenizer": fluency_tokenizer(),
            "references": {str(k): v for k, v in refs.items()} if refs else None}


def _fact_item(lm: Any, item: tuple, shared: tuple) -> dict[str, Any]:
    """The execution seam's item (per-fact pairing): fact ``i`` scored with its own artifact applied, and, for
    the first ``n_gen`` facts, its reference texts, and its generations before and after (seeds as in ROME)."""
    i, f, art, ref, pre_gen = item
    cfg, n_gen = shared
    with _applied(lm, [art]):
        out: dict[str, Any] = {"post": fact_scores(lm, [f])[0]}
    if i >= n_gen:
        return out
    if ref is None and cfg.consistency_model_text_tfidf and f.attribute_prompts:
        ref = _texts(lm, list(f.attribute_prompts[:3]), cfg, cfg.seed + 1000 + i)
    refs = {0: ref} if ref else None
    if pre_gen is None:
        t, e, c = _generation_metrics(lm, [f], dataclasses.replace(cfg, seed=cfg.seed + i), refs)
        pre_gen = (t[0], e[0], c.get(0))
    with _applied(lm, [art]):
        t, e, c = _generation_metrics(lm, [f], dataclasses.replace(cfg, seed=cfg.seed + i), refs)
    return {**out, "ref": ref, "pre_gen": pre_gen, "post_gen": (t[0], e[0], c.get(0))}


def _per_fact(lm: Any, facts: Sequence[Fact], arts: Sequence[Any], cfg: EvalConfig, baseline: "EditEvaluation | None",
              reuse: bool, executor: Any, progress: bool) -> tuple[list[dict[str, float]], tuple | None]:
    """Post scores of each fact with its own artifact, and the generation metrics, through the execution seam."""
    from ..parallel import executor_for

    n_gen = min(cfg.fluency_facts, len(facts))
    refs = _references(lm, facts[:n_gen], cfg, baseline, True) if reuse and n_gen else None
    pre_gen = None
    if reuse and n_gen and all("pre_fluency_ngram_entropy" in r for r in baseline.rows[:n_gen]):
        pre_gen = [([r["pre_generation"]], r["pre_fluency_ngram_entropy"], r.get("pre_consistency_model_text_tfidf"))
                   for r in baseline.rows[:n_gen]]
    items = [(i, f, a, (refs or {}).get(i), pre_gen[i] if pre_gen and i < n_gen else None)
             for i, (f, a) in enumerate(zip(facts, arts))]
    got = executor_for(lm, executor).map(lm, _fact_item, items, shared=(cfg, n_gen), desc="evaluating edits",
                                         progress=progress)
    if not n_gen:
        return [g["post"] for g in got], None
    refs = {i: g["ref"] for i, g in enumerate(got[:n_gen]) if g["ref"]} or None
    phases = []
    for key in ("pre_gen", "post_gen"):
        t = {i: g[key][0] for i, g in enumerate(got[:n_gen])}
        e = {i: g[key][1] for i, g in enumerate(got[:n_gen])}
        c = {i: g[key][2] for i, g in enumerate(got[:n_gen]) if g[key][2] is not None}
        phases.append((t, e, c))
    return [g["post"] for g in got], (refs, n_gen, phases[0], phases[1])


def _check_inputs(facts: Sequence[Fact], arts: Sequence[Any], per_fact: bool) -> None:
    if not facts:
        raise LensMemoryError("evaluate_edits needs at least one fact")
    for f in facts:
        if not f.target_new:
            raise LensMemoryError(f"fact {f.subject!r} has no target_new to evaluate")
    if per_fact and len(arts) != len(facts):
        raise LensMemoryError(f"per_fact=True needs one artifact per fact: {len(arts)} artifacts, {len(facts)} facts")


def evaluate_edits(lm: Any, facts: Sequence[Fact], artifacts: Any | Sequence[Any] | None, *,
                   per_fact: bool = False, config: EvalConfig | None = None,
                   provenance: dict[str, Any] | None = None, baseline: "EditEvaluation | None" = None,
                   executor: Any = None, progress: bool = False) -> EditEvaluation:
    """Score ``facts`` on ``lm`` before and after applying ``artifacts`` (metrics: module docstring).

    Args:
        artifacts: one artifact, a list, or ``None`` (pre only: post = pre).
        per_fact: artifact ``i`` belongs to fact ``i`` and is applied alone for it. Otherwise
            all artifacts are applied together and neighbourhood prompts about any edited
            subject are left out (their count is recorded as ``neighborhood_excluded``).
        baseline: an earlier evaluation of the same facts with the same config on the same
            unchanged model; its *pre* scores and generations are reused instead of recomputed
            (ignored when the facts, their neighbourhood prompts or the config differ).
        executor: with ``per_fact=True`` the facts are items of the execution seam (:mod:`lens_memory.parallel`;
            default ``lm.parallel``'s, else this process); the scores are the same either way.
    """
    cfg = config or EvalConfig()
    facts = list(facts)
    arts = [] if artifacts is None else (list(artifacts) if isinstance(artifacts, (list, tuple)) else [artifacts])
    _check_inputs(facts, arts, per_fact)
    excluded = 0
    if not per_fact and len(facts) > 1:
        facts, excluded = unedited_neighbours(facts)
    reuse = _reusable(baseline, facts, cfg)
    pre = ([{k[4:]: v for k, v in r.items() if k.startswith("pre_") and k[4:] in _SCORE_KEYS} for r in baseline.rows]
           if reuse else fact_scores(lm, facts))
    gen_parts = None
    if per_fact:
        post, gen_parts = _per_fact(lm, facts, arts, cfg, baseline, reuse, executor, progress)
    else:
        with _applied(lm, arts):
            post = fact_scores(lm, facts)
    rows = []
    for i, f in enumerate(facts):
        r: dict[str, Any] = {"subject": f.subject, "prompt": f.prompt, "target_true": f.target_true,
                             "target_new": f.target_new, "relation_id": f.relation_id, "case_id": f.case_id}
        r.update({f"pre_{k}": v for k, v in pre[i].items()})
        r.update({f"post_{k}": v for k, v in post[i].items()})
        rows.append(r)
    if not per_fact:
        gen = _generation(lm, facts, arts, cfg, baseline, reuse, rows)
    else:
        gen = _fill_generation(rows, gen_parts[1], gen_parts[0], gen_parts[2], gen_parts[3], cfg) if gen_parts else {}
    prov = {"model": lm.identity.to_dict(), "n_facts": len(facts), "n_artifacts": len(arts), "per_fact": per_fact,
            "neighborhood_prompts": sum(len(f.neighborhood) for f in facts), "neighborhood_excluded": excluded,
            "eval_config": dataclasses.asdict(cfg), "pre_reused": reuse, **(provenance or {})}
    return EditEvaluation(provenance=prov, rows=rows, generation=gen)
