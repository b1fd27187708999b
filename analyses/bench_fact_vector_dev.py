"""Benchmark: the fact-vector layer chosen on the DEV split, reported on the TEST split.

A fact vector (:mod:`lens_memory.steer.fact_vector`) is the residual change that reading a fact's reference
text makes at the prompt's last token, added back at one layer. Which layer is a choice the suite makes, so it
is made here without looking at the facts it is reported on:

1. for each layer in ``--layers``, ``--dev-n`` known built-in dev facts each get their own vector (strength 1,
   all positions, as in the report) and are scored alone (ES, PS, NS success; ROME's S = their harmonic mean);
2. the layer with the best S on dev is kept (ties: the lower layer);
3. at that layer, ``--test-n`` known built-in test facts are scored and reported with 95% intervals.

Prints a table and, as the last line, one JSON object.

    python analyses/bench_fact_vector_dev.py [--dev-n 20] [--test-n 30] [--layers 4,6,8,...]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

METRICS = ("efficacy_success", "paraphrase_success", "neighborhood_success", "efficacy_accuracy",
           "paraphrase_accuracy", "neighborhood_accuracy", "efficacy_magnitude", "score_s")


def _run(lm, facts, layer: int, baseline=None):
    from lens_memory.edit import EvalConfig, evaluate_edits
    from lens_memory.rag import fact_documents
    from lens_memory.steer.fact_vector import FactVectorConfig, fact_vectors

    vecs = fact_vectors(lm, facts, [t for _, t in fact_documents(facts)], FactVectorConfig(layer=layer))
    ev = evaluate_edits(lm, facts, vecs, per_fact=True, config=EvalConfig(fluency_facts=0), baseline=baseline)
    s = ev.summary()["post"]
    row = {"layer": layer, "n": len(facts), **{m: s[m] for m in METRICS},
           **{m + "_ci95": s[m + "_ci95"] for m in METRICS if m + "_ci95" in s}}
    return row, ev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dev-n", type=int, default=20)
    ap.add_argument("--test-n", type=int, default=30)
    ap.add_argument("--layers", default="4,6,8,9,10,11,12,14,16")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lens_memory.facts import builtin_facts, sample_known_facts
    from lens_memory.models import load_model

    lm = load_model(args.model)
    t0 = time.time()
    dev = sample_known_facts(lm, builtin_facts(split="dev"), args.dev_n)
    grid, base = [], None
    for layer in (int(x) for x in args.layers.split(",")):
        row, ev = _run(lm, dev, layer, baseline=base)
        base = base or ev
        grid.append(row)
        print(f"dev layer {layer:>2}: ES {row['efficacy_success']:.2f} PS {row['paraphrase_success']:.2f} "
              f"NS {row['neighborhood_success']:.2f} S {row['score_s']:.3f}", flush=True)
    best = max(grid, key=lambda r: (r["score_s"], -r["layer"]))
    test, _ = _run(lm, sample_known_facts(lm, builtin_facts(split="test"), args.test_n), best["layer"])
    cell = lambda m: f"{test[m]:.2f} [{test[m + '_ci95'][0]:.2f}-{test[m + '_ci95'][1]:.2f}]"  # noqa: E731
    print(f"\nlayer chosen on dev (n={len(dev)}, best S): {best['layer']}")
    print("| split | n | layer | efficacy | paraphrase | neighbourhood | S |")
    print("|---|---|---|---|---|---|---|")
    print(f"| test | {test['n']} | {best['layer']} | {cell('efficacy_success')} | {cell('paraphrase_success')} | "
          f"{cell('neighborhood_success')} | {test['score_s']:.3f} |")
    print(json.dumps({"model": args.model, "dev_grid": grid, "chosen_layer": best["layer"], "test": test,
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
