"""The memory workflow end to end, as used by ``lens-memory memory`` and the report.

Counterfactual facts are written as reference sentences and kept three ways -- as RAG documents
in a :class:`~lens_memory.rag.store.DocumentStore`, as a dense KV memory and as a sparse (top-k per
head) KV memory -- then compared on the same facts: exactness of the dense memory against the text
prefix, retrieval recall, efficacy / paraphrase / neighbourhood with each fact's reference present
(per fact, as for weight edits), attention to memory vs context, and cost in time and bytes.

What is compared with what. Every condition holds the same text per fact, the sentence
:func:`~lens_memory.rag.fact_documents` writes, and each fact is scored with only its own reference
present. The tokens differ in one place: RAG reads ``BOS + document + "\\n\\n" + prompt``, while the dense
memory stands for ``BOS + document + prompt`` (exact to float error, :func:`.evaluate.exactness_check`).
The sparse memory keeps ``top_k`` of those document tokens per layer and key-value head. The measured
effect of the separator is in :mod:`lens_memory.rag`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from .. import viz
from ..errors import LensMemoryError
from ..harness import EvalConfig, KnowledgeRows, cost_rows, knowledge_rows
from ..io import write_json
from ..rag import ContextArtifact, build_fact_store, fact_documents, get_retriever, retrieval_recall
from ..memory.attention import AttentionComparison, compare_attention
from ..memory.bank import MemoryBank, MemoryConfig, encode_memory, kv_bytes_per_token
from ..memory.evaluate import MemoryLayerSweep, exactness_check, memory_layer_sweep

__all__ = ["run_memory"]

log = logging.getLogger(__name__)

KNOWLEDGE = ("efficacy", "paraphrase", "neighborhood")


def run_memory(lm: Any, facts: Sequence[Any], out: str | Path | None = None, *, top_k: int = 8,
               layers: str | tuple[int, ...] = "all", position: str = "stacked", n_attention: int = 10,
               n_cost: int = 5, fluency_facts: int = 5, gen_tokens: int = 30, seed: int = 0,
               sweep: bool = True, knowledge: bool = True, progress: bool = True,
               split: str | None = None) -> dict[str, Any]:
    """Compare RAG, dense and sparse KV memories of ``facts`` (each needs ``target_new``); write to ``out``.

    ``split`` (``"test"``, ``"dev"``, ``"all"``) is the fact split ``facts`` were drawn from, recorded in the summary.

    ``knowledge=False`` skips the efficacy / paraphrase / neighbourhood evaluation (the report runs
    it for every mechanism at once with :func:`~lens_memory.compare.compare_mechanisms`). The knowledge
    and cost rows are the comparison harness's (:func:`~lens_memory.harness.knowledge_rows`,
    :func:`~lens_memory.harness.cost_rows`), with the conditions ``rag``, ``dense`` and ``sparse``.
    """
    facts = list(facts)
    if not facts:
        raise LensMemoryError("run_memory needs at least one fact")
    out = Path(out) if out is not None else None
    seconds: dict[str, float] = {}
    docs = fact_documents(facts)
    summary: dict[str, Any] = {"command": "memory", "n_facts": len(facts), "split": split, "top_k": top_k,
                               "layers": layers, "position": position}
    with _timed(seconds, "exactness"):
        summary["exactness_max_abs_diff"] = exactness_check(lm, docs[0][1], facts[0].prompt)
    with _timed(seconds, "retrieval"):
        summary.update(_retrieval(facts, docs, out))
    with _timed(seconds, "encode"):
        dense = encode_memory(lm, docs, MemoryConfig(layers=layers, top_k=None, position=position), progress=progress)
    sparse = dense.sparsify(top_k)
    summary.update(_sizes(lm, facts, docs, dense, sparse))
    conditions = {"rag": [ContextArtifact([text], ids=[i]) for i, text in docs],
                  "dense": [dense.subset([i]) for i, _ in docs], "sparse": [sparse.subset([i]) for i, _ in docs]}
    cfg = EvalConfig(fluency_facts=min(fluency_facts, len(facts)), gen_tokens=gen_tokens, seed=seed)
    kn = _knowledge(lm, facts, conditions, cfg, seconds, summary) if knowledge else None
    layer_sweep = None
    if sweep:  # which layers must carry the memory
        with _timed(seconds, "layer_sweep"):
            layer_sweep = _layer_sweep(lm, facts, top_k, progress)
            summary["layer_sweep"] = [{k: r[k] for k in ("layers", "top_k") + KNOWLEDGE} for r in layer_sweep.rows]
    n_att = min(n_attention, len(facts))
    with _timed(seconds, "attention"):
        att = compare_attention(lm, [f.prompt for f in facts[:n_att]], [text for _, text in docs[:n_att]],
                                {"dense": conditions["dense"][:n_att], "sparse": conditions["sparse"][:n_att]},
                                progress=progress)
    summary.update(_attention_summary(att))
    n_c = min(n_cost, len(facts))
    with _timed(seconds, "cost"):
        cost = cost_rows(lm, [f.prompt for f in facts[:n_c]], conditions)
    summary.update({"cost": cost, **{m: {c: v[m] for c, v in cost.items()}
                                     for m in ("decode_ms_per_token", "prefill_ms", "context_tokens")}})
    summary.update({"seconds": {k: round(v, 1) for k, v in seconds.items()}, "model": lm.identity.to_dict(),
                    "memory_config": {"dense": dense.config.to_dict(), "sparse": sparse.config.to_dict()},
                    "eval_config": {"fluency_facts": cfg.fluency_facts, "gen_tokens": cfg.gen_tokens, "seed": seed,
                                    "n_attention": n_att, "n_cost": n_c}})
    if out is not None:
        _save(out, dense, sparse, kn, att, layer_sweep)
        _save_figures(out, f"{lm.name}: {len(facts)} counterfactual facts", kn, att, layer_sweep, cost)
        write_json(out / "summary.json", summary)
    return summary


def _knowledge(lm: Any, facts: Sequence[Any], conditions: dict[str, list[Any]], cfg: EvalConfig,
               seconds: dict[str, float], summary: dict[str, Any]) -> KnowledgeRows:
    """The harness's knowledge rows ``none`` (the unchanged model), ``rag``, ``dense``, ``sparse``, into ``summary``.

    Per fact: only its own reference is present, also for its neighbourhood prompts.
    """
    kn = knowledge_rows(lm, facts, conditions, cfg, reuse_baseline=False,
                        provenance={c: {"method": c, "condition": c} for c in conditions})
    seconds.update({f"knowledge_{c}": v for c, v in kn.seconds.items()})
    summary["knowledge"] = {r["mechanism"]: {k: r[k] for k in KNOWLEDGE + ("fluency",)} for r in kn.rows}
    summary.update({k: {c: v[k] for c, v in summary["knowledge"].items()} for k in KNOWLEDGE})
    return kn


@contextlib.contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Record the wall-clock seconds of the ``with`` block as ``seconds[key]``."""
    t = time.time()
    yield
    seconds[key] = time.time() - t


