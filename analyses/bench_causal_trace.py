"""Benchmark: fast vs reference causal-tracing engine on any model (default: the embedded Gemma).

Runs both engines on the first ``--facts`` known built-in facts (default 2), all three kinds
(hidden, mlp, attn), default settings (10 noise samples, window scaled to depth), prints a table and, as the
last line, one JSON object with speedup, max_abs_diff, seconds_per_fact_fast and
seconds_per_fact_reference.

    python analyses/bench_causal_trace.py [--facts N] [--model gemma-3-270m|smollm2-135m|HF id|DIR] [--kinds mlp]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--facts", type=int, default=2)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--kinds", default="hidden,mlp,attn")
    args = ap.parse_args()

    from lens_memory.facts import builtin_facts, check_knowledge
    from lens_memory.models import load_model
    from lens_memory.trace import TraceConfig, noise_scale, prepare_fact
    from lens_memory.trace.fast import fast_scores
    from lens_memory.trace.reference import reference_scores

    lm = load_model(args.model)
    facts = builtin_facts()
    known = check_knowledge(lm, facts[:60]).known_facts()[: args.facts]
    cfg = TraceConfig(kinds=tuple(args.kinds.split(",")))
    scale = noise_scale(lm, known, cfg)
    rows = []
    for fact in known:
        prep = prepare_fact(lm, fact, cfg, scale)
        t0 = time.perf_counter()
        fs, fh, fl = fast_scores(lm, prep, cfg, cfg.kinds)
        tf = time.perf_counter() - t0
        t0 = time.perf_counter()
        rs, rh, rl = reference_scores(lm, prep, cfg, cfg.kinds)
        tr = time.perf_counter() - t0
        diff = max(float((fs[k] - rs[k]).abs().max()) for k in cfg.kinds)
        diff = max(diff, abs(fh - rh), abs(fl - rl))
        rows.append({"fact": fact.prompt, "tokens": prep.n_tokens, "fast_s": tf, "reference_s": tr,
                     "speedup": tr / tf, "max_abs_diff": diff, "high": fh, "low": fl})

    print(f"{'fact':<52} {'tok':>4} {'fast s':>8} {'ref s':>8} {'speedup':>8} {'max|diff|':>10}")
    for r in rows:
        print(f"{r['fact'][:52]:<52} {r['tokens']:>4} {r['fast_s']:>8.1f} {r['reference_s']:>8.1f} "
              f"{r['speedup']:>8.1f} {r['max_abs_diff']:>10.2e}")
    fast_total = sum(r["fast_s"] for r in rows)
    ref_total = sum(r["reference_s"] for r in rows)
    print(json.dumps({
        "model": args.model, "n_facts": len(rows), "kinds": list(cfg.kinds), "n_samples": cfg.n_samples,
        "window": cfg.window, "threads": torch.get_num_threads(),
        "speedup": round(ref_total / fast_total, 2),
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "seconds_per_fact_fast": round(fast_total / len(rows), 2),
        "seconds_per_fact_reference": round(ref_total / len(rows), 2),
    }))


if __name__ == "__main__":
    main()
