"""Benchmark: CAA's layer chosen on the DEV half of a behaviour's prompts, reported on the TEST half.

CAA (:mod:`lens_memory.steer.caa`, EasyEdit2's completion-mean form) needs a layer. The suite chooses it here,
without looking at the prompts it reports on:

1. for each layer in ``--layers``, a CAA vector is fitted on the behaviour's training pairs (the same for
   every split) and evaluated on the ``--n-prompts`` **dev** prompts at ``-s, 0, +s`` (generation of
   ``--gen-tokens`` tokens, top-k 20, one seed): the behaviour score (VADER for sentiment) and the perplexity
   of the continuations under the unsteered model;
2. the rule, fixed before the run: among layers whose perplexity at both ``±s`` stays within
   ``--max-ppl-ratio`` times the unsteered perplexity, keep the one with the largest swing
   ``score(+s) - score(-s)`` (ties: the lower layer). If no layer qualifies, the one with the smallest
   perplexity ratio is kept (and said);
3. at that layer, the **test** prompts are evaluated at ``-s, 0, +s`` and reported with 95% intervals.

Prints a table and, as the last line, one JSON object.

    python analyses/bench_caa_dev.py [--layers 6,8,10,12,14] [--strength 2] [--n-prompts 25]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _eval(lm, behavior: str, layer: int, s: float, split: str, n: int, tokens: int) -> dict:
    from lens_memory.steer import CAAConfig, SteerEvalConfig, caa, evaluate_steering

    vec = caa(lm, behavior, CAAConfig(layers=(layer,)))
    ev = evaluate_steering(lm, behavior, vec, SteerEvalConfig(strengths=(-s, 0.0, s), n_prompts=n, gen_tokens=tokens,
                                                              n_neutral_tokens=0, split=split), progress=False)
    rows = {r["strength"]: r for r in ev.rows}
    lo, mid, hi = rows[-s], rows[0.0], rows[s]
    return {"layer": layer, "split": split, "n_prompts": n, "score_minus": lo["behavior_score"],
            "score_0": mid["behavior_score"], "score_plus": hi["behavior_score"],
            "ci95_minus": [lo["behavior_lo"], lo["behavior_hi"]], "ci95_plus": [hi["behavior_lo"], hi["behavior_hi"]],
            "ppl_minus": lo["perplexity"], "ppl_0": mid["perplexity"], "ppl_plus": hi["perplexity"],
            "swing": hi["behavior_score"] - lo["behavior_score"],
            "ppl_ratio": max(lo["perplexity"], hi["perplexity"]) / mid["perplexity"]}


def _choose(grid: list[dict], max_ratio: float) -> tuple[dict, str]:
    ok = [g for g in grid if g["ppl_ratio"] <= max_ratio]
    if ok:
        return max(ok, key=lambda g: (g["swing"], -g["layer"])), f"largest swing with perplexity ratio <= {max_ratio}"
    return min(grid, key=lambda g: g["ppl_ratio"]), f"no layer within ratio {max_ratio}: smallest perplexity ratio"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--behavior", default="sentiment")
    ap.add_argument("--layers", default="6,8,10,12,14")
    ap.add_argument("--strength", type=float, default=2.0)
    ap.add_argument("--n-prompts", type=int, default=25)
    ap.add_argument("--gen-tokens", type=int, default=20)
    ap.add_argument("--max-ppl-ratio", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lens_memory.models import load_model

    lm = load_model(args.model)
    t0 = time.time()
    grid = []
    for layer in (int(x) for x in args.layers.split(",")):
        grid.append(_eval(lm, args.behavior, layer, args.strength, "dev", args.n_prompts, args.gen_tokens))
        g = grid[-1]
        print(f"dev layer {layer:>2}: score {g['score_minus']:+.2f} / {g['score_0']:+.2f} / {g['score_plus']:+.2f}  "
              f"ppl {g['ppl_minus']:.1f} / {g['ppl_0']:.1f} / {g['ppl_plus']:.1f}  swing {g['swing']:.2f}", flush=True)
    best, why = _choose(grid, args.max_ppl_ratio)
    test = _eval(lm, args.behavior, best["layer"], args.strength, "test", args.n_prompts, args.gen_tokens)
    s = args.strength
    print(f"\nlayer chosen on dev ({why}): {best['layer']}")
    print(f"| split | n | layer | score at -{s:g} | unsteered | score at +{s:g} | perplexity (-/0/+) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| test | {test['n_prompts']} | {best['layer']} | {test['score_minus']:.2f} "
          f"[{test['ci95_minus'][0]:.2f}, {test['ci95_minus'][1]:.2f}] | {test['score_0']:.2f} | {test['score_plus']:.2f} "
          f"[{test['ci95_plus'][0]:.2f}, {test['ci95_plus'][1]:.2f}] | {test['ppl_minus']:.1f} / {test['ppl_0']:.1f} / "
          f"{test['ppl_plus']:.1f} |")
    print(json.dumps({"model": args.model, "behavior": args.behavior, "strength": s, "rule": why, "dev_grid": grid,
                      "chosen_layer": best["layer"], "test": test, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
