"""Benchmark: attribution patching (AtP, AtP*) against exact causal tracing, and ROME where each trace points.

Traces ``--facts`` known built-in **test-split** facts (spread over relations) with the fast exact engine and
with each estimator, all with the same config and noise (kinds hidden/MLP/attention, ``--samples`` noise samples,
the scaled window, noise 3 sigma), and reports per estimator and kind:

* **ranks**, like for like (:mod:`lens_memory.localize.validate`): the Spearman correlation of the effect maps
  (mean over facts, 95% interval), top-cell agreement and false negatives. AtP and AtP* with the QK fix alone
  estimate the signed mean effect and are compared with the exact trace; AtP* arms with GradDrop estimate
  ``E|effect|`` and are compared with ``E|exact effect|`` (the exact effect per noise sample, in absolute value,
  averaged: every fact traced again once per sample). Their Spearman against the signed mean is reported beside
  it (``spearman_vs_signed_mean``), the comparison this benchmark made before;
* **peaks**: the share of facts whose suggested edit layer (the MLP peak at the last subject token, what
  ``suggest_layers`` picks for the fact alone) is exact tracing's, with a Wilson 95% interval;
* **speed**: exact seconds per fact / estimator seconds per fact (each engine's own scoring time, one process,
  one after the other);
* **the AtP* ablation** (``--ablation``, on by default): the QK fix alone, GradDrop alone, both;
* **editing** (``--edit``, on by default): each fact edited with ROME (the model's ``RomeConfig``) at AtP's
  suggested layer and at exact tracing's, each edit scored and removed (:func:`lens_memory.localize.edit_layer_sweep`
  with those layers; one edit when they agree): ROME's efficacy success (Wilson interval) and Hase et al.'s
  rewrite score (BCa bootstrap interval, ``scipy.stats.bootstrap``), and the paired difference of the rewrite
  scores.

``--window1`` repeats the trace comparisons with single-layer restorations (where AtP is first-order exact for
every kind). ``--any-facts`` takes facts without the knowledge filter (a random test model knows none).

Prints tables and, as the last line, one JSON object: ``atp_speedup``, ``atp_spearman_mean`` (by kind),
``atp_layer_agreement`` (edit-layer agreement, Wilson interval), ``atp_star_ablation`` (``qk`` / ``graddrop`` /
``both``), ``atpstar_*`` (the ``both`` arm), ``edit_at_atp_layer`` / ``edit_at_exact_layer``, the settings.

    python analyses/bench_localize.py [--model gemma-3-270m] [--facts 10] [--samples 10] [--no-ablation] \\
        [--no-edit] [--window1] [--any-facts] [--work DIR]

With ``--work DIR`` every trace (exact, AtP, each AtP* arm) and every edit checkpoints its finished facts and a rerun
resumes from them (the ``E|exact|`` re-trace is recomputed); the numbers equal an uninterrupted run's, and the
speed-ups use the seconds each fact took when it was computed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

R = 4  # decimals in the JSON line


def _record(v) -> dict:
    """The JSON record of one validation (:class:`~lens_memory.localize.AtPValidation`)."""
    s = v.summary()
    kinds = v.kinds
    out = {"comparison": s["comparison"], "like_for_like": s["like_for_like"], "estimand": s["estimand"],
           "speedup": round(s["speedup"], 2), "s_per_fact": round(s["seconds_per_fact_estimate"], 3),
           "spearman_mean": {k: round(s[k]["spearman_mean"], R) for k in kinds},
           "spearman_ci95": {k: [round(x, R) for x in s[k]["spearman_ci95"]] for k in kinds},
           "top_cell_agreement": {k: round(s[k]["top_cell_agreement"], R) for k in kinds},
           "map_layer_agreement": {k: round(s[k]["layer_agreement"], R) for k in kinds},
           "false_negatives": {k: [s[k]["false_negatives"], s[k]["large_cells"]] for k in kinds},
           "layer_agreement": _rounded(s.get("edit_layer_agreement", {})),
           "suggested_layer_agree": s.get("suggested_layer_agree")}
    if any("spearman_vs_signed_mean" in s[k] for k in kinds):
        out["spearman_vs_signed_mean"] = {k: round(s[k].get("spearman_vs_signed_mean", float("nan")), R) for k in kinds}
    return out


def _rounded(d: dict) -> dict:
    return {k: (round(x, R) if isinstance(x, float) else [round(y, R) for y in x] if isinstance(x, list) else x)
            for k, x in d.items()}


def _compare(lm, facts, cfg, ablation: bool, work=None):
    """Exact trace, AtP and (with ``ablation``) the three AtP* arms, each validated like for like; with ``work`` each
    trace checkpoints its finished facts there (a rerun loads them, with the seconds they took)."""
    from lens_memory.localize.validate import atp_star_ablation, exact_magnitude_trace, validate_estimate
    from lens_memory.trace import trace_facts

    t0 = time.time()
    exact = trace_facts(lm, facts, cfg, only_known=False, progress=False, checkpoint_dir=work)
    out = {"exact_wall_s": round(time.time() - t0, 1), "exact_s_per_fact": exact.summary()["seconds_per_fact"]}
    atp = trace_facts(lm, facts, dataclasses.replace(cfg, engine="atp"), only_known=False, progress=False,
                      checkpoint_dir=work)
    va = validate_estimate(exact, atp)
    out["atp"] = _record(va)
    if ablation:
        t0 = time.time()
        mag = exact_magnitude_trace(lm, exact)
        out["magnitude_s_per_fact"] = round((time.time() - t0) / len(facts), 3)
        arms = atp_star_ablation(lm, exact, magnitude=mag, checkpoint_dir=work)
        out["atp_star_ablation"] = {arm: _record(v) for arm, v in arms.items()}
    return out, exact, va


def _edit_rows(lm, facts, va, work=None) -> list[dict]:
    """Per fact: ROME at AtP's suggested edit layer and at exact tracing's (one edit when they agree)."""
    from lens_memory.edit import RomeConfig
    from lens_memory.localize import SweepConfig, edit_layer_sweep

    mcfg = RomeConfig.for_model(lm)
    mlp = sorted((r for r in va.rows if r["kind"] == "mlp"), key=lambda r: r["fact"])
    rows = []
    for f, r in zip(facts, mlp):
        a, e = r["edit_layer_estimate"], r["edit_layer_exact"]
        sw = edit_layer_sweep(lm, [f], SweepConfig(layers=tuple(sorted({a, e}))), method_config=mcfg, progress=False,
                              checkpoint_dir=work)
        at = {layer: {m: float(sw.metrics[m][0, i]) for m in ("efficacy_success", "rewrite_score")}
              for i, layer in enumerate(sw.layers)}
        rows.append({"case_id": f.case_id, "atp_layer": a, "exact_layer": e, "atp": at[a], "exact": at[e]})
    return rows


def _edit_summary(rows: list[dict], which: str) -> dict:
    from lens_memory.metrics import mean_ci, proportion_ci

    es = [r[which]["efficacy_success"] for r in rows]
    p, lo, hi = proportion_ci(int(sum(es)), len(es))
    m, rlo, rhi = mean_ci([r[which]["rewrite_score"] for r in rows])
    return {"efficacy_success": {"mean": round(p, R), "ci95": [round(lo, R), round(hi, R)], "interval": "wilson"},
            "rewrite_score": {"mean": round(m, R), "ci95": [round(rlo, R), round(rhi, R)],
                              "interval": "BCa bootstrap over facts (scipy.stats.bootstrap)"},
            "layers": [r[f"{which}_layer"] for r in rows], "n": len(rows)}


def _edits(lm, facts, va, work=None) -> dict:
    from lens_memory.metrics import mean_ci

    t0 = time.time()
    rows = _edit_rows(lm, facts, va, work)
    diff = mean_ci([r["atp"]["rewrite_score"] - r["exact"]["rewrite_score"] for r in rows])
    same = sum(r["atp_layer"] == r["exact_layer"] for r in rows)
    return {"edit_at_atp_layer": _edit_summary(rows, "atp"), "edit_at_exact_layer": _edit_summary(rows, "exact"),
            "edit_same_layer": {"n_same": int(same), "n": len(rows)},
            "edit_rewrite_difference": {"mean": round(diff[0], R), "ci95": [round(diff[1], R), round(diff[2], R)],
                                        "what": "rewrite score at AtP's layer minus at exact tracing's, paired"},
            "edit_method": "rome (the model's RomeConfig), one edit per fact and layer, removed after scoring",
            "edit_wall_s": round(time.time() - t0, 1)}


def _table(name, r):
    print(f"\n{name}: exact {r['exact_s_per_fact']:.2f} s/fact"
          + (f", E|exact| {r['magnitude_s_per_fact']:.2f} s/fact" if "magnitude_s_per_fact" in r else ""))
    print(f"{'estimator':16s} {'vs':9s} {'kind':7s} {'speedup':>8s} {'spearman':>9s} {'95% CI':>17s} "
          f"{'vs signed':>9s} {'top cell':>9s} {'FN':>7s}   edit layer = exact's [Wilson 95%]")
    arms = {"AtP": r["atp"], **{f"AtP* {a}": v for a, v in r.get("atp_star_ablation", {}).items()}}
    for name_, v in arms.items():
        la = v["layer_agreement"]
        peak = "-"
        if la:
            peak = f"{la['n_same']}/{la['n']} = {la['fraction']:.2f} [{la['ci95'][0]:.2f}, {la['ci95'][1]:.2f}]"
        for i, k in enumerate(v["spearman_mean"]):
            lo, hi = v["spearman_ci95"][k]
            fn, big = v["false_negatives"][k]
            vs = v.get("spearman_vs_signed_mean", {}).get(k)
            print(f"{name_:16s} {v['comparison']:9s} {k:7s} {v['speedup']:8.1f} {v['spearman_mean'][k]:9.3f} "
                  f"{f'[{lo:.3f}, {hi:.3f}]':>17s} {'-' if vs is None else f'{vs:.3f}':>9s} "
                  f"{v['top_cell_agreement'][k]:9.2f} {f'{fn}/{big}':>7s}   {peak if i == 0 else ''}")


def _edit_table(r):
    print(f"\nROME at the suggested edit layer ({r['edit_same_layer']['n_same']}/{r['edit_same_layer']['n']} facts "
          f"have the same layer)")
    print(f"{'layer from':12s} {'efficacy success [Wilson]':>28s} {'rewrite score [BCa]':>28s}")
    for name, key in (("AtP", "edit_at_atp_layer"), ("exact", "edit_at_exact_layer")):
        es, rw = r[key]["efficacy_success"], r[key]["rewrite_score"]
        print(f"{name:12s} {es['mean']:8.3f} [{es['ci95'][0]:.3f}, {es['ci95'][1]:.3f}]      "
              f"{rw['mean']:8.3f} [{rw['ci95'][0]:.3f}, {rw['ci95'][1]:.3f}]")
    d = r["edit_rewrite_difference"]
    print(f"{'AtP - exact':12s} {'':28s} {d['mean']:8.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]")


def _facts(lm, n: int, any_facts: bool):
    from lens_memory.facts import load_facts, sample_known_facts, spread_facts

    pool = spread_facts(load_facts(split="test"))
    if any_facts:
        return [f for f in pool if f.target_new][:n]
    return sample_known_facts(lm, pool, n)[:n]


def _flatten(res: dict, run: dict) -> None:
    """The headline keys: ``atp_*`` from AtP, ``atpstar_*`` from the ``both`` arm (like for like)."""
    keys = ("speedup", "s_per_fact", "spearman_mean", "spearman_ci95", "top_cell_agreement", "map_layer_agreement",
            "false_negatives", "layer_agreement", "suggested_layer_agree", "comparison")
    for prefix, v in (("atp", run["atp"]), ("atpstar", run.get("atp_star_ablation", {}).get("both"))):
        if v is not None:
            res.update({f"{prefix}_{k}": v[k] for k in keys})
            if "spearman_vs_signed_mean" in v:
                res[f"{prefix}_spearman_vs_signed_mean"] = v["spearman_vs_signed_mean"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--facts", type=int, default=10)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True,
                    help="AtP* with the QK fix alone, GradDrop alone and both, like for like (default on)")
    ap.add_argument("--edit", action=argparse.BooleanOptionalAction, default=True,
                    help="ROME at AtP's and at exact tracing's suggested layer per fact (default on)")
    ap.add_argument("--window1", action="store_true", help="also compare with single-layer restorations")
    ap.add_argument("--any-facts", action="store_true", help="skip the knowledge filter (random test models)")
    ap.add_argument("--work", default=None,
                    help="checkpoint directory: finished traces and edits are kept and a rerun resumes (default: none)")
    args = ap.parse_args()

    from lens_memory.models import load_model
    from lens_memory.trace import TraceConfig

    lm = load_model(args.model)
    facts = _facts(lm, args.facts, args.any_facts)
    cfg = TraceConfig(kinds=("hidden", "mlp", "attn"), n_samples=args.samples)
    res = {"model": args.model, "split": "test", "n_facts": len(facts), "known_only": not args.any_facts,
           "n_samples": args.samples, "window": cfg.window_for(lm.n_layers), "threads": torch.get_num_threads()}
    run, _, va = _compare(lm, facts, cfg, args.ablation, args.work)
    _table(f"window {res['window']} (the default)", run)
    _flatten(res, run)
    res.update({k: run[k] for k in ("exact_wall_s", "exact_s_per_fact", "magnitude_s_per_fact") if k in run})
    res["atp_star_ablation"] = run.get("atp_star_ablation")
    if args.window1:
        w1, _, _ = _compare(lm, facts, dataclasses.replace(cfg, window=1), args.ablation, args.work)
        _table("window 1", w1)
        res["window1"] = w1
    if args.edit:
        edits = _edits(lm, facts, va, args.work)
        _edit_table(edits)
        res.update(edits)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