def _retrieval(facts: Sequence[Any], docs: Sequence[tuple[str, str]], out: Path | None) -> dict[str, Any]:
    """Build the RAG store (``out/store.json``) and measure recall@1/@5 of each fact's prompt and paraphrases."""
    store = build_fact_store(facts, (out / "store.json") if out is not None else None)
    queries, relevant = [], []
    for f, (d, _) in zip(facts, docs):
        for q in (f.prompt, *f.paraphrases):
            queries.append(q)
            relevant.append(d)
    recall = {kind: retrieval_recall(get_retriever(kind, store), queries, relevant, ks=(1, 5))
              for kind in ("bm25", "dense")}
    return {"retrieval": {"queries": len(queries), **recall}, "retrieval_recall@1": recall["bm25"]["recall@1"],
            "retrieval_recall@5": recall["bm25"]["recall@5"]}


def _sizes(lm: Any, facts: Sequence[Any], docs: Sequence[tuple[str, str]], dense: MemoryBank,
           sparse: MemoryBank) -> dict[str, Any]:
    """Bytes and tokens of the memories, and of the KV cache RAG's context fills."""
    rag_tokens = [ContextArtifact([text]).n_tokens(lm, f.prompt) for f, (_, text) in zip(facts, docs)]
    return {"memory_bytes": {"dense": dense.nbytes(), "sparse": sparse.nbytes()},
            "memory_bytes_per_reference": {"dense": dense.nbytes() / len(docs), "sparse": sparse.nbytes() / len(docs)},
            "rag_kv_bytes": int(sum(rag_tokens) * kv_bytes_per_token(lm)),
            "rag_context_tokens_per_reference": sum(rag_tokens) / len(rag_tokens),
            "memory_tokens_per_head": {"dense": dense.n_tokens(), "sparse": sparse.n_tokens()}}


