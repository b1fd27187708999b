"""Benchmark: steering speed on the embedded model.

* CAA extraction: seconds to fit a vector from the built-in sentiment pairs (120 pairs, one
  forward pass per batch that stops at the layer);
* SAE training: tokens/s of offline training including activation collection, against a plain
  forward to the layer (the collection alone);
* generation overhead of steering: wall time of generating with a CAA vector applied vs
  unsteered, same prompts and seed (target <= 10%).

Prints a table and, as the last line, one JSON object.

    python analyses/bench_steering.py [--layer 6] [--sae-tokens 60000] [--gen-tokens 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--sae-tokens", type=int, default=60_000)
    ap.add_argument("--gen-tokens", type=int, default=30)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from lens_memory.corpus import load_corpus, token_blocks
    from lens_memory.generation import generate
    from lens_memory.hooks import capture
    from lens_memory.models import load_model
    from lens_memory.steer.behaviors import load_behavior
    from lens_memory.steer.caa import CAAConfig, caa, default_layer, resid_hook
    from lens_memory.sae import SAETrainConfig, train_sae

    lm = load_model(args.model)
    layer = default_layer(lm) if args.layer is None else args.layer
    b = load_behavior("sentiment")
    out: dict = {"model": args.model, "layer": layer, "threads": torch.get_num_threads()}
    rows = []

    caa(lm, b, CAAConfig(layers=(layer,), n_pairs=8))  # warm-up
    t = time.perf_counter()
    vec = caa(lm, b, CAAConfig(layers=(layer,)))
    out["caa_seconds"] = round(time.perf_counter() - t, 2)
    out["caa_pairs"] = len(b.train)
    rows.append((f"CAA extraction ({len(b.train)} pairs, layer {layer})", f"{out['caa_seconds']:.2f} s"))

    hook = resid_hook(layer)
    corpus = load_corpus("offline")
    n_fwd = 16384
    t = time.perf_counter()
    n = 0
    for ids in token_blocks(lm, corpus, n_fwd, seq_len=128, batch_size=16):
        capture(lm, ids, [hook])
        n += ids.numel()
    fwd_tps = n / (time.perf_counter() - t)
    cfg = SAETrainConfig(layer=layer, n_tokens=args.sae_tokens)
    trained = train_sae(lm, cfg, use_cache=False, progress=False)
    prov = trained.provenance
    out["forward_to_layer_tokens_per_s"] = round(fwd_tps, 1)
    out["sae_training_tokens_per_s"] = round(prov["tokens_per_s"], 1)
    out["sae_collect_tokens_per_s"] = round(prov["collect_tokens_per_s"], 1)
    out["sae_train_activations_per_s"] = round(prov["train_activations_per_s"], 1)
    out["sae_training_vs_forward"] = round(prov["tokens_per_s"] / fwd_tps, 3)
    out["sae_tokens"] = args.sae_tokens
    out["sae_quality"] = trained.quality.to_dict()
    rows.append(("plain forward to the layer", f"{fwd_tps:.0f} tok/s"))
    rows.append((f"SAE training incl. collection ({args.sae_tokens} tokens)", f"{prov['tokens_per_s']:.0f} tok/s"))
    rows.append(("  of which activation collection", f"{prov['collect_tokens_per_s']:.0f} tok/s"))

    prompts = b.eval_prompts[:args.prompts]
    generate(lm, prompts[:2], max_new_tokens=4)  # warm-up
    times = {"unsteered": [], "steered": []}
    for _ in range(args.repeats):
        for kind in ("unsteered", "steered"):
            t = time.perf_counter()
            if kind == "steered":
                with vec.apply(lm, 4.0):
                    generate(lm, prompts, max_new_tokens=args.gen_tokens, seed=0, batch_size=16)
            else:
                generate(lm, prompts, max_new_tokens=args.gen_tokens, seed=0, batch_size=16)
            times[kind].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    out["generation_seconds"] = {k: round(v, 3) for k, v in best.items()}
    out["generation_overhead"] = round(best["steered"] / best["unsteered"] - 1, 4)
    rows.append((f"generation, unsteered ({len(prompts)}x{args.gen_tokens} tokens, best of {args.repeats})",
                 f"{best['unsteered']:.2f} s"))
    rows.append(("generation, CAA applied", f"{best['steered']:.2f} s"))
    rows.append(("steering overhead (target <= 10%)", f"{100 * out['generation_overhead']:.1f} %"))

    w = max(len(r[0]) for r in rows)
    for name, val in rows:
        print(f"{name:<{w}}  {val}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
