"""Whether a KV memory is exact, and which layers must carry it.

* :func:`exactness_check` -- a causal model's keys and values of a text prefix are exactly what
  a dense memory of that text stores, so a one-reference dense memory attached at every layer
  (``position="stacked"``) must give the logits of ``BOS + reference + query`` read as one token
  sequence. Returns the largest absolute logit difference over the query's tokens: at most 3.2e-5 on
  Gemma 3 270M for 10 built-in counterfactual references and their prompts.
* :func:`memory_layer_sweep` -- which layers must carry a fact's memory for the model to use it.

Cost (prefill and decode time, context tokens, bytes; :func:`~lens_memory.harness.measure_cost`) and
knowledge effects (efficacy, paraphrase, neighbourhood with the memory attached;
:func:`~lens_memory.harness.evaluate_edits`, one artifact per fact) are measured by
:mod:`lens_memory.harness`, the same way as for weight edits. ``lens_memory.memory.evaluate.measure_cost``
still works for one release and warns ``DeprecationWarning``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .._moved import moved
from ..errors import LensMemoryError
from .bank import MemoryConfig, encode_memory

__all__ = ["exactness_check", "memory_layer_sweep", "MemoryLayerSweep"]

__getattr__ = moved(__name__, {"measure_cost": "lens_memory.harness",
                               "_generate_seconds": "lens_memory.harness.cost"})


@torch.no_grad()
def exactness_check(lm: Any, reference: str, query: str) -> float:
    """Max |logit difference| between ``reference`` as a dense all-layer memory and as a text prefix.

    Both sides are the model's own Hugging Face forward (``lm.hf``), never our partial-forward
    engine: the text side runs ``BOS + reference + query``, the memory side runs ``BOS + query`` with
    the memory attached, and the query's tokens after BOS are compared. The token sequences are the
    same by construction. The reference tokens are ``lm.encode(reference)``, which are the ids
    :func:`~lens_memory.memory.bank.encode_memory` encodes. The query tokens are ``lm.encode(query)``
    without their BOS, whose place the memory's shared BOS takes. This is the concatenation of the two
    token lists, not the tokenization of the joined string. On Gemma 3 270M the two agree for all 492
    built-in fact documents and their prompts. RAG's default template puts ``"\\n\\n"`` (one token on
    Gemma) between document and query, so RAG is *not* this text side; RAG with
    ``template="{context}{query}"`` is (tested).
    """
    bank = encode_memory(lm, [reference], MemoryConfig(layers="all", top_k=None, position="stacked"))
    r_ids, q_ids = lm.encode(reference), lm.encode(query)
    if len(q_ids) < 2:
        raise LensMemoryError(f"query {query!r} has no token after BOS")
    full = torch.cat([r_ids, q_ids[1:]])[None].to(lm.device)
    with torch.no_grad():
        text = lm.hf(input_ids=full).logits[0, len(r_ids):]
        with bank.apply(lm):
            mem = lm.hf(input_ids=q_ids[None].to(lm.device)).logits[0, 1:]
    return float((text.double() - mem.double()).abs().max())


@dataclass
class MemoryLayerSweep:
    """Knowledge effect of a memory attached at different layer sets (same facts, same references).

    ``rows``: one dict per (layer set, top_k) with efficacy / paraphrase / neighbourhood success.
    """

    rows: list[dict[str, Any]]
    provenance: dict[str, Any]

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def plot(self):
        from .. import viz

        table = {f"{r['layers']} k={r['top_k'] or 'all'}": {m: r[m] for m in ("efficacy", "paraphrase", "neighborhood")}
                 for r in self.rows}
        return viz.plot_condition_bars(table, ("efficacy", "paraphrase", "neighborhood"), ylabel="success rate",
                                       title="memory at different layers")

    def save(self, path: str | Path) -> Path:
        """Write ``layer_sweep.json`` into directory ``path`` atomically."""
        from ..artifacts import save_artifact

        return save_artifact(path, "layer_sweep", {"rows": self.rows, "provenance": self.provenance})

    @classmethod
    def load(cls, path: str | Path) -> "MemoryLayerSweep":
        from ..artifacts import load_artifact, require

        d, _ = load_artifact(path, "layer_sweep")
        require(d, ("rows", "provenance"), path)
        return cls(d["rows"], d["provenance"])

def _layer_set_item(lm: Any, layers: Sequence[int] | str, shared: tuple) -> list[dict[str, Any]]:
    """The execution seam's item: one layer set's memory, dense and at each ``top_k``, scored per fact."""
    from ..harness import EvalConfig, evaluate_edits

    facts, docs, top_ks = shared
    spec = layers if isinstance(layers, str) else tuple(int(l) for l in layers)
    dense = encode_memory(lm, docs, MemoryConfig(layers=spec))
    label = spec if isinstance(spec, str) else (f"{spec[0]}-{spec[-1]}" if list(spec) == list(range(spec[0], spec[-1] + 1))
                                                else ",".join(map(str, spec)))
    rows = []
    for k in top_ks:
        bank = dense if k is None else dense.sparsify(k)
        ev = evaluate_edits(lm, facts, [bank.subset([i]) for i, _ in docs], per_fact=True,
                            config=EvalConfig(fluency_facts=0))
        s = ev.summary()["post"]
        rows.append({"layers": label, "layer_list": dense.layers, "top_k": k,
                     **{m: s[f"{m}_success"] for m in ("efficacy", "paraphrase", "neighborhood")},
                     "memory_bytes": bank.nbytes()})
    return rows


def memory_layer_sweep(lm: Any, facts: Sequence[Any], layer_sets: Sequence[Sequence[int] | str],
                       top_ks: Sequence[int | None] = (None,), *, progress: bool = False,
                       executor: Any = None) -> MemoryLayerSweep:
    """Which layers must carry a fact's memory? Efficacy, paraphrase and neighbourhood per layer set.

    Each fact's counterfactual reference (:func:`~lens_memory.rag.fact_documents`) is encoded once per
    layer set, attached alone while that fact is scored (as :func:`~lens_memory.harness.evaluate_edits`
    with ``per_fact=True``), dense and at each ``top_k``. Each layer set is an item of the execution seam
    (``executor``, :mod:`lens_memory.parallel`).
    """
    from ..parallel import executor_for
    from ..rag import fact_documents

    docs = fact_documents(facts)
    rows = [row for rs in executor_for(lm, executor).map(lm, _layer_set_item, list(layer_sets),
                                                         shared=(facts, docs, tuple(top_ks)),
                                                         desc="memory layer sweep", progress=progress) for row in rs]
    return MemoryLayerSweep(rows, {"model": lm.identity.to_dict(), "n_facts": len(facts),
                                   "layer_sets": [r["layers"] for r in rows], "top_ks": list(top_ks)})
