"""Benchmark: attribution patching (AtP, AtP*) against exact causal tracing on the embedded model.

Traces ``--facts`` known built-in **test-split** facts (spread over relations) with the fast exact engine and
with each estimator, all with the same config (kinds hidden/MLP/attention, 10 noise samples, the scaled
window, noise 3 sigma), and reports per kind the Spearman correlation of the effect maps (mean over facts,
95% interval), top-cell and per-fact layer agreement, false negatives, and the speed ratio (exact seconds
per fact / estimator seconds per fact, each engine's own scoring time, one process, one after the other).
``--window1`` repeats the comparison with single-layer restorations (where AtP is first-order exact for
every kind; windowed MLP / attention cells are sums of single-layer estimates, see
:mod:`lens_memory.trace.atp`).

Prints a table and, as the last line, one JSON object with ``atp_speedup`` and ``atp_spearman_mean``
(an object keyed by kind), the same for ``atpstar_*``, and the settings.

    python analyses/bench_localize.py [--facts 10] [--window1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch


def _compare(lm, facts, cfg, estimators):
    from lens_memory.localize import validate_estimate
    from lens_memory.trace import trace_facts

    t0 = time.time()
    exact = trace_facts(lm, facts, cfg, only_known=False, progress=False)
    out = {"exact_wall_s": round(time.time() - t0, 1), "exact_s_per_fact": exact.summary()["seconds_per_fact"]}
    for engine in estimators:
        est = trace_facts(lm, facts, dataclasses.replace(cfg, engine=engine), only_known=False, progress=False)
        s = validate_estimate(exact, est).summary()
        key = "atp" if engine == "atp" else "atpstar"
        out[f"{key}_speedup"] = round(s["speedup"], 2)
        out[f"{key}_s_per_fact"] = round(s["seconds_per_fact_estimate"], 3)
        out[f"{key}_spearman_mean"] = {k: round(s[k]["spearman_mean"], 4) for k in cfg.kinds}
        out[f"{key}_spearman_ci95"] = {k: [round(x, 4) for x in s[k]["spearman_ci95"]] for k in cfg.kinds}
        out[f"{key}_top_cell_agreement"] = {k: s[k]["top_cell_agreement"] for k in cfg.kinds}
        out[f"{key}_layer_agreement"] = {k: s[k]["layer_agreement"] for k in cfg.kinds}
        out[f"{key}_false_negatives"] = {k: [s[k]["false_negatives"], s[k]["large_cells"]] for k in cfg.kinds}
        out[f"{key}_suggested_layer_agree"] = s.get("suggested_layer_agree")
    return out


def _table(name, r, estimators):
    print(f"\n{name}: exact {r['exact_s_per_fact']:.2f} s/fact")
    print(f"{'estimator':10s} {'kind':7s} {'speedup':>8s} {'spearman':>9s} {'95% CI':>17s} {'top cell':>9s} {'layer':>6s} {'FN':>7s}")
    for e in estimators:
        k0 = "atp" if e == "atp" else "atpstar"
        for k in r[f"{k0}_spearman_mean"]:
            lo, hi = r[f"{k0}_spearman_ci95"][k]
            fn, big = r[f"{k0}_false_negatives"][k]
            print(f"{e:10s} {k:7s} {r[f'{k0}_speedup']:8.1f} {r[f'{k0}_spearman_mean'][k]:9.3f} "
                  f"{f'[{lo:.3f}, {hi:.3f}]':>17s} {r[f'{k0}_top_cell_agreement'][k]:9.2f} "
                  f"{r[f'{k0}_layer_agreement'][k]:6.2f} {f'{fn}/{big}':>7s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--facts", type=int, default=10)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--estimators", default="atp,atp*")
    ap.add_argument("--window1", action="store_true", help="also compare with single-layer restorations")
    args = ap.parse_args()

    from lens_memory.facts import load_facts, sample_known_facts, spread_facts
    from lens_memory.models import load_model
    from lens_memory.trace import TraceConfig

    lm = load_model(args.model)
    facts = sample_known_facts(lm, spread_facts(load_facts(split="test")), args.facts)[:args.facts]
    estimators = args.estimators.split(",")
    cfg = TraceConfig(kinds=("hidden", "mlp", "attn"), n_samples=args.samples)
    res = {"model": args.model, "split": "test", "n_facts": len(facts), "n_samples": args.samples,
           "window": cfg.window_for(lm.n_layers), "threads": torch.get_num_threads()}
    main_run = _compare(lm, facts, cfg, estimators)
    _table(f"window {res['window']} (the default)", main_run, estimators)
    res.update(main_run)
    if args.window1:
        w1 = _compare(lm, facts, dataclasses.replace(cfg, window=1), estimators)
        _table("window 1", w1, estimators)
        res["window1"] = w1
    print(json.dumps(res))


if __name__ == "__main__":
    main()
