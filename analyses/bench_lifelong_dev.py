"""Benchmark: AlphaEdit's lifelong settings chosen on the DEV split by a coordinate search.

``analyses/bench_lifelong.py`` first reported its methods over 200 **test** edits with AlphaEdit's paper settings
(null-space threshold 2e-2 absolute, l2 = 10), MEMIT's window 3-7 and ``C`` from 16,384 sampled tokens, none of
them chosen on dev. On Gemma 3 270M that threshold leaves 59-90% of the key dimensions in the null space (it was
set for GPT-J and Llama 3 key scales). This script chooses those settings without looking at the test facts. The protocol,
fixed before any run:

* **Dev sequence.** The first ``--facts`` built-in **dev** facts (``load_facts(split="dev")``, spread over
  relations) are written in batches of ``--batch-size`` with ``--method`` (AlphaEdit by default) through
  :func:`lens_memory.workflows.lifelong.run_lifelong` -- the workflow and health probe of
  ``bench_lifelong.py``: ``HealthConfig(every=1, heldout=..., text="offline", text_tokens=--text-tokens)``
  with ``--heldout`` other dev facts the model knows (never edited), ``batch_facts = --batch-size``.
* **Score** of a configuration, on the final state (after the last batch)::

      S = (retention + min(1, held-out accuracy ratio) + min(1, 1 / perplexity ratio)) / 3

  retention = efficacy success over all edited facts (``final_efficacy_success``); the ratios are the last
  health row's, after / before the sequence. Each term is in [0, 1] and 1 means "as good as unedited / every
  edit kept"; the caps stop a lucky improvement over the unedited model from buying lost edits. When the
  unedited model gets no held-out token right (a random test model) the ratio is undefined for every
  candidate alike and S is the mean of the other two terms (``heldout_accuracy_ratio`` is then null).
* **Coordinate search** (one pass, not a grid). Start from today's settings, the first candidate of each
  list; for each coordinate in order -- key-statistics tokens (``--stats-tokens``), layer window
  (``--windows``), null-space rule and threshold (``--thresholds``), ``l2`` (``--l2s``) -- run every candidate
  with the other coordinates at the best so far and keep the highest S (ties: the earlier candidate, so
  today's value stays unless beaten). ``C`` is fixed before the threshold that reads it. A candidate that
  cannot run (an empty null space) is recorded with its error and not chosen. MEMIT (``--method memit``)
  searches the first two coordinates only.
* **Checkpoints.** Each finished configuration is one line of ``--work/<model>-<method>-dev-<n>x<B>.jsonl``,
  keyed by a hash of the protocol (model weights, fact and held-out ids, batch size, text tokens) and the
  method's whole config; a rerun reads finished ones back instead of recomputing (the same numbers, bit for
  bit) and resumes an unfinished sequence from its per-batch checkpoint under ``--work/seq/``.

Prints a table and, as the last line, one JSON object: the chosen settings, every candidate with its score,
``split="dev"`` and ``n``. ``--report-only`` prints only the null space every threshold candidate gives at the
start settings (``nullspace_report``; no edit) -- a look at the sizes before the long run.

Time on Gemma 3 270M, 2 CPU cores (measured parts from ``bench_lifelong.py``): about 245 s per batch of 20
plus 15 s per health row, so about 13 min per configuration at 60 facts in batches of 20 (9 min at 40). The
default lists give 7 configurations, about 95 min; the 100,000-token candidate first samples that much text
from the model once (about 50 tokens/s, ~35 min, cached in ``~/.cache/lens_memory/corpus``) and estimates
``C`` on it (~630 tokens/s, ~3 min).

    python analyses/bench_lifelong_dev.py [--facts 60] [--batch-size 20] [--stats-tokens 16384,100000] \\
        [--windows 3-7,2-6] [--thresholds abs:2e-2,rel:1e-2,rel:1e-3] [--l2s 10,1,100] [--report-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

OBJECTIVE = "S = (retention + min(1, heldout_accuracy_ratio) + min(1, 1 / perplexity_ratio)) / 3, final state"
COORDINATES = ("stats_tokens", "window", "threshold", "l2")
RULES = {"abs": "absolute", "rel": "relative"}


def _candidates(args) -> dict[str, list]:
    """Each coordinate's candidate values (the first one is the starting point)."""
    windows = [[int(a), int(b)] for a, b in (w.split("-") for w in args.windows.split(","))]
    thresholds = [[RULES[r], float(t)] for r, t in (x.split(":") for x in args.thresholds.split(","))]
    return {"stats_tokens": [int(x) for x in args.stats_tokens.split(",")], "window": windows,
            "threshold": thresholds, "l2": [float(x) for x in args.l2s.split(",")]}


