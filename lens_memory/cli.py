"""Command line: ``lens-memory <subcommand> --out DIR``.

Every subcommand writes its results, figures (PNG and PDF) and ``summary.json`` (headline
numbers) into ``--out``. User errors print one line (``lens-memory: error: ...``) and exit 2.

Subcommands:
  trace   causal tracing over a fact set (heatmaps, AIE, suggested edit layers)
  edit    ROME / MEMIT edits of known facts, evaluated CounterFact-style, the edited fact re-traced
  steer   steering vectors (CAA, STA, LM-Steer) on a behaviour, evaluated over strengths
  memory  counterfactual facts as RAG text, dense and sparse KV memories: exactness, knowledge,
          attention, cost
  models  list the offline models; ``--check-facts`` reports which facts a model knows
  conformance  every capability measured on a tiny random model of every family (the README's matrix)
  report  the main job: every mechanism on the same facts, one HTML + Markdown report (cached, resumable)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .parallel.cli_options import add_cluster_args, cluster, executor_from_args
from .parallel.cli_options import positive_int as _positive_int

__all__ = ["main"]

log = logging.getLogger("lens_memory")


def _common(p: argparse.ArgumentParser, *, out_required: bool = True) -> None:
    p.add_argument("--model", default="gemma-3-270m", help="model name (gemma-3-270m, tiny, a HF id or directory)")
    p.add_argument("--out", required=out_required, type=Path, default=None,
                   help="output directory" + ("" if out_required else " (optional: summary.json is written there)"))
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (a GPU when there is one)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weight dtype (tracing and editing are exact in float32)")


def _facts_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--facts", default="builtin", help="'builtin', or a known-facts / CounterFact JSON path or URL")
    p.add_argument("--limit", type=_positive_int, default=None, help="use only the first N facts")


def _add_figures(sub: Any) -> None:
    fg = sub.add_parser("figures", help="regenerate every paper figure (PDF + PNG) from a saved report run")
    fg.add_argument("--run", required=True, type=Path, help="a `lens-memory report --out` directory")
    fg.add_argument("--out", required=True, type=Path, help="where the figures go")
    fg.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _add_trace(sub: Any) -> None:
    t = sub.add_parser("trace", help="causal tracing (Meng et al. 2022)")
    _common(t)
    add_cluster_args(t)
    _facts_args(t)
    t.add_argument("--kinds", default="hidden,mlp,attn",
                   help="comma list of hidden,mlp,attn,hidden_sever_mlp,hidden_sever_attn")
    t.add_argument("--samples", type=int, default=10, help="noise samples per corrupted run")
    t.add_argument("--noise", default="auto", help="'auto' (3x subject-embedding std) or a fixed scale")
    t.add_argument("--window", default="scaled",
                   help="layers restored together for mlp/attn cells: an integer, or 'scaled' = ROME's 10 of 48 "
                        "layers scaled to the model's depth, round(10/48 x n_layers) (4 on an 18-layer model)")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--engine", default="fast", choices=["fast", "reference"])
    t.add_argument("--metric", default="prob", choices=["prob", "logprob", "logit"],
                   help="what a run scores: the answer's probability (ROME; default), log-probability or logit")
    t.add_argument("--heatmaps", type=int, default=8, help="per-fact heatmap figures to write")


def _add_edit(sub: Any) -> None:
    e = sub.add_parser("edit", help="ROME / MEMIT fact editing with CounterFact-style evaluation")
    _common(e)
    add_cluster_args(e)
    _facts_args(e)
    e.add_argument("--method", default="rome", choices=["rome", "memit"])
    e.add_argument("--layer", type=int, default=None, help="ROME layer (default: traced suggestion)")
    e.add_argument("--layers", default=None, help="MEMIT layers, comma list (default: traced suggestion)")
    e.add_argument("--trace-facts", type=int, default=3,
                   help="dev-split facts traced (MLP restoration) to suggest the layer(s); 0 uses the model's default")
    e.add_argument("--split", default="test", choices=["test", "dev", "all"],
                   help="facts edited and reported (default: the test split; layers are chosen on dev facts)")
    e.add_argument("--stats-tokens", type=int, default=None,
                   help="corpus tokens for the key statistics (default: the model's, e.g. 16384 for gemma-3-270m)")
    e.add_argument("--corpus", default=None,
                   help="'offline', 'samples[:N]' (text sampled from the model, cached), a text file/dir, "
                        "or hf:NAME[:CONFIG[:SPLIT]] (default: the model's)")
    e.add_argument("--sequential", action="store_true", help="ROME: each edit computed on the previously edited model")
    e.add_argument("--fluency-facts", type=int, default=10, help="facts whose generations are scored")
    e.add_argument("--gen-tokens", type=int, default=None,
                   help="new tokens per fluency prompt (default: ROME's, 100 tokens including the prompt)")
    e.add_argument("--no-retrace", action="store_true", help="skip tracing the new fact on the edited model")
    e.add_argument("--seed", type=int, default=0)


def _add_steer(sub: Any) -> None:
    st = sub.add_parser("steer", help="steering vectors: CAA, SAE-based STA, LM-Steer")
    _common(st)
    add_cluster_args(st)
    st.add_argument("--method", default="caa", choices=["caa", "sta", "lmsteer"])
    st.add_argument("--behavior", default="sentiment", help="'sentiment', 'ocean', or a JSON/CSV file of pairs")
    st.add_argument("--layer", type=int, default=None, help="steering layer (default: measured per model, 10 for gemma-3-270m; else the middle)")
    st.add_argument("--strengths", default=None, help="comma list of multipliers, written --strengths=-3,-1,0,1,3 (default per method)")
    st.add_argument("--n-prompts", type=int, default=50, help="held-out prompts evaluated")
    st.add_argument("--gen-tokens", type=int, default=30, help="tokens generated per prompt")
    st.add_argument("--sae", default=None,
                    help="SAE for STA/decomposition: 'train' (offline, cached; default for sta), a saved SAE "
                         "directory, or RELEASE:SAE_ID (online)")
    st.add_argument("--caa-form", default="completion_mean", choices=["completion_mean", "ab_letter"],
                    help="CAA's form: completion_mean (EasyEdit2, default) or ab_letter (Rimsky et al.'s A/B letter)")
    st.add_argument("--split", default="test", choices=["dev", "test", "all"],
                    help="evaluation prompts: test (report; default), dev (choose strengths/layers) or all")
    st.add_argument("--no-baseline", action="store_true", help="skip the prompting baseline")
    st.add_argument("--quick", action="store_true", help="smaller SAE and LM-Steer training")
    st.add_argument("--seed", type=int, default=0)


def _add_memory(sub: Any) -> None:
    mm = sub.add_parser("memory", help="KV memories (Memory3) vs RAG on counterfactual facts")
    _common(mm)
    add_cluster_args(mm)
    _facts_args(mm)
    mm.add_argument("--top-k", type=int, default=8, help="tokens kept per head and reference in the sparse memory")
    mm.add_argument("--layers", default="all", help="layers carrying memory: 'all', 'first_half' or a comma list")
    mm.add_argument("--position", default="stacked", choices=["stacked", "parallel"], help="memory position layout")
    mm.add_argument("--attention-facts", type=int, default=10, help="facts whose attention is analysed")
    mm.add_argument("--cost-facts", type=int, default=5, help="facts timed for prefill / decode cost")
    mm.add_argument("--fluency-facts", type=int, default=5, help="facts whose generations are scored")
    mm.add_argument("--gen-tokens", type=int, default=30, help="tokens generated per fluency prompt")
    mm.add_argument("--no-sweep", action="store_true", help="skip the sweep over which layers carry the memory")
    mm.add_argument("--include-unknown", action="store_true",
                    help="use facts whether or not the model knows them (default: known facts only)")
    mm.add_argument("--split", default="test", choices=["test", "dev", "all"],
                    help="facts used (default: the test split, like every reported number)")
    mm.add_argument("--seed", type=int, default=0)


def _add_report(sub: Any) -> None:
    rp = sub.add_parser("report", help="every memory mechanism on the same facts: one HTML + Markdown report")
    _common(rp)
    add_cluster_args(rp)
    rp.add_argument("--facts", default="builtin", help="'builtin', or a known-facts / CounterFact JSON path or URL")
    rp.add_argument("--quick", action="store_true", help="a short run (4 facts, small steering evaluation, a smaller SAE)")
    rp.add_argument("--n-facts", type=int, default=None, help="counterfactual facts compared (default 16, quick 4)")
    rp.add_argument("--stages", default=None, help="comma list of stages to run (default: all)")
    rp.add_argument("--force", action="store_true", help="rerun finished stages instead of reusing them")
    rp.add_argument("--include-unknown", action="store_true",
                    help="use facts whether or not the model knows them (default: known facts only)")
    rp.add_argument("--seed", type=int, default=0)


def _add_models(sub: Any) -> None:
    m = sub.add_parser("models", help="list offline models; --check-facts reports known facts")
    _common(m, out_required=False)
    _facts_args(m)
    m.add_argument("--check-facts", action="store_true", help="report which facts the model knows")


def _add_conformance(sub: Any) -> None:
    cf = sub.add_parser("conformance", help="family x capability matrix on tiny random models of every family")
    cf.add_argument("--out", required=True, type=Path, help="output directory")
    cf.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    cf.add_argument("--families", default=None, help="comma list of families (default: all)")
    cf.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    cf.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="weight dtype (the pass thresholds are float32's; other dtypes report measurements)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lens-memory", description="Where and how language models keep memory.")
    from . import __version__

    ap.add_argument("--version", action="version", version=f"lens-memory {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_figures(sub)
    _add_trace(sub)
    _add_edit(sub)
    _add_steer(sub)
    _add_memory(sub)
    _add_report(sub)
    _add_models(sub)
    _add_conformance(sub)
    return ap


def _cmd_trace(args) -> dict:
    from .facts import load_facts
    from .models import load_model
    from .trace import TraceConfig
    from .workflows import run_trace

    cfg = TraceConfig(kinds=tuple(args.kinds.split(",")), n_samples=args.samples, noise=args.noise,
                      window=args.window, seed=args.seed, engine=args.engine)
    facts = load_facts(args.facts, args.limit)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    with cluster(args, lm):
        summary = run_trace(lm, facts, cfg, checkpoint_dir=args.out / ".checkpoints", source=str(args.facts),
                            metric=args.metric, heatmaps=args.heatmaps)
    summary.save(args.out)
    return summary.to_dict()


def _cmd_edit(args) -> dict:
    from .edit import EvalConfig
    from .facts import load_facts, sample_known_facts
    from .models import load_model
    from .workflows import run_edit

    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    facts = sample_known_facts(lm, load_facts(args.facts, split=args.split), args.limit)
    layers = [args.layer] if args.layer is not None else (
        [int(x) for x in args.layers.split(",")] if args.layers else None)
    dev = sample_known_facts(lm, load_facts(args.facts, split="dev"), args.trace_facts) \
        if layers is None and args.trace_facts > 0 else []
    with cluster(args, lm):
        summary = run_edit(lm, facts, dev, args.method, layers=layers, seed=args.seed, sequential=args.sequential,
                           corpus=args.corpus, stats_tokens=args.stats_tokens, retrace=not args.no_retrace,
                           eval_config=EvalConfig(fluency_facts=args.fluency_facts, gen_tokens=args.gen_tokens,
                                                  seed=args.seed),
                           provenance={"split": args.split, "facts_source": str(args.facts)})
    summary.save(args.out)
    return summary.to_dict()


def _cmd_steer(args) -> dict:
    from .models import load_model
    from .steer.evaluate import SteerEvalConfig
    from .workflows.steer import DEFAULT_STRENGTHS, run_steering

    try:
        strengths = (tuple(float(x) for x in args.strengths.split(",")) if args.strengths
                     else DEFAULT_STRENGTHS[args.method])
    except ValueError:
        raise ValueError(f"--strengths must be a comma list of numbers, got {args.strengths!r}") from None
    cfg = SteerEvalConfig(strengths=strengths, n_prompts=args.n_prompts, gen_tokens=args.gen_tokens, seed=args.seed,
                          split=args.split)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    with cluster(args, lm):
        return run_steering(lm, args.method, args.behavior, args.out, layer=args.layer, eval_cfg=cfg, sae=args.sae,
                            baseline=not args.no_baseline, quick=args.quick, caa_form=args.caa_form)


def _cmd_memory(args) -> dict:
    from .facts import load_facts, sample_known_facts
    from .workflows.memory import run_memory
    from .models import load_model

    layers = args.layers
    if layers not in ("all", "first_half"):
        try:
            layers = tuple(int(x) for x in layers.split(","))
        except ValueError:
            raise ValueError(f"--layers must be 'all', 'first_half' or a comma list of ints, got {args.layers!r}") from None
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.include_unknown:
        from .facts import spread_facts

        facts = [f for f in spread_facts(load_facts(args.facts, split=args.split)) if f.target_new][:args.limit]
    else:
        facts = sample_known_facts(lm, load_facts(args.facts, split=args.split), args.limit)
    with cluster(args, lm):
        return run_memory(lm, facts, args.out, top_k=args.top_k, layers=layers, position=args.position,
                          n_attention=args.attention_facts, n_cost=args.cost_facts, fluency_facts=args.fluency_facts,
                          gen_tokens=args.gen_tokens, seed=args.seed, sweep=not args.no_sweep, split=args.split)


def _cmd_report(args) -> dict:
    from .report.pipeline import STAGES, ReportConfig, run_report

    over = {"model": args.model, "facts": args.facts, "seed": args.seed, "known_only": not args.include_unknown,
            "device": args.device, "dtype": args.dtype}
    if args.n_facts is not None:
        over["n_facts"] = args.n_facts
    cfg = ReportConfig.quick_config(**over) if args.quick else ReportConfig(**over)
    stages = tuple(args.stages.split(",")) if args.stages else STAGES
    ex = executor_from_args(args)
    try:
        return run_report(args.out, cfg, force=args.force, stages=stages, executor=ex)
    finally:
        if ex is not None:
            ex.close()


def _cmd_models(args) -> dict:
    from .facts import check_knowledge, load_facts
    from .io import write_json
    from .models import available_models, load_model

    summary: dict = {"command": "models", "available": available_models()}
    if args.check_facts:
        lm = load_model(args.model, device=args.device, dtype=args.dtype)
        facts = load_facts(args.facts, args.limit)
        k = check_knowledge(lm, facts)
        df = k.to_dataframe()
        if args.out is not None:
            df.to_csv(args.out / "knowledge.csv", index=False)
        per_rel = df.groupby("relation_id")["known"].agg(["mean", "sum", "count"])
        summary.update({"model": lm.identity.to_dict(), "n_facts": len(facts), "n_known": k.n_known,
                        "fraction_known": k.fraction_known,
                        "per_relation": {r: {"known": int(row["sum"]), "n": int(row["count"]), "fraction": float(row["mean"])}
                                         for r, row in per_rel.iterrows()}})
    if args.out is not None:
        write_json(args.out / "summary.json", summary)
    return summary


def _cmd_conformance(args) -> dict:
    from . import viz
    from .conformance import conformance_matrix
    from .devices import resolve_device
    from .io import write_json

    families = args.families.split(",") if args.families else None
    t0 = time.time()
    m = conformance_matrix(families, device=resolve_device(args.device), dtype=args.dtype)
    m.save(args.out)
    viz.save_figure(m.plot(), args.out / "figures" / "conformance")
    summary = {"command": "conformance", **m.summary(), "verdicts": m.verdicts(), "wall_seconds": round(time.time() - t0, 1)}
    write_json(args.out / "summary.json", summary)
    return summary


def _cmd_figures(args) -> dict:
    from .errors import LensMemoryError
    from .io import write_json
    from .report.figures import regenerate_figures

    if not (args.run / "stages").is_dir():
        raise LensMemoryError(f"--run {args.run} is not a `lens-memory report --out` directory (no stages/)")
    files = regenerate_figures(args.run, args.out)
    summary = {"command": "figures", "run": str(args.run), "figures": sorted({p.stem for p in files}),
               "files": len(files)}
    write_json(args.out / "summary.json", summary)
    return summary


def _writable_dir(out: Path) -> None:
    """Create ``out`` or refuse it before any work: a file, or a directory we cannot write into."""
    from .errors import LensMemoryError

    if out.exists() and not out.is_dir():
        raise LensMemoryError(f"--out {out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LensMemoryError(f"--out {out} cannot be created ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise LensMemoryError(f"--out {out} is not writable")


def main(argv: list[str] | None = None) -> int:
    from .errors import LensMemoryError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("transformers", "transformer_lens", "root", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        if args.out is not None:
            _writable_dir(args.out)
        summary = {"trace": _cmd_trace, "edit": _cmd_edit, "steer": _cmd_steer,
                   "memory": _cmd_memory, "models": _cmd_models,
                   "report": _cmd_report, "conformance": _cmd_conformance,
                   "figures": _cmd_figures}[args.command](args)
    except (LensMemoryError, ValueError) as exc:  # DeviceUnavailableError included
        sys.stderr.write(f"lens-memory: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("lens-memory: interrupted; finished facts are kept in --out/.checkpoints\n")
        return 130
    if args.out is not None:
        log.info("wrote %s", args.out / "summary.json")
    brief = {k: v for k, v in summary.items()
                 if k not in ("model", "config", "available", "per_relation", "trace_suggestion", "stats_corpus",
                              "eval_config", "interpretation", "decomposition", "memory_config",
                               "attention_reference_by_layer", "cost", "knowledge", "layer_sweep",
                              "headline", "steering", "verdicts")}
    sys.stdout.write(json.dumps(brief, default=str) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
