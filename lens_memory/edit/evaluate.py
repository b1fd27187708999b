"""CounterFact-style evaluation of edits (or of any memory artifact with ``.apply(model)``).

:func:`evaluate_edits` scores facts before and after: efficacy, paraphrase and neighbourhood
(success, magnitude and top-1 accuracy; :func:`~lens_memory.metrics.fact_scores`), generation
fluency (ROME's n-gram entropy) and -- where reference texts about the new objects exist --
consistency (TF-IDF similarity). It only calls ``artifact.apply(lm)``, so it does not know
which mechanism it measures.

Two ways of pairing artifacts with facts:

* ``per_fact=True`` -- artifact ``i`` is applied alone for fact ``i`` (the standard ROME
  evaluation: every edit on the unedited model);
* otherwise all artifacts are applied together, in order (MEMIT's batch edit, or sequential edits).

When a fact has no generation prompts, its edit prompt and first paraphrase are used; references
for consistency default to the *unedited* model's generations on the fact's ``attribute_prompts``
(other subjects that truly have the new object) -- what the model says about such subjects.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import LensMemoryError
from ..facts import Fact
from ..generation import generate
from ..io import read_json, write_json
from ..metrics import fact_scores, mean_ci, ngram_entropy, tfidf_similarity

__all__ = ["EvalConfig", "EditEvaluation", "evaluate_edits", "METRICS"]

_SCORE_KEYS = ("efficacy_score", "paraphrase_score", "neighborhood_score", "efficacy_accuracy", "paraphrase_accuracy",
               "neighborhood_accuracy", "efficacy_magnitude", "paraphrase_magnitude", "neighborhood_magnitude",
               "p_new", "p_true")
METRICS = ("efficacy_score", "paraphrase_score", "neighborhood_score", "efficacy_accuracy", "paraphrase_accuracy",
           "neighborhood_accuracy", "efficacy_magnitude", "paraphrase_magnitude", "neighborhood_magnitude")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings. ``fluency_facts``: facts whose generations are scored (0 = skip)."""

    fluency_facts: int = 10
    gen_tokens: int = 50
    top_k: int = 5
    seed: int = 0
    consistency: bool = True

    def __post_init__(self) -> None:
        if self.fluency_facts < 0 or self.gen_tokens < 1 or self.top_k < 1:
            raise LensMemoryError(f"invalid EvalConfig {self!r}: fluency_facts >= 0, gen_tokens >= 1, top_k >= 1")


def _gen_prompts(f: Fact) -> list[str]:
    return list(f.generation_prompts) or [f.prompt] + list(f.paraphrases[:1])


