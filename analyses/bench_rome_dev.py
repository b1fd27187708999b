"""Benchmark: ROME's clamp chosen on the DEV split, reported on the TEST split.

ROME's paper value (clamp_norm_factor 4, GPT-2 XL) flips neighbours on small models, so lens_memory uses a
per-model clamp (``RomeConfig.MODEL_DEFAULTS``). This script is how that value is chosen without looking at
the facts it is reported on:

1. the edit layer is the MLP peak of causal tracing on ``--trace-facts`` dev facts (as ``lens-memory edit``);
2. for each clamp in ``--clamps``, every one of ``--dev-n`` known built-in dev facts is edited alone and
   scored (ES, PS, NS success; ROME's S = their harmonic mean); the clamp with the best S is kept;
3. with that clamp, ``--test-n`` known built-in test facts are edited (each alone) and reported with 95% intervals.

Prints a table and, as the last line, one JSON object.

    python analyses/bench_rome_dev.py [--dev-n 8] [--test-n 30] [--clamps 0.5,0.7,1.0,4.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

METRICS = ("efficacy_success", "paraphrase_success", "neighborhood_success", "efficacy_accuracy",
           "paraphrase_accuracy", "neighborhood_accuracy", "efficacy_magnitude", "score_s")


def _known(lm, split: str, n: int):
    from lens_memory.facts import builtin_facts, sample_known_facts

    return sample_known_facts(lm, builtin_facts(split=split), n)


def _run(lm, facts, cfg, stats) -> dict:
    from lens_memory.edit import EvalConfig, evaluate_edits, rome

    t0 = time.time()
    edits = [rome(lm, f, cfg, stats=stats) for f in facts]
    secs = (time.time() - t0) / len(facts)
    s = evaluate_edits(lm, facts, edits, per_fact=True, config=EvalConfig(fluency_facts=0)).summary()["post"]
    return {"n": len(facts), "seconds_per_edit": secs, **{m: s[m] for m in METRICS},
            **{m + "_ci95": s[m + "_ci95"] for m in METRICS if m + "_ci95" in s}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dev-n", type=int, default=8)
    ap.add_argument("--test-n", type=int, default=30)
    ap.add_argument("--clamps", default="0.5,0.7,1.0,4.0")
    ap.add_argument("--trace-facts", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lens_memory.edit import RomeConfig, key_statistics
    from lens_memory.models import load_model
    from lens_memory.trace import TraceConfig, trace_facts

    lm = load_model(args.model)
    t0 = time.time()
    dev = _known(lm, "dev", args.dev_n)
    layer = trace_facts(lm, dev[:args.trace_facts], TraceConfig(kinds=("mlp",)), only_known=False).suggest_layers().layer
    base = RomeConfig.for_model(lm, layer=layer)
    stats = key_statistics(lm, [layer], base.stats)[layer]
    grid = []
    for c in (float(x) for x in args.clamps.split(",")):
        grid.append({"clamp": c, **_run(lm, dev, dataclasses.replace(base, clamp_norm_factor=c), stats)})
        g = grid[-1]
        print(f"dev clamp {c:>4}: ES {g['efficacy_success']:.2f} PS {g['paraphrase_success']:.2f} "
              f"NS {g['neighborhood_success']:.2f} S {g['score_s']:.3f}", flush=True)
    best = max(grid, key=lambda r: r["score_s"])
    test = _run(lm, _known(lm, "test", args.test_n), dataclasses.replace(base, clamp_norm_factor=best["clamp"]), stats)
    cell = lambda m: f"{test[m]:.2f} [{test[m + '_ci95'][0]:.2f}-{test[m + '_ci95'][1]:.2f}]"  # noqa: E731
    print(f"\nlayer {layer} (traced on dev); clamp chosen on dev (n={len(dev)}): {best['clamp']:g}")
    print("| split | n | efficacy | paraphrase | neighbourhood | S | s/edit |")
    print("|---|---|---|---|---|---|---|")
    print(f"| test | {test['n']} | {cell('efficacy_success')} | {cell('paraphrase_success')} | "
          f"{cell('neighborhood_success')} | {test['score_s']:.3f} | {test['seconds_per_edit']:.1f} |")
    print(json.dumps({"model": args.model, "layer": layer, "dev_grid": grid, "chosen_clamp": best["clamp"],
                      "test": test, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
