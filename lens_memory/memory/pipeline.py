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

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import LensMemoryError

__all__ = ["run_memory"]

log = logging.getLogger(__name__)


def run_memory(lm: Any, facts: Sequence[Any], out: str | Path | None = None, *, top_k: int = 8,
               layers: str | tuple[int, ...] = "all", position: str = "stacked", n_attention: int = 10,
               n_cost: int = 5, fluency_facts: int = 5, gen_tokens: int = 30, seed: int = 0,
               sweep: bool = True, knowledge: bool = True, progress: bool = True,
               split: str | None = None) -> dict[str, Any]:
    """Compare RAG, dense and sparse KV memories of ``facts`` (each needs ``target_new``); write to ``out``.

    ``split`` (``"test"``, ``"dev"``, ``"all"``) is the fact split ``facts`` were drawn from, recorded in the summary.

    ``knowledge=False`` skips the efficacy / paraphrase / neighbourhood evaluation (the report runs
    it for every mechanism at once with :func:`~lens_memory.compare.compare_mechanisms`).
    """
    from .. import viz
    from ..edit.evaluate import EvalConfig, evaluate_edits
    from ..io import write_json
    from ..rag import ContextArtifact, build_fact_store, fact_documents, get_retriever, retrieval_recall
    from .attention import compare_attention
    from .bank import MemoryConfig, encode_memory, kv_bytes_per_token
    from .evaluate import exactness_check, measure_cost, memory_layer_sweep

    facts = list(facts)
    if not facts:
        raise LensMemoryError("run_memory needs at least one fact")
    out = Path(out) if out is not None else None
    seconds: dict[str, float] = {}
    docs = fact_documents(facts)
    doc_ids = [i for i, _ in docs]
    summary: dict[str, Any] = {"command": "memory", "n_facts": len(facts), "split": split, "top_k": top_k,
                               "layers": layers, "position": position}

    t = time.time()
    summary["exactness_max_abs_diff"] = exactness_check(lm, docs[0][1], facts[0].prompt)
    seconds["exactness"] = time.time() - t

    # -- RAG store and retrieval ------------------------------------------------------------
    t = time.time()
    store = build_fact_store(facts, (out / "store.json") if out is not None else None)
    queries, relevant = [], []
    for f, d in zip(facts, doc_ids):
        for q in (f.prompt, *f.paraphrases):
            queries.append(q)
            relevant.append(d)
    recall = {}
    for kind in ("bm25", "dense"):
        r = retrieval_recall(get_retriever(kind, store), queries, relevant, ks=(1, 5))
        recall[kind] = r
    summary["retrieval"] = {"queries": len(queries), **recall}
    summary["retrieval_recall@1"] = recall["bm25"]["recall@1"]
    summary["retrieval_recall@5"] = recall["bm25"]["recall@5"]
    seconds["retrieval"] = time.time() - t

    # -- memories -----------------------------------------------------------------------------
    t = time.time()
    dense = encode_memory(lm, docs, MemoryConfig(layers=layers, top_k=None, position=position), progress=progress)
    seconds["encode"] = time.time() - t
    sparse = dense.sparsify(top_k)
    rag_tokens = [ContextArtifact([text]).n_tokens(lm, f.prompt) for f, (_, text) in zip(facts, docs)]
    summary["memory_bytes"] = {"dense": dense.nbytes(), "sparse": sparse.nbytes()}
    summary["memory_bytes_per_reference"] = {"dense": dense.nbytes() / len(docs), "sparse": sparse.nbytes() / len(docs)}
    summary["rag_kv_bytes"] = int(sum(rag_tokens) * kv_bytes_per_token(lm))
    summary["rag_context_tokens_per_reference"] = sum(rag_tokens) / len(rag_tokens)
    summary["memory_tokens_per_head"] = {"dense": dense.n_tokens(), "sparse": sparse.n_tokens()}

    conditions = {
        "rag": [ContextArtifact([text], ids=[i]) for i, text in docs],
        "dense": [dense.subset([i]) for i in doc_ids],
        "sparse": [sparse.subset([i]) for i in doc_ids],
    }

    # -- knowledge effect (per fact: its own reference present, also for the neighbourhood prompts) --
    cfg = EvalConfig(fluency_facts=min(fluency_facts, len(facts)), gen_tokens=gen_tokens, seed=seed)
    evals = {}
    scores: dict[str, dict[str, float]] = {}
    cis: dict[str, dict[str, tuple[float, float]]] = {}
    for name, arts in (conditions.items() if knowledge else ()):
        t = time.time()
        ev = evaluate_edits(lm, facts, arts, per_fact=True, config=cfg, provenance={"method": name, "condition": name})
        seconds[f"knowledge_{name}"] = time.time() - t
        evals[name] = ev
        s = ev.summary()
        if "none" not in scores:
            scores["none"] = {k: s["pre"][f"{k}_success"] for k in ("efficacy", "paraphrase", "neighborhood")}
            cis["none"] = {k: tuple(s["pre"][f"{k}_success_ci95"]) for k in ("efficacy", "paraphrase", "neighborhood")}
            scores["none"]["fluency"] = ev.generation.get("fluency_ngram_entropy_pre")
        scores[name] = {k: s["post"][f"{k}_success"] for k in ("efficacy", "paraphrase", "neighborhood")}
        cis[name] = {k: tuple(s["post"][f"{k}_success_ci95"]) for k in ("efficacy", "paraphrase", "neighborhood")}
        scores[name]["fluency"] = ev.generation.get("fluency_ngram_entropy_post")
    if knowledge:
        summary["knowledge"] = scores
        for k in ("efficacy", "paraphrase", "neighborhood"):
            summary[k] = {c: v[k] for c, v in scores.items()}

    # -- which layers must carry the memory ---------------------------------------------------
    layer_sweep = None
    if sweep:
        t = time.time()
        n = lm.n_layers
        sets = [tuple(range(0, n // 2)), tuple(range(n // 2, n)), tuple(range(0, (2 * n) // 3 + 1)), "all"]
        layer_sweep = memory_layer_sweep(lm, facts, sets, top_ks=(None, top_k), progress=progress)
        summary["layer_sweep"] = [{k: r[k] for k in ("layers", "top_k", "efficacy", "paraphrase", "neighborhood")}
                                  for r in layer_sweep.rows]
        seconds["layer_sweep"] = time.time() - t

    # -- attention ------------------------------------------------------------------------------
    t = time.time()
    n_att = min(n_attention, len(facts))
    att = compare_attention(lm, [f.prompt for f in facts[:n_att]], [text for _, text in docs[:n_att]],
                            {"dense": conditions["dense"][:n_att], "sparse": conditions["sparse"][:n_att]},
                            progress=progress)
    seconds["attention"] = time.time() - t
    att_s = att.summary()
    summary["attention_mass_on_memory"] = att_s["reference"]
    summary["attention_sink_mass"] = att_s["sink"]
    summary["attention_query_mass"] = att_s["query"]
    summary["attention_js_vs_none"] = att_s["js_vs_none"]
    summary["attention_entropy"] = att_s["entropy"]
    summary["attention_reference_by_layer"] = att.layer_means("reference")

    # -- cost -------------------------------------------------------------------------------
    t = time.time()
    n_c = min(n_cost, len(facts))
    prompts = [f.prompt for f in facts[:n_c]]
    cost = {"none": measure_cost(lm, prompts)}
    for name, arts in conditions.items():
        cost[name] = measure_cost(lm, prompts, arts[:n_c])
    seconds["cost"] = time.time() - t
    summary["cost"] = cost
    summary["decode_ms_per_token"] = {c: v["decode_ms_per_token"] for c, v in cost.items()}
    summary["prefill_ms"] = {c: v["prefill_ms"] for c, v in cost.items()}
    summary["context_tokens"] = {c: v["context_tokens"] for c, v in cost.items()}

    summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    summary["model"] = lm.identity.to_dict()
    summary["memory_config"] = {"dense": dense.config.to_dict(), "sparse": sparse.config.to_dict()}
    summary["eval_config"] = {"fluency_facts": cfg.fluency_facts, "gen_tokens": cfg.gen_tokens, "seed": seed,
                              "n_attention": n_att, "n_cost": n_c}
    if out is not None:
        dense.save(out / "memory_dense")
        sparse.save(out / "memory_sparse")
        for name, ev in evals.items():
            ev.save(out / f"knowledge_{name}")
        att.save(out / "attention")
        if layer_sweep is not None:
            layer_sweep.save(out / "layer_sweep")
            viz.save_figure(layer_sweep.plot(), out / "figures" / "layer_sweep")
        att.to_dataframe().to_csv(out / "attention.csv", index=False)
        figs = out / "figures"
        viz.save_figure(att.plot("reference"), figs / "attention_reference_heatmap")
        viz.save_figure(att.plot("js_vs_none"), figs / "attention_divergence_heatmap")
        viz.save_figure(viz.plot_attention_layers(att), figs / "attention_by_layer")
        if knowledge:
            viz.save_figure(viz.plot_condition_bars({c: {k: v[k] for k in ("efficacy", "paraphrase", "neighborhood")}
                                                     for c, v in scores.items()},
                                                    ("efficacy", "paraphrase", "neighborhood"),
                                                    title=f"{lm.name}: {len(facts)} counterfactual facts",
                                                    ylabel="success rate", errors=cis, bounds=(0.0, 1.0)), figs / "knowledge")
        viz.save_figure(viz.plot_condition_bars({c: {"prefill ms": v["prefill_ms"], "decode ms/token": v["decode_ms_per_token"]}
                                                 for c, v in cost.items()}, ("prefill ms", "decode ms/token"),
                                                title="cost per query", ylabel="milliseconds"), figs / "cost")
        write_json(out / "summary.json", summary)
    return summary
