"""Benchmark: KV memory vs RAG cost on the embedded model, at 1, 5 and 20 references.

For the same references (counterfactual fact sentences) and the same query:

* RAG: the references as text before the query (prefill reads every reference token);
* sparse KV memory (top-8 tokens per head, all layers): precomputed keys and values attached;
* dense KV memory: every reference token's keys and values attached.

Per condition: prefill ms (forward over the prompt to the first token), decode ms per further
token (cached greedy generation), bytes per reference, and the encode time of the memory
(paid once, offline). Medians over queries and repeats. Prints a table and, as the last line,
one JSON object.

    python analyses/bench_memory.py [--refs 1,5,20] [--queries 3] [--repeats 3] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--refs", default="1,5,20")
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=8)
    args = ap.parse_args()

    from lens_memory.facts import builtin_facts, spread_facts
    from lens_memory.memory import MemoryConfig, encode_memory, kv_bytes_per_token, measure_cost
    from lens_memory.models import load_model
    from lens_memory.rag import ContextArtifact, fact_documents

    lm = load_model(args.model)
    ns = [int(x) for x in args.refs.split(",")]
    facts = [f for f in spread_facts(builtin_facts()) if f.target_new][: max(ns)]
    docs = fact_documents(facts)
    t = time.perf_counter()
    dense_all = encode_memory(lm, docs, MemoryConfig(layers="all"))
    encode_s = time.perf_counter() - t
    sparse_all = dense_all.sparsify(args.top_k)
    queries = [f.prompt for f in facts[: args.queries]]
    out: dict = {"model": args.model, "threads": torch.get_num_threads(), "top_k": args.top_k,
                 "encode_seconds_per_reference": round(encode_s / len(docs), 4), "new_tokens": args.new_tokens,
                 "kv_bytes_per_token": kv_bytes_per_token(lm), "by_refs": {}}
    rows = []
    for n in ns:
        ids = [i for i, _ in docs[:n]]
        texts = [t for _, t in docs[:n]]
        conds = {"rag": ContextArtifact(texts), "sparse": sparse_all.subset(ids), "dense": dense_all.subset(ids)}
        res = {"none": measure_cost(lm, queries, repeats=args.repeats, new_tokens=args.new_tokens)}
        for name, art in conds.items():
            res[name] = measure_cost(lm, queries, [art] * len(queries), repeats=args.repeats, new_tokens=args.new_tokens)
        rag_tokens = conds["rag"].n_tokens(lm, queries[0])
        entry = {c: {"prefill_ms": round(v["prefill_ms"], 2), "decode_ms_per_token": round(v["decode_ms_per_token"], 2),
                     "total_ms": round(v["prefill_ms"] + (args.new_tokens - 1) * v["decode_ms_per_token"], 1),
                     "context_tokens": v["context_tokens"]} for c, v in res.items()}
        entry["bytes_per_reference"] = {"sparse": conds["sparse"].nbytes() / n, "dense": conds["dense"].nbytes() / n,
                                        "rag_kv": rag_tokens * kv_bytes_per_token(lm) / n}
        entry["sparse_prefill_speedup_vs_rag"] = round(res["rag"]["prefill_ms"] / res["sparse"]["prefill_ms"], 3)
        out["by_refs"][str(n)] = entry
        for c in ("none", "rag", "sparse", "dense"):
            e = entry[c]
            b = entry["bytes_per_reference"].get("rag_kv" if c == "rag" else c)
            rows.append((n, c, e["prefill_ms"], e["decode_ms_per_token"], e["total_ms"], e["context_tokens"],
                         "" if b is None else f"{b / 1024:.1f}"))
    print(f"{'refs':>4}  {'condition':<9} {'prefill ms':>10} {'decode ms/tok':>13} {'total ms':>9} {'ctx tok':>8} {'KiB/ref':>8}")
    for r in rows:
        print(f"{r[0]:>4}  {r[1]:<9} {r[2]:>10.1f} {r[3]:>13.2f} {r[4]:>9.1f} {r[5]:>8.1f} {r[6]:>8}")
    out["sparse_beats_rag_prefill"] = {n: e["sparse_prefill_speedup_vs_rag"] > 1 for n, e in out["by_refs"].items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
