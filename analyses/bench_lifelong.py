"""Benchmark: lifelong editing on the embedded model -- MEMIT vs AlphaEdit vs sequential ROME, p-ROME and r-ROME.

Each method writes the same ``--facts`` built-in **test-split** facts (spread over relations) in batches
of ``--batch-size``, every batch computed on the model the earlier batches produced
(:func:`lens_memory.edit.sequential_edit`). Health is measured before the first batch and after every
batch (:mod:`lens_memory.harness.lifelong`): retention of all edits so far, the batch's ES/PS/NS,
accuracy on the true objects of ``--heldout`` unedited test facts the model knows, and perplexity on
``--text-tokens`` tokens of held-out prose (the offline corpus; Gemma's key statistics come from model
samples, so the text is not the statistics' text). After the last batch all edited facts are scored
again (efficacy = retention, paraphrase, neighbourhood; ROME's success metrics, 95% intervals: Wilson for
retention, bootstrap for the per-fact means). Neighbourhood prompts about subjects the sequence edited are left
out by the same rule as every other edit evaluation (:func:`lens_memory.harness.knowledge.unedited_neighbours`;
their changed answers are retained edits, not leakage); ``neighborhood_dropped`` counts them.

p-ROME and r-ROME are Gupta et al.'s (2024) names: p-ROME uses the plain prompt's key in both places of ROME's
update, r-ROME the prefix-averaged key in both places (:mod:`lens_memory.edit.rome`).

Settings are each method's lifelong defaults (:func:`lens_memory.edit.sequence.sequence_config`: the model
defaults -- layers, λ, clamp -- with the settings ``analyses/bench_lifelong_dev.py`` chose on 60 dev facts: ``C`` from
100,000 self-sampled tokens for all five methods, AlphaEdit's window 3-7, threshold 2e-2 absolute and l2 = 10, MEMIT's
window), except that ROME, p-ROME and r-ROME use MEMIT's context templates
(5 generated prefixes of 10 tokens instead of ROME's 5 + 5 of 5 and 10 tokens), so all five methods see
the same prompts and differ in the update only. Every method checkpoints after each batch under
``--work`` and a rerun resumes where it stopped, so the run can be split over several sittings.

Prints a table and, as the last line, one JSON object keyed by method, each with ``retention``,
``neighborhood``, ``neighborhood_dropped``, ``heldout_accuracy_ratio`` and ``perplexity_ratio`` after the last
batch.

    python analyses/bench_lifelong.py [--facts 200] [--batch-size 20] [--methods alphaedit,memit,rome,prome,rrome]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--facts", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--methods", default="alphaedit,memit,rome,prome,rrome")
    ap.add_argument("--heldout", type=int, default=60)
    ap.add_argument("--text-tokens", type=int, default=1024)
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "lens_memory" / "bench_lifelong"))
    ap.add_argument("--figure", default="out/bench_lifelong/health")
    args = ap.parse_args()

    from lens_memory import viz
    from lens_memory.edit.sequence import sequence_config
    from lens_memory.facts import load_facts, sample_known_facts, spread_facts
    from lens_memory.models import load_model
    from lens_memory.workflows.lifelong import run_lifelong

    lm = load_model(args.model)
    test = spread_facts(load_facts(split="test"))
    facts = test[:args.facts]
    if len(facts) < args.facts:
        raise SystemExit(f"only {len(facts)} test facts, asked for {args.facts}")
    heldout = sample_known_facts(lm, test[args.facts:], args.heldout)[:args.heldout]
    out: dict = {"model": args.model, "split": "test", "n_facts": len(facts), "batch_size": args.batch_size,
                 "n_heldout_known": len(heldout), "text_tokens": args.text_tokens,
                 "threads": torch.get_num_threads()}
    table, healths = [], []
    for method in args.methods.split(","):
        # all five share MEMIT's context templates (5 prefixes of 10 tokens), so they differ in the update rule
        # only (and ROME's 10 prefixes would double its 27 s per edit); MEMIT/AlphaEdit optimise a batch's
        # targets in one chunk (exact either way, fewer passes)
        cfg = sequence_config(lm, method, **({"context_lengths": ((10, 5),)} if "rome" in method
                                             else {"batch_facts": args.batch_size}))
        s = run_lifelong(lm, facts, method, args.batch_size, heldout=heldout, config=cfg, text_tokens=args.text_tokens,
                         checkpoint=Path(args.work) / f"{args.model}-{method}-{len(facts)}x{args.batch_size}")
        h = s.sequence.health
        healths.append(h)
        r = out[method] = {
            "retention": round(s["final_efficacy_success"], 4), "retention_ci95": s["final_efficacy_success_ci95"],
            "paraphrase": round(s["final_paraphrase_success"], 4),
            "paraphrase_ci95": s["final_paraphrase_success_ci95"],
            "neighborhood": round(s["final_neighborhood_success"], 4),
            "neighborhood_ci95": s["final_neighborhood_success_ci95"], "n": s["final_n"],
            "neighborhood_n": s["final_neighborhood_n"], "neighborhood_dropped": s["final_neighborhood_dropped"],
            "neighborhood_prompts": s["final_neighborhood_prompts"],
            "heldout_accuracy_ratio": s["heldout_accuracy_ratio"], "perplexity_ratio": s["perplexity_ratio"],
            "max_delta_norm": s["max_delta_norm"], "solve_condition_last": s["solve_condition"],
            "first_failure": s["first_failure"], "layers": s["layers"], "edit_seconds": round(s["edit_seconds"], 1),
            "seconds_this_run": s["seconds"], "nullspace_dim": s.sequence.edits[-1].info.get("nullspace_dim"),
            "health": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()} for row in h.rows]}
        table.append(f"{method:10s} {r['retention']:9.3f} {r['paraphrase']:10.3f} {r['neighborhood']:12.3f} "
                     f"{r['heldout_accuracy_ratio']:12.3f} {r['perplexity_ratio']:10.3f} {r['max_delta_norm']:10.3f} "
                     f"{r['edit_seconds']:9.0f}")
    viz.save_figure(viz.plot_health(healths), args.figure)
    print(f"{'method':10s} {'retention':>9s} {'paraphrase':>10s} {'neighborhood':>12s} {'heldout acc':>12s} "
          f"{'ppl ratio':>10s} {'max |dW|':>10s} {'edit s':>9s}")
    print("\n".join(table))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
