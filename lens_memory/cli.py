"""Command line: ``lens-memory <subcommand> --out DIR``.

Every subcommand writes its results, figures (PNG and PDF) and ``summary.json`` (headline
numbers) into ``--out``. User errors print one line (``lens-memory: error: ...``) and exit 2.

Subcommands:
  trace   causal tracing over a fact set (heatmaps, AIE, suggested edit layers)
  models  list the offline models; ``--check-facts`` reports which facts a model knows
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("lens_memory")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gemma-3-270m", help="model name (gemma-3-270m, tiny, a HF id or directory)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _facts_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--facts", default="builtin", help="'builtin', or a known-facts / CounterFact JSON path or URL")
    p.add_argument("--limit", type=int, default=None, help="use only the first N facts")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lens-memory", description="Where and how language models keep memory.")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("trace", help="causal tracing (Meng et al. 2022)")
    _common(t)
    _facts_args(t)
    t.add_argument("--kinds", default="hidden,mlp,attn",
                   help="comma list of hidden,mlp,attn,hidden_sever_mlp,hidden_sever_attn")
    t.add_argument("--samples", type=int, default=10, help="noise samples per corrupted run")
    t.add_argument("--noise", default="auto", help="'auto' (3x subject-embedding std) or a fixed scale")
    t.add_argument("--window", type=int, default=10, help="layers restored together for mlp/attn cells")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--engine", default="fast", choices=["fast", "reference"])
    t.add_argument("--heatmaps", type=int, default=8, help="per-fact heatmap figures to write")

    m = sub.add_parser("models", help="list offline models; --check-facts reports known facts")
    _common(m)
    _facts_args(m)
    m.add_argument("--check-facts", action="store_true", help="report which facts the model knows")
    return ap


def _cmd_trace(args) -> dict:
    from . import viz
    from .facts import load_facts
    from .io import write_json
    from .models import load_model
    from .trace import TraceConfig, trace_facts

    cfg = TraceConfig(kinds=tuple(args.kinds.split(",")), n_samples=args.samples, noise=args.noise,
                      window=args.window, seed=args.seed, engine=args.engine)
    facts = load_facts(args.facts, args.limit)
    lm = load_model(args.model)
    t0 = time.time()
    result = trace_facts(lm, facts, cfg, checkpoint_dir=args.out / ".checkpoints", source=str(args.facts))
    result.save(args.out / "trace")
    result.to_dataframe().to_csv(args.out / "trace_scores.csv", index=False)
    figs = args.out / "figures"
    viz.save_figure(result.plot(), figs / "aie")
    for i, tr in enumerate(result.traces[: args.heatmaps]):
        for kind in result.kinds:
            viz.save_figure(viz.plot_trace_heatmap(tr, kind, window=cfg.window), figs / f"fact{i:03d}_{kind}")
    summary = {"command": "trace", "model": lm.identity.to_dict(), "config": cfg.to_dict(),
               "noise_scale": result.provenance["noise_scale"], **result.summary(),
               "wall_seconds": round(time.time() - t0, 1)}
    write_json(args.out / "summary.json", summary)
    return summary


def _cmd_models(args) -> dict:
    from .facts import check_knowledge, load_facts
    from .io import write_json
    from .models import available_models, load_model

    summary: dict = {"command": "models", "available": available_models()}
    if args.check_facts:
        lm = load_model(args.model)
        facts = load_facts(args.facts, args.limit)
        k = check_knowledge(lm, facts)
        df = k.to_dataframe()
        args.out.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out / "knowledge.csv", index=False)
        per_rel = df.groupby("relation_id")["known"].agg(["mean", "sum", "count"])
        summary.update({"model": lm.identity.to_dict(), "n_facts": len(facts), "n_known": k.n_known,
                        "fraction_known": k.fraction_known,
                        "per_relation": {r: {"known": int(row["sum"]), "n": int(row["count"]), "fraction": float(row["mean"])}
                                         for r, row in per_rel.iterrows()}})
    write_json(args.out / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    from .errors import LensMemoryError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("transformers", "transformer_lens", "root", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        summary = {"trace": _cmd_trace, "models": _cmd_models}[args.command](args)
    except (LensMemoryError, ValueError) as exc:
        sys.stderr.write(f"lens-memory: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("lens-memory: interrupted; finished facts are kept in --out/.checkpoints\n")
        return 130
    log.info("wrote %s", args.out / "summary.json")
    brief = {k: v for k, v in summary.items() if k not in ("model", "config", "available", "per_relation")}
    sys.stdout.write(json.dumps(brief, default=str) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
