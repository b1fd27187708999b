"""Every memory mechanism through one harness: the same facts, the same metrics, whatever the artifact.

A *mechanism* is only a name and its artifacts -- anything with ``apply(model)`` returning a
context manager that changes the model and restores it on exit (a ROME/MEMIT edit, a steering
vector, a KV memory, retrieved text in context). :func:`compare_mechanisms` never asks which kind
it is. This module only orchestrates; the metrics are :mod:`lens_memory.harness`'s. For each
mechanism it measures:

* **knowledge** -- efficacy, paraphrase and neighbourhood success (ROME's ES / PS / NS on CounterFact
  prompts; Meng et al. 2022) and top-1 token accuracy (EasyEdit's), with
  :func:`~lens_memory.harness.evaluate_edits`: per fact (artifact ``i`` alone for fact
  ``i``) or all artifacts together (a batch edit);
* **fluency** -- ROME's generation entropy (GE) formula on prompt + ``gen_tokens`` generated tokens with the
  artifact applied (ROME generates 100 tokens in all; shorter texts score lower, so compare rows with each
  other, not with published GE);
* **cost** -- prefill milliseconds and decode milliseconds per token with the artifact applied,
  the context tokens the model reads (:func:`~lens_memory.harness.measure_cost`), the bytes the artifact
  stores (:func:`~lens_memory.harness.artifact_nbytes`: ``nbytes()``, or the tensors it holds) and the
  seconds it took to fit (given by the caller);
* **reversibility** -- logits of probe prompts before applying and after leaving the ``with``
  block, normally and after an exception raised inside it: the largest absolute difference
  (``0.0`` means bit-exact; :func:`~lens_memory.harness.reversibility`).

The result is a :class:`Comparison` with one row per mechanism. Its knowledge and cost parts come from
:func:`~lens_memory.harness.knowledge_rows` and :func:`~lens_memory.harness.cost_rows`, which
``lens-memory memory`` (:func:`~lens_memory.workflows.memory.run_memory`) uses for its RAG / dense / sparse
conditions too.
``lens_memory.compare.reversibility`` and ``.artifact_nbytes`` still work for one release and warn
``DeprecationWarning``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import harness
from ._moved import moved
from .artifacts import load_artifact, require, save_artifact
from .errors import LensMemoryError
from .harness import EvalConfig, cost_rows, knowledge_rows

__all__ = ["Mechanism", "CompareConfig", "Comparison", "compare_mechanisms"]

__getattr__ = moved(__name__, {"artifact_nbytes": "lens_memory.harness", "reversibility": "lens_memory.harness",
                               "_tensor_bytes": "lens_memory.harness.cost",
                               "_probe_logits": "lens_memory.harness.reversibility",
                               "_Probe": "lens_memory.harness.reversibility"})

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



def _check_mechanisms(facts: Sequence[Any], mechanisms: Sequence[Mechanism]) -> None:
    if not facts:
        raise LensMemoryError("compare_mechanisms needs at least one fact")
    names = [m.name for m in mechanisms]
    if len(set(names)) != len(names) or "none" in names:
        raise LensMemoryError(f"mechanism names must be unique and not 'none': {names}")
    for m in mechanisms:
        if m.per_fact and len(m.artifacts) != len(facts):
            raise LensMemoryError(f"mechanism {m.name!r} is per fact but has {len(m.artifacts)} artifacts "
                                  f"for {len(facts)} facts")


def compare_mechanisms(lm: Any, facts: Sequence[Any], mechanisms: Sequence[Mechanism],
                       config: CompareConfig | None = None, *, include_baseline: bool = True,
                       progress: bool = True) -> Comparison:
    """Evaluate every mechanism on ``facts`` with the same metrics (see the module docstring)."""
    cfg = config or CompareConfig()
    facts = list(facts)
    _check_mechanisms(facts, mechanisms)
    ecfg = EvalConfig(fluency_facts=min(cfg.fluency_facts, len(facts)), gen_tokens=cfg.gen_tokens, seed=cfg.seed,
                      consistency_model_text_tfidf=False)
    conditions = {m.name: m.artifacts for m in mechanisms}
    per_fact = {m.name: m.per_fact for m in mechanisms}
    knowledge = knowledge_rows(lm, facts, conditions, ecfg, per_fact=per_fact, include_baseline=include_baseline,
                               progress=progress)
    n_cost = min(cfg.cost_facts, len(facts))
    costs = (cost_rows(lm, [f.prompt for f in facts[:n_cost]], conditions, per_fact=per_fact,
                       new_tokens=cfg.new_tokens, include_baseline=include_baseline) if n_cost else {})
    rows, by_name = [], {m.name: m for m in mechanisms}
    for row in knowledge.rows:
        name = row["mechanism"]
        if name == "none":
            row.update({"bytes_per_fact": 0, "fit_seconds": 0.0, "n_artifacts": 0, "per_fact": True,
                        "neighborhood_excluded": 0})
            row.update(_cost(costs[name]) if n_cost else {})
            row.update({"reversible": True, "max_abs_diff_after_exit": 0.0, "max_abs_diff_after_exception": 0.0})
        else:
            row.update(_footprint_and_reversibility(lm, by_name[name], len(facts), costs.get(name), cfg.probes))
        rows.append(row)
    prov = {"model": lm.identity.to_dict(), "n_facts": len(facts), "facts": [f.subject for f in facts],
            "config": dataclasses.asdict(cfg), "mechanisms": [m.name for m in mechanisms]}
    return Comparison(rows, prov, {name: ev.rows for name, ev in knowledge.evaluations.items()})


def _footprint_and_reversibility(lm: Any, m: Mechanism, n_facts: int, cost: dict[str, float] | None,
                                 probes: Sequence[str]) -> dict[str, Any]:
    """Bytes, fit seconds, cost and reversibility columns of mechanism ``m``'s row."""
    total = sum(harness.artifact_nbytes(a) for a in m.artifacts)
    out: dict[str, Any] = {"bytes_total": total, "bytes_per_fact": total / n_facts, "fit_seconds": m.fit_seconds,
                           "fit_seconds_per_fact": None if m.fit_seconds is None else m.fit_seconds / n_facts}
    if cost is not None:
        out.update(_cost(cost))
    rev = harness.reversibility(lm, m.artifacts[0], probes)
    out.update({"reversible": rev["bit_exact"], "max_abs_diff_after_exit": rev["max_abs_diff_after_exit"],
                "max_abs_diff_after_exception": rev["max_abs_diff_after_exception"],
                "probe_change_while_applied": rev["max_abs_change_while_applied"]})
    out.update({f"info_{k}": v for k, v in m.info.items()})
    return out


def _cost(c: dict[str, float]) -> dict[str, float]:
    return {"prefill_ms": c["prefill_ms"], "decode_ms_per_token": c["decode_ms_per_token"],
            "context_tokens": c["context_tokens"], "attach_ms": c["attach_ms"]}