def score(retention: float, heldout_ratio: float | None, ppl_ratio: float) -> float:
    """The fixed selection objective (:data:`OBJECTIVE`); without a held-out ratio, the mean of the other two."""
    terms = [retention, min(1.0, 1.0 / ppl_ratio)] + ([] if heldout_ratio is None else [min(1.0, heldout_ratio)])
    return sum(terms) / len(terms)


def _config(lm, args, s: dict):
    """The method's config for settings ``s`` (everything else: the model's defaults, as bench_lifelong.py)."""
    from lens_memory.edit import StatsConfig
    from lens_memory.edit.sequence import sequence_config

    n = s["stats_tokens"]
    corpus = f"samples:{n}" if args.stats_source == "samples" else args.stats_source
    over = {"stats": StatsConfig(corpus=corpus, n_tokens=n), "batch_facts": args.batch_size}
    if args.method == "alphaedit":
        over.update(nullspace_rule=s["threshold"][0], nullspace_threshold=s["threshold"][1], l2=s["l2"])
    a, b = s["window"]
    return sequence_config(lm, args.method, layers=list(range(a, b + 1)), **over)


def _key(protocol: dict, cfg) -> str:
    blob = json.dumps({"protocol": protocol, "config": cfg.to_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _run(lm, args, s: dict, facts, heldout, protocol: dict, done: dict, log: Path) -> dict:
    """One configuration's dev sequence, or its finished record from the JSON-lines checkpoint."""
    from lens_memory.edit.alphaedit import nullspace_report
    from lens_memory.workflows.lifelong import run_lifelong

    cfg = _config(lm, args, s)
    key = _key(protocol, cfg)
    if key in done:
        return done[key]
    rec = {"key": key, "settings": s, "n": len(facts)}
    if args.method == "alphaedit":  # the sizes the edits will record (tests: the projector's rank)
        rec["nullspace"] = {str(j): list(v) for j, v in nullspace_report(lm, cfg).items()}
        empty = [j for j, v in rec["nullspace"].items() if v[0] == 0]
        if empty:
            rec.update(error=f"empty null space at layer(s) {', '.join(empty)}", score=None)
    if "error" not in rec:
        out = run_lifelong(lm, facts, args.method, args.batch_size, heldout=heldout, config=cfg,
                           text_tokens=args.text_tokens, checkpoint=Path(args.work) / "seq" / key[:20])
        rec.update(retention=out["final_efficacy_success"], paraphrase=out["final_paraphrase_success"],
                   neighborhood=out["final_neighborhood_success"],
                   heldout_accuracy_ratio=out["heldout_accuracy_ratio"], perplexity_ratio=out["perplexity_ratio"],
                   max_delta_norm=out["max_delta_norm"], first_failure=out["first_failure"],
                   edit_seconds=round(out["edit_seconds"], 1), seconds=out["seconds"])
        rec["score"] = score(rec["retention"], rec["heldout_accuracy_ratio"], rec["perplexity_ratio"])
    with log.open("a") as fh:
        fh.write(json.dumps(rec) + "\n")
    rec = json.loads(json.dumps(rec))  # exactly what a rerun reads back
    done[key] = rec
    return rec


def _search(lm, args, facts, heldout, protocol: dict, log: Path) -> tuple[dict, list[dict]]:
    """The coordinate search; returns the chosen settings and every candidate run (in order, with repeats)."""
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["key"]] = r
    cands = _candidates(args)
    best = {c: cands[c][0] for c in COORDINATES}
    rows = []
    for coord in COORDINATES[:2] if args.method == "memit" else COORDINATES:
        runs = [_run(lm, args, {**best, coord: v}, facts, heldout, protocol, done, log) for v in cands[coord]]
        ok = [(r["score"], -i) for i, r in enumerate(runs) if r["score"] is not None]
        if not ok:
            raise SystemExit(f"no candidate of {coord} ran: " + "; ".join(r.get("error", "") for r in runs))
        pick = -max(ok)[1]
        best[coord] = cands[coord][pick]
        rows += [{"coordinate": coord, "chosen": i == pick, **r} for i, r in enumerate(runs)]
        print(f"{coord}: chosen {best[coord]} (S = {runs[pick]['score']:.4f})", flush=True)
    return best, rows


def _fmt(s: dict) -> str:
    rule, t = s["threshold"]
    return f"C {s['stats_tokens']:>6} | L {s['window'][0]}-{s['window'][1]} | {rule[:3]} {t:<7g} | l2 {s['l2']:<5g}"


def _table(rows: list[dict]) -> None:
    print(f"\n{'coordinate':12s} {'settings':48s} {'null/d (min-max)':>17s} {'retent.':>7s} {'heldout':>7s} "
          f"{'ppl':>6s} {'S':>7s}")
    for r in rows:
        ns = r.get("nullspace") or {}
        fr = [v[2] for v in ns.values()]
        null = f"{min(fr):.2f}-{max(fr):.2f}" if fr else "-"
        mark = " *" if r["chosen"] else ""
        if r["score"] is None:
            print(f"{r['coordinate']:12s} {_fmt(r['settings']):48s} {null:>17s}  error: {r['error'][:60]}")
            continue
        held = "-" if r["heldout_accuracy_ratio"] is None else f"{r['heldout_accuracy_ratio']:.3f}"
        print(f"{r['coordinate']:12s} {_fmt(r['settings']):48s} {null:>17s} {r['retention']:7.3f} "
              f"{held:>7s} {r['perplexity_ratio']:6.3f} {r['score']:7.4f}{mark}")


def _report_only(lm, args) -> None:
    """The null space of every threshold candidate at the starting stats and window (no edit)."""
    from lens_memory.edit.alphaedit import nullspace_report

    cands = _candidates(args)
    start = {c: cands[c][0] for c in COORDINATES}
    out = []
    for th in cands["threshold"]:
        rep = nullspace_report(lm, _config(lm, args, {**start, "threshold": th}))
        out.append({"threshold": th, "nullspace": {str(j): list(v) for j, v in rep.items()}})
        print(f"{th[0]:8s} {th[1]:<8g} " + "  ".join(f"L{j}: {v.dim}/{v.d_mlp} ({v.fraction:.2f}, energy {v.energy:.2g})"
                                                    for j, v in rep.items()), flush=True)
    print(json.dumps({"model": args.model, "split": "dev", "report_only": True, "start": start, "thresholds": out}))


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--method", default="alphaedit", choices=("alphaedit", "memit"))
    ap.add_argument("--facts", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--heldout", type=int, default=60)
    ap.add_argument("--heldout-unchecked", action="store_true",
                    help="take held-out dev facts without checking the model knows them (random test models)")
    ap.add_argument("--text-tokens", type=int, default=1024)
    ap.add_argument("--stats-tokens", default="16384,100000")
    ap.add_argument("--stats-source", default="samples", help="'samples' (samples:N of the model) or a corpus spec")
    ap.add_argument("--windows", default="3-7,2-6")
    ap.add_argument("--thresholds", default="abs:2e-2,rel:1e-2,rel:1e-3", help="RULE:VALUE, RULE abs or rel")
    ap.add_argument("--l2s", default="10,1,100")
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "lens_memory" / "bench_lifelong_dev"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    return ap.parse_args()


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    from lens_memory.facts import load_facts, sample_known_facts, spread_facts
    from lens_memory.models import load_model

    lm = load_model(args.model)
    if args.report_only:
        return _report_only(lm, args)
    t0 = time.time()
    dev = spread_facts(load_facts(split="dev"))
    facts, rest = dev[:args.facts], dev[args.facts:]
    if len(facts) < args.facts:
        raise SystemExit(f"only {len(facts)} dev facts, asked for {args.facts}")
    if args.heldout < 1:
        raise SystemExit(f"--heldout must be >= 1 (the score reads the held-out accuracy ratio), got {args.heldout}")
    heldout = rest[:args.heldout] if args.heldout_unchecked else sample_known_facts(lm, rest, args.heldout)
    protocol = {"model": args.model, "weights": lm.identity.weight_hash, "method": args.method,
                "facts": [f.case_id for f in facts], "heldout": [f.case_id for f in heldout],
                "batch_size": args.batch_size, "text_tokens": args.text_tokens, "every": 1}
    log = Path(args.work) / f"{args.model.replace('/', '--')}-{args.method}-dev-{len(facts)}x{args.batch_size}.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    best, rows = _search(lm, args, facts, heldout, protocol, log)
    _table(rows)
    print(f"\nchosen on dev (n = {len(facts)} edits, {len(heldout)} held-out facts): {_fmt(best)}")
    cands = [{k: r.get(k) for k in ("coordinate", "settings", "score", "retention", "heldout_accuracy_ratio",
                                    "perplexity_ratio", "paraphrase", "neighborhood", "nullspace", "first_failure",
                                    "edit_seconds", "error", "chosen")} for r in rows]
    print(json.dumps({"model": args.model, "method": args.method, "split": "dev", "n": len(facts),
                      "n_heldout": len(heldout), "batch_size": args.batch_size, "objective": OBJECTIVE,
                      "chosen": best, "candidates": cands, "log": str(log),
                      "seconds_this_run": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