def _layer_sweep(lm: Any, facts: Sequence[Any], top_k: int, progress: bool) -> MemoryLayerSweep:
    """Memory at the first half, the second half, the first two thirds and all layers; dense and top-k."""
    n = lm.n_layers
    sets = [tuple(range(0, n // 2)), tuple(range(n // 2, n)), tuple(range(0, (2 * n) // 3 + 1)), "all"]
    return memory_layer_sweep(lm, facts, sets, top_ks=(None, top_k), progress=progress)


def _attention_summary(att: AttentionComparison) -> dict[str, Any]:
    att_s = att.summary()
    return {"attention_mass_on_memory": att_s["reference"], "attention_sink_mass": att_s["sink"],
            "attention_query_mass": att_s["query"], "attention_js_vs_none": att_s["js_vs_none"],
            "attention_entropy": att_s["entropy"], "attention_reference_by_layer": att.layer_means("reference")}


def _save(out: Path, dense: MemoryBank, sparse: MemoryBank, kn: KnowledgeRows | None, att: AttentionComparison,
          layer_sweep: MemoryLayerSweep | None) -> None:
    """The memories, the knowledge evaluations, the attention comparison and the layer sweep, under ``out``."""
    dense.save(out / "memory_dense")
    sparse.save(out / "memory_sparse")
    for name, ev in (kn.evaluations.items() if kn is not None else ()):
        ev.save(out / f"knowledge_{name}")
    att.save(out / "attention")
    if layer_sweep is not None:
        layer_sweep.save(out / "layer_sweep")
    att.to_dataframe().to_csv(out / "attention.csv", index=False)


def _save_figures(out: Path, title: str, kn: KnowledgeRows | None, att: AttentionComparison,
                  layer_sweep: MemoryLayerSweep | None, cost: dict[str, dict[str, float]]) -> None:
    figs = out / "figures"
    if layer_sweep is not None:
        viz.save_figure(layer_sweep.plot(), figs / "layer_sweep")
    viz.save_figure(att.plot("reference"), figs / "attention_reference_heatmap")
    viz.save_figure(att.plot("js_vs_none"), figs / "attention_divergence_heatmap")
    viz.save_figure(viz.plot_attention_layers(att), figs / "attention_by_layer")
    if kn is not None:
        table = {r["mechanism"]: {k: r[k] for k in KNOWLEDGE} for r in kn.rows}
        errors = {r["mechanism"]: {k: tuple(r[f"{k}_ci95"]) for k in KNOWLEDGE} for r in kn.rows}
        viz.save_figure(viz.plot_condition_bars(table, KNOWLEDGE, title=title, ylabel="success rate", errors=errors,
                                                bounds=(0.0, 1.0)), figs / "knowledge")
    times = {c: {"prefill ms": v["prefill_ms"], "decode ms/token": v["decode_ms_per_token"]} for c, v in cost.items()}
    viz.save_figure(viz.plot_condition_bars(times, ("prefill ms", "decode ms/token"), title="cost per query",
                                            ylabel="milliseconds"), figs / "cost")