@dataclass
class EditEvaluation:
    """Per-fact scores before and after, generation metrics, and provenance."""

    provenance: dict[str, Any]
    rows: list[dict[str, Any]]
    generation: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Means with 95% intervals: ``{"post": {metric: ...}, "pre": {...}, "fluency_pre": ...}``."""
        out: dict[str, Any] = {"n_facts": len(self.rows)}
        for phase in ("post", "pre"):
            out[phase] = {}
            for m in METRICS:
                mean, lo, hi = mean_ci([r[f"{phase}_{m}"] for r in self.rows])
                out[phase][m] = mean
                out[phase][m + "_ci95"] = [lo, hi]
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
        path = Path(path)
        write_json(path / "evaluation.json", {"format": "lens_memory.edit_evaluation/1",
                                              "provenance": self.provenance, "rows": self.rows,
                                              "generation": self.generation})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EditEvaluation":
        d = read_json(Path(path) / "evaluation.json")
        if d.get("format") != "lens_memory.edit_evaluation/1":
            raise LensMemoryError(f"{path} does not hold a saved edit evaluation")
        return cls(provenance=d["provenance"], rows=d["rows"], generation=d.get("generation", {}))


@contextlib.contextmanager
def _applied(lm: Any, artifacts: Sequence[Any]):
    with contextlib.ExitStack() as stack:
        for a in artifacts:
            stack.enter_context(a.apply(lm))
        yield


def _generation_metrics(lm: Any, facts: Sequence[Fact], cfg: EvalConfig, references: dict[int, list[str]] | None):
    texts = {}
    for i, f in enumerate(facts):
        texts[i] = generate(lm, _gen_prompts(f), max_new_tokens=cfg.gen_tokens, top_k=cfg.top_k, seed=cfg.seed + i)
    ent = {i: float(np.mean([ngram_entropy(t) for t in ts])) for i, ts in texts.items()}
    cons = {i: tfidf_similarity(texts[i], references[i]) for i in texts if references and references.get(i)}
    return texts, ent, cons


def _unedited_neighbours(facts: Sequence[Fact]) -> tuple[list[Fact], int]:
    """Drop neighbourhood prompts about subjects that are themselves edited in the same batch.

    Neighbourhood prompts test that *unedited* subjects keep their answer. When many facts are
    edited together (MEMIT, sequential ROME), a fact's neighbours -- other subjects with the same
    true object -- are often edited too, and their changed answers are the edit working, not leaking.
    """
    edited = [f.subject for f in facts]
    out, dropped = [], 0
    for f in facts:
        keep = tuple(p for p in f.neighborhood if not any(s in p for s in edited))
        dropped += len(f.neighborhood) - len(keep)
        out.append(dataclasses.replace(f, neighborhood=keep))
    return out, dropped


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


def evaluate_edits(lm: Any, facts: Sequence[Fact], artifacts: Any | Sequence[Any] | None, *,
                   per_fact: bool = False, config: EvalConfig | None = None,
                   provenance: dict[str, Any] | None = None, baseline: "EditEvaluation | None" = None
                   ) -> EditEvaluation:
    """Score ``facts`` on ``lm`` before and after applying ``artifacts``.

    Args:
        artifacts: one artifact, a list, or ``None`` (pre only: post = pre).
        per_fact: artifact ``i`` belongs to fact ``i`` and is applied alone for it. Otherwise
            all artifacts are applied together and neighbourhood prompts about any edited
            subject are left out (their count is recorded as ``neighborhood_excluded``).
        baseline: an earlier evaluation of the same facts with the same config on the same
            unchanged model; its *pre* scores and generations are reused instead of recomputed
            (ignored when the facts, their neighbourhood prompts or the config differ).
    """
    cfg = config or EvalConfig()
    facts = list(facts)
    if not facts:
        raise LensMemoryError("evaluate_edits needs at least one fact")
    for f in facts:
        if not f.target_new:
            raise LensMemoryError(f"fact {f.subject!r} has no target_new to evaluate")
    arts = [] if artifacts is None else (list(artifacts) if isinstance(artifacts, (list, tuple)) else [artifacts])
    if per_fact and len(arts) != len(facts):
        raise LensMemoryError(f"per_fact=True needs one artifact per fact: {len(arts)} artifacts, {len(facts)} facts")
    excluded = 0
    if not per_fact and len(facts) > 1:
        facts, excluded = _unedited_neighbours(facts)
    reuse = _reusable(baseline, facts, cfg)
    pre = ([{k[4:]: v for k, v in r.items() if k.startswith("pre_") and k[4:] in _SCORE_KEYS} for r in baseline.rows]
           if reuse else fact_scores(lm, facts))
    if per_fact:
        post = []
        for f, a in zip(facts, arts):
            with _applied(lm, [a]):
                post += fact_scores(lm, [f])
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
    gen: dict[str, Any] = {}
    n_gen = min(cfg.fluency_facts, len(facts))
    if n_gen:
        gfacts = facts[:n_gen]
        refs = None
        if cfg.consistency and reuse:
            refs = baseline.generation.get("references")
            refs = {int(k): v for k, v in refs.items()} if refs else None
        elif cfg.consistency:
            refs = {i: generate(lm, list(f.attribute_prompts[:3]), max_new_tokens=cfg.gen_tokens, top_k=cfg.top_k,
                                seed=cfg.seed + 1000 + i) for i, f in enumerate(gfacts) if f.attribute_prompts}
        if reuse and all("pre_fluency" in r for r in baseline.rows[:n_gen]):
            t_pre = {i: [r["pre_generation"]] for i, r in enumerate(baseline.rows[:n_gen])}
            e_pre = {i: r["pre_fluency"] for i, r in enumerate(baseline.rows[:n_gen])}
            c_pre = {i: r["pre_consistency"] for i, r in enumerate(baseline.rows[:n_gen])
                     if r.get("pre_consistency") is not None}
        else:
            t_pre, e_pre, c_pre = _generation_metrics(lm, gfacts, cfg, refs)
        if per_fact:
            t_post, e_post, c_post = {}, {}, {}
            for i, (f, a) in enumerate(zip(gfacts, arts)):
                with _applied(lm, [a]):
                    t, e, c = _generation_metrics(lm, [f], dataclasses.replace(cfg, seed=cfg.seed + i),
                                                  {0: refs[i]} if refs and i in refs else None)
                t_post[i], e_post[i] = t[0], e[0]
                if 0 in c:
                    c_post[i] = c[0]
        else:
            with _applied(lm, arts):
                t_post, e_post, c_post = _generation_metrics(lm, gfacts, cfg, refs)
        for i in range(n_gen):
            rows[i].update({"pre_fluency": e_pre[i], "post_fluency": e_post[i],
                            "pre_consistency": c_pre.get(i), "post_consistency": c_post.get(i),
                            "pre_generation": t_pre[i][0], "post_generation": t_post[i][0]})
        gen = {"fluency_pre": float(np.mean(list(e_pre.values()))), "fluency_post": float(np.mean(list(e_post.values()))),
               "consistency_pre": float(np.mean(list(c_pre.values()))) if c_pre else None,
               "consistency_post": float(np.mean(list(c_post.values()))) if c_post else None,
               "n_generation_facts": n_gen, "gen_tokens": cfg.gen_tokens,
               "references": {str(k): v for k, v in refs.items()} if refs else None}
    prov = {"model": lm.identity.to_dict(), "n_facts": len(facts), "n_artifacts": len(arts), "per_fact": per_fact,
            "neighborhood_prompts": sum(len(f.neighborhood) for f in facts), "neighborhood_excluded": excluded,
            "eval_config": dataclasses.asdict(cfg), "pre_reused": reuse, **(provenance or {})}
    return EditEvaluation(provenance=prov, rows=rows, generation=gen)
