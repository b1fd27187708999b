"""One harness for every memory mechanism: the same facts, the same metrics, whatever the artifact.

A *mechanism* is only a name and its artifacts -- anything with ``apply(model)`` returning a
context manager that changes the model and restores it on exit (a ROME/MEMIT edit, a steering
vector, a KV memory, retrieved text in context). :func:`compare_mechanisms` never asks which kind
it is. For each mechanism it measures:

* **knowledge** -- efficacy, paraphrase and neighbourhood success (ROME's ES / PS / NS on CounterFact
  prompts; Meng et al. 2022) and top-1 token accuracy (EasyEdit's), with
  :func:`~lens_memory.edit.evaluate.evaluate_edits`: per fact (artifact ``i`` alone for fact
  ``i``) or all artifacts together (a batch edit);
* **fluency** -- ROME's generation entropy (GE) formula on prompt + ``gen_tokens`` generated tokens with the
  artifact applied (ROME generates 100 tokens in all; shorter texts score lower, so compare rows with each
  other, not with published GE);
* **cost** -- prefill milliseconds and decode milliseconds per token with the artifact applied,
  the context tokens the model reads, the bytes the artifact stores (``nbytes()``, or the tensors
  it holds) and the seconds it took to fit (given by the caller);
* **reversibility** -- logits of probe prompts before applying and after leaving the ``with``
  block, normally and after an exception raised inside it: the largest absolute difference
  (``0.0`` means bit-exact).

The result is a :class:`Comparison` with one row per mechanism.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .artifacts import load_artifact, require, save_artifact
from .errors import LensMemoryError

__all__ = ["Mechanism", "CompareConfig", "Comparison", "compare_mechanisms", "artifact_nbytes", "reversibility"]

log = logging.getLogger(__name__)

KNOWLEDGE = ("efficacy", "paraphrase", "neighborhood")


@dataclass
class Mechanism:
    """A named set of artifacts. ``per_fact``: artifact ``i`` belongs to fact ``i``; else applied together."""

    name: str
    artifacts: list[Any]
    per_fact: bool = True
    fit_seconds: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.artifacts:
            raise LensMemoryError(f"mechanism {self.name!r} has no artifacts")
        for a in self.artifacts:
            if not callable(getattr(a, "apply", None)):
                raise LensMemoryError(f"mechanism {self.name!r}: {type(a).__name__} has no apply(model)")


@dataclass(frozen=True)
class CompareConfig:
    """``fluency_facts``/``gen_tokens``: generations scored; ``cost_facts``: facts timed; ``probes``: reversibility."""

    fluency_facts: int = 5
    gen_tokens: int = 30
    cost_facts: int = 3
    new_tokens: int = 16
    seed: int = 0
    probes: tuple[str, ...] = ("The Eiffel Tower is located in the city of", "My favourite food is")

    def __post_init__(self) -> None:
        if self.fluency_facts < 0 or self.gen_tokens < 1 or self.cost_facts < 0 or self.new_tokens < 2:
            raise LensMemoryError(f"invalid CompareConfig {self!r}: fluency_facts >= 0, gen_tokens >= 1, "
                                  "cost_facts >= 0, new_tokens >= 2")
        if not self.probes:
            raise LensMemoryError("CompareConfig.probes must name at least one prompt")


def _tensor_bytes(obj: Any, seen: set[int]) -> int:
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    if dataclasses.is_dataclass(obj):
        return sum(_tensor_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    return 0


def artifact_nbytes(artifact: Any) -> int:
    """Stored bytes: the artifact's ``nbytes()`` if it has one, else the tensors it holds."""
    fn = getattr(artifact, "nbytes", None)
    if callable(fn):
        return int(fn())
    return int(_tensor_bytes(artifact, set()))


@torch.no_grad()
def _probe_logits(lm: Any, probes: Sequence[str]) -> list[torch.Tensor]:
    return [lm.hf(lm.encode(p)[None].to(lm.device)).logits[0].float().cpu() for p in probes]


