"""Benchmark: does batched MEMIT generalise beyond the facts its settings were chosen on?

Settings are chosen on the DEV split and reported once on the TEST split (``lens_memory.facts.fact_split``):

1. dev: known facts from the built-in dev split and from the held-out CounterFact-format file
   (``--facts heldout``, written by ``analyses/make_heldout_facts.py``), half each. The candidate windows are
   the one causal tracing suggests on dev facts (what ``lens-memory edit`` does) and ``--windows``;
   λ (``mom2_update_weight``) from ``--lambdas``. The target residuals z depend only on the window's last
   layer, so they are optimised once per window and reused for every λ. The setting with the best ROME score
   S (harmonic mean of ES, PS, NS) on dev is kept.
2. test: the kept setting, one batched MEMIT edit of ``--test-n`` known built-in test facts, and one of all
   known held-out test facts; efficacy / paraphrase / neighbourhood success with 95% intervals, magnitudes
   and top-1 token accuracies (``lens_memory.metrics``).

Prints a table and, as the last line, one JSON object.

    python analyses/bench_memit_generalisation.py [--dev-n 40] [--test-n 100] [--lambdas 2000,6000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

METRICS = ("efficacy_success", "paraphrase_success", "neighborhood_success", "efficacy_magnitude",
           "efficacy_accuracy", "paraphrase_accuracy", "neighborhood_accuracy", "score_s")


def _known(lm, source: str, split: str, n: int | None):
    from lens_memory.facts import load_facts, sample_known_facts

    return sample_known_facts(lm, load_facts(source, split=split), n)


def _score(lm, facts, edit) -> dict:
    from lens_memory.edit import EvalConfig, evaluate_edits

    s = evaluate_edits(lm, facts, [edit], config=EvalConfig(fluency_facts=0)).summary()["post"]
    out = {m: s[m] for m in METRICS}
    out.update({m + "_ci95": s[m + "_ci95"] for m in METRICS if m + "_ci95" in s})
    return out


def _dev_grid(lm, dev, windows, lambdas, stats, base):
    from lens_memory.edit import memit
    from lens_memory.edit.memit import memit_targets

    rows = []
    for layers in windows:
        cfg = dataclasses.replace(base, layers=tuple(layers))
        t0 = time.time()
        tg = memit_targets(lm, dev, cfg)
        t_z = time.time() - t0
        for lam in lambdas:
            c = dataclasses.replace(cfg, mom2_update_weight=float(lam))
            e = memit(lm, dev, c, stats=stats, targets=tg)
            rows.append({"layers": list(layers), "lambda": float(lam), "z_seconds": t_z,
                         "z_prob_mean": sum(tg.target_prob) / len(dev), **_score(lm, dev, e)})
            print(f"dev  layers {layers[0]}-{layers[-1]}  λ {lam:>6}: ES {rows[-1]['efficacy_success']:.2f} "
                  f"PS {rows[-1]['paraphrase_success']:.2f} NS {rows[-1]['neighborhood_success']:.2f} "
                  f"S {rows[-1]['score_s']:.3f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dev-n", type=int, default=40, help="dev facts (half built-in, half held-out)")
    ap.add_argument("--test-n", type=int, default=100, help="built-in test facts in the test edit")
    ap.add_argument("--heldout-n", type=int, default=None, help="held-out test facts (default: all known)")
    ap.add_argument("--windows", default="4-8", help="extra candidate windows, e.g. 4-8,3-7")
    ap.add_argument("--lambdas", default="2000,6000")
    ap.add_argument("--trace-facts", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chosen", default=None, help="skip the dev grid: LAYERS:LAMBDA chosen by an earlier run, "
                                                  "e.g. 2-6:2000 (recorded as given)")
    ap.add_argument("--test-sets", default="heldout,builtin", help="which test sets, in order")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lens_memory.edit import MemitConfig, key_statistics, memit
    from lens_memory.models import load_model
    from lens_memory.trace import TraceConfig, trace_facts

    lm = load_model(args.model)
    t0 = time.time()
    half = args.dev_n // 2
    base = MemitConfig.for_model(lm)
    if args.chosen:
        (a, b), lam = args.chosen.split(":")[0].split("-"), float(args.chosen.split(":")[1])
        dev, traced, grid = [], None, []
        best = {"layers": list(range(int(a), int(b) + 1)), "lambda": lam}
        stats = key_statistics(lm, best["layers"], base.stats)
    else:
        dev = _known(lm, "builtin", "dev", half) + _known(lm, "heldout", "dev", args.dev_n - half)
        tr = trace_facts(lm, _known(lm, "builtin", "dev", args.trace_facts), TraceConfig(kinds=("mlp",)),
                         only_known=False)
        traced = tr.suggest_layers().layers
        windows = [traced] + [list(range(int(a), int(b) + 1)) for a, b in (w.split("-") for w in args.windows.split(","))]
        windows = [w for i, w in enumerate(windows) if w not in windows[:i]]
        stats = key_statistics(lm, sorted({j for w in windows for j in w}), base.stats)
        grid = _dev_grid(lm, dev, windows, [float(x) for x in args.lambdas.split(",")], stats, base)
        best = max(grid, key=lambda r: r["score_s"])
    chosen = dataclasses.replace(base, layers=tuple(best["layers"]), mom2_update_weight=best["lambda"])

    sizes = {"builtin": args.test_n, "heldout": args.heldout_n}
    test = {name: _known(lm, name, "test", sizes[name]) for name in args.test_sets.split(",")}
    results = {}
    for name, facts in test.items():
        t1 = time.time()
        e = memit(lm, facts, chosen, stats=stats)
        results[name] = {"n": len(facts), "seconds_per_edit": (time.time() - t1) / len(facts), **_score(lm, facts, e)}
        print(f"test {name}: " + json.dumps(results[name]), flush=True)

    how = f"on dev (n={len(dev)}; traced window {traced[0]}-{traced[-1]})" if traced else "given (--chosen)"
    print(f"\nchosen {how}: layers {best['layers'][0]}-{best['layers'][-1]}, λ = {best['lambda']:g}")
    print("| test set | n | efficacy | paraphrase | neighbourhood | ES magnitude | S | s/edit |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cell = lambda m: f"{r[m]:.2f} [{r[m + '_ci95'][0]:.2f}-{r[m + '_ci95'][1]:.2f}]"  # noqa: E731
        print(f"| {name} | {r['n']} | {cell('efficacy_success')} | {cell('paraphrase_success')} | "
              f"{cell('neighborhood_success')} | {r['efficacy_magnitude']:.3f} | {r['score_s']:.3f} | "
              f"{r['seconds_per_edit']:.1f} |")
    print(json.dumps({"model": args.model, "dev_n": len(dev), "traced_window": traced, "dev_grid": grid,
                      "chosen": {"layers": best["layers"], "lambda": best["lambda"]}, "test": results,
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
