"""Benchmark: key statistics, ROME and MEMIT speed on the embedded model.

* key statistics at layer 5: tokens/s of the truncated forward (stops at the layer's MLP key)
  vs a full forward with logits (target >= 3x);
* ROME seconds per edit with the statistics cached (context prefixes generated once, beforehand);
* MEMIT seconds per edit at each ``--sizes`` edits with batched target optimisation, and with
  one-by-one optimisation (``batch_facts=1``) at ``--one-by-one-sizes`` (target >= 3x).

Prints a table and, as the last line, one JSON object.

    python analyses/bench_editing.py [--sizes 10,100] [--one-by-one-sizes 10] [--rome-edits 3]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--stats-tokens", type=int, default=8192)
    ap.add_argument("--rome-edits", type=int, default=3)
    ap.add_argument("--sizes", default="10,100")
    ap.add_argument("--one-by-one-sizes", default="10")
    args = ap.parse_args()

    from lens_memory.edit import MemitConfig, RomeConfig, StatsConfig, key_statistics, memit, rome
    from lens_memory.edit.memit import default_layers
    from lens_memory.edit.rome import default_layer
    from lens_memory.edit.targets import context_templates
    from lens_memory.facts import builtin_facts, check_knowledge, spread_facts
    from lens_memory.models import load_model

    lm = load_model(args.model)
    out: dict = {"model": args.model, "threads": torch.get_num_threads()}
    rows = []

    L = default_layer(lm)
    sc = StatsConfig(n_tokens=args.stats_tokens)
    tps = {}
    for trunc in (True, False):
        t = time.perf_counter()
        st = key_statistics(lm, L, sc, use_cache=False, truncate=trunc)[L]
        tps[trunc] = st.n_tokens / (time.perf_counter() - t)
    out["stats_layer"] = L
    out["stats_tokens_per_s_truncated"] = round(tps[True], 1)
    out["stats_tokens_per_s_full"] = round(tps[False], 1)
    out["stats_speedup"] = round(tps[True] / tps[False], 2)
    rows.append(("key statistics, truncated forward", f"{tps[True]:.0f} tok/s"))
    rows.append(("key statistics, full forward + logits", f"{tps[False]:.0f} tok/s"))

    layers = default_layers(lm)
    rcfg = RomeConfig.for_model(lm)
    stats_cfg = rcfg.stats
    stats = key_statistics(lm, sorted({L, *layers}), stats_cfg)  # cached after the first run
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    need = max([args.rome_edits] + sizes)
    facts = check_knowledge(lm, spread_facts([f for f in builtin_facts() if f.target_new])[: int(need * 1.3) + 5]
                            ).known_facts()[:need]
    t = time.perf_counter()
    context_templates(lm, rcfg.context_lengths, rcfg.seed)
    context_templates(lm, MemitConfig().context_lengths, 0)
    out["context_generation_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    for f in facts[: args.rome_edits]:
        rome(lm, f, rcfg, layer=L, stats=stats[L])
    out["rome_seconds_per_edit"] = round((time.perf_counter() - t) / args.rome_edits, 2)
    rows.append((f"ROME, {args.rome_edits} edits, stats cached", f"{out['rome_seconds_per_edit']:.1f} s/edit"))

    out["memit"] = {}
    one_by_one = {int(x) for x in args.one_by_one_sizes.split(",") if x}
    for n in sizes:
        rec = {}
        for mode, bf in (("batched", 16), ("one_by_one", 1)):
            if mode == "one_by_one" and n not in one_by_one:
                continue
            t = time.perf_counter()
            e = memit(lm, facts[:n], MemitConfig.for_model(lm, batch_facts=bf), layers=layers, stats=stats)
            total = time.perf_counter() - t
            rec[mode] = {"seconds_per_edit": round(total / n, 2),
                         "target_seconds_per_edit": round(e.info["targets_seconds"] / n, 2)}
            rows.append((f"MEMIT {n} edits, {mode} targets", f"{total / n:.1f} s/edit "
                                                              f"(targets {e.info['targets_seconds'] / n:.1f})"))
        if "one_by_one" in rec:
            rec["target_speedup"] = round(rec["one_by_one"]["target_seconds_per_edit"]
                                          / rec["batched"]["target_seconds_per_edit"], 2)
        out["memit"][str(n)] = rec

    w = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{w}}  result")
    for name, val in rows:
        print(f"{name:<{w}}  {val}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