class _Probe(Exception):
    pass


@torch.no_grad()
def reversibility(lm: Any, artifact: Any, probes: Sequence[str]) -> dict[str, Any]:
    """Max |Δlogit| on ``probes`` after apply + exit, and after apply + exception; whether it changed them."""
    before = _probe_logits(lm, probes)
    with artifact.apply(lm):
        during = _probe_logits(lm, probes)
    after = _probe_logits(lm, probes)
    try:
        with artifact.apply(lm):
            raise _Probe
    except _Probe:
        pass
    after_exc = _probe_logits(lm, probes)

    def diff(xs: list[torch.Tensor], last: bool = False) -> float:
        return max(float((a[-1:] - b[-1:] if last else a - b).abs().max()) for a, b in zip(before, xs))

    return {"max_abs_diff_after_exit": diff(after), "max_abs_diff_after_exception": diff(after_exc),
            "bit_exact": all(torch.equal(a, b) for a, b in zip(before + before, after + after_exc)),
            "max_abs_change_while_applied": diff(during, last=True)}  # next-token logits (context may add tokens)


@dataclass
class Comparison:
    """One row per mechanism: knowledge, fluency, cost, reversibility; with provenance."""

    rows: list[dict[str, Any]]
    provenance: dict[str, Any]
    per_fact: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("mechanism")

    def row(self, name: str) -> dict[str, Any]:
        for r in self.rows:
            if r["mechanism"] == name:
                return r
        raise KeyError(f"no mechanism {name!r}; have {[r['mechanism'] for r in self.rows]}")

    def plot(self):
        """Efficacy / paraphrase / neighbourhood per mechanism with 95% intervals."""
        from .viz import plot_condition_bars

        table = {r["mechanism"]: {m: r[m] for m in KNOWLEDGE} for r in self.rows}
        errors = {r["mechanism"]: {m: tuple(r[f"{m}_ci95"]) for m in KNOWLEDGE} for r in self.rows}
        return plot_condition_bars(table, KNOWLEDGE, ylabel="success rate", errors=errors, bounds=(0.0, 1.0),
                                   title=f"{self.provenance.get('n_facts')} counterfactual facts, every mechanism")

    def save(self, path: str | Path) -> Path:
        """Write ``comparison.json`` into directory ``path`` atomically."""
        return save_artifact(path, "comparison", {"rows": self.rows, "provenance": self.provenance,
                                                  "per_fact": self.per_fact})

    @classmethod
    def load(cls, path: str | Path) -> "Comparison":
        d, _ = load_artifact(path, "comparison")
        require(d, ("rows", "provenance"), path)
        return cls(d["rows"], d["provenance"], d.get("per_fact", {}))

def compare_mechanisms(lm: Any, facts: Sequence[Any], mechanisms: Sequence[Mechanism],
                       config: CompareConfig | None = None, *, include_baseline: bool = True,
                       progress: bool = True) -> Comparison:
    """Evaluate every mechanism on ``facts`` with the same metrics (see the module docstring)."""
    from tqdm.auto import tqdm

    from .edit.evaluate import EvalConfig, evaluate_edits
    from .memory.evaluate import measure_cost

    cfg = config or CompareConfig()
    facts = list(facts)
    if not facts:
        raise LensMemoryError("compare_mechanisms needs at least one fact")
    names = [m.name for m in mechanisms]
    if len(set(names)) != len(names) or "none" in names:
        raise LensMemoryError(f"mechanism names must be unique and not 'none': {names}")
    for m in mechanisms:
        if m.per_fact and len(m.artifacts) != len(facts):
            raise LensMemoryError(f"mechanism {m.name!r} is per fact but has {len(m.artifacts)} artifacts "
                                  f"for {len(facts)} facts")
    ecfg = EvalConfig(fluency_facts=min(cfg.fluency_facts, len(facts)), gen_tokens=cfg.gen_tokens, seed=cfg.seed,
                      consistency_model_text_tfidf=False)
    n_cost = min(cfg.cost_facts, len(facts))
    prompts = [f.prompt for f in facts[:n_cost]]
    rows, per_fact = [], {}
    baseline_done = False
    first = None  # the unchanged model's scores and generations are computed once and reused
    for m in tqdm(list(mechanisms), desc="compare mechanisms", disable=not progress):
        ev = evaluate_edits(lm, facts, m.artifacts, per_fact=m.per_fact, config=ecfg, baseline=first)
        first = first or ev
        s = ev.summary()
        if include_baseline and not baseline_done:
            base = {"mechanism": "none", **{k: s["pre"][f"{k}_success"] for k in KNOWLEDGE},
                    **{f"{k}_ci95": s["pre"][f"{k}_success_ci95"] for k in KNOWLEDGE},
                    **{f"{k}_accuracy": s["pre"][f"{k}_accuracy"] for k in KNOWLEDGE},
                    "fluency": ev.generation.get("fluency_ngram_entropy_pre"), "bytes_per_fact": 0, "fit_seconds": 0.0,
                    "n_artifacts": 0, "per_fact": True, "neighborhood_excluded": 0}
            if n_cost:
                base.update(_cost(measure_cost(lm, prompts, new_tokens=cfg.new_tokens)))
            base.update({"reversible": True, "max_abs_diff_after_exit": 0.0, "max_abs_diff_after_exception": 0.0})
            rows.append(base)
            baseline_done = True
        row: dict[str, Any] = {"mechanism": m.name, **{k: s["post"][f"{k}_success"] for k in KNOWLEDGE},
                               **{f"{k}_ci95": s["post"][f"{k}_success_ci95"] for k in KNOWLEDGE},
                               **{f"{k}_accuracy": s["post"][f"{k}_accuracy"] for k in KNOWLEDGE},
                               "fluency": ev.generation.get("fluency_ngram_entropy_post"),
                               "n_artifacts": len(m.artifacts), "per_fact": m.per_fact,
                               "neighborhood_excluded": ev.provenance.get("neighborhood_excluded", 0)}
        total = sum(artifact_nbytes(a) for a in m.artifacts)
        row["bytes_total"] = total
        row["bytes_per_fact"] = total / len(facts)
        row["fit_seconds"] = m.fit_seconds
        row["fit_seconds_per_fact"] = None if m.fit_seconds is None else m.fit_seconds / len(facts)
        if n_cost:
            arts = m.artifacts[:n_cost] if m.per_fact else None
            if arts is None:  # applied together: time the prompts with all of them on
                from .edit.evaluate import _applied

                with _applied(lm, m.artifacts):
                    c = measure_cost(lm, prompts, new_tokens=cfg.new_tokens)
            else:
                c = measure_cost(lm, prompts, arts, new_tokens=cfg.new_tokens)
            row.update(_cost(c))
        rev = reversibility(lm, m.artifacts[0], cfg.probes)
        row.update({"reversible": rev["bit_exact"], "max_abs_diff_after_exit": rev["max_abs_diff_after_exit"],
                    "max_abs_diff_after_exception": rev["max_abs_diff_after_exception"],
                    "probe_change_while_applied": rev["max_abs_change_while_applied"]})
        row.update({f"info_{k}": v for k, v in m.info.items()})
        rows.append(row)
        per_fact[m.name] = ev.rows
        log.info("%s: efficacy %.2f paraphrase %.2f neighbourhood %.2f", m.name, row["efficacy"], row["paraphrase"],
                 row["neighborhood"])
    prov = {"model": lm.identity.to_dict(), "n_facts": len(facts), "facts": [f.subject for f in facts],
            "config": dataclasses.asdict(cfg), "mechanisms": [m.name for m in mechanisms]}
    return Comparison(rows, prov, per_fact)


def _cost(c: dict[str, float]) -> dict[str, float]:
    return {"prefill_ms": c["prefill_ms"], "decode_ms_per_token": c["decode_ms_per_token"],
            "context_tokens": c["context_tokens"], "attach_ms": c["attach_ms"]}
