"""Command line: ``lens-memory <subcommand> --out DIR``.

Every subcommand writes its results, figures (PNG and PDF) and ``summary.json`` (headline
numbers) into ``--out``. User errors print one line (``lens-memory: error: ...``) and exit 2.

Subcommands:
  trace   causal tracing over a fact set (heatmaps, AIE, suggested edit layers)
  edit    ROME / MEMIT edits of known facts, evaluated CounterFact-style, the edited fact re-traced;
          ``--sequential``: lifelong editing (ROME, r-ROME, MEMIT, AlphaEdit) with health curves
  localize  does localization inform editing? attribution patching (AtP, AtP*) validated against exact
          tracing, ROME at every layer, the Hase et al. regression of edit success on the tracing effect
  steer   steering vectors (CAA, STA, LM-Steer) on a behaviour, evaluated over strengths
  memory  counterfactual facts as RAG text, dense and sparse KV memories: exactness, knowledge,
          attention, cost
  models  list the offline models; ``--check-facts`` reports which facts a model knows
  conformance  every capability measured on a tiny random model of every family (the README's matrix)
  report  the main job: every mechanism on the same facts, one HTML + Markdown report (cached, resumable)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .cli_args import build_parser
from .parallel.cli_options import cluster, executor_from_args

__all__ = ["main"]

log = logging.getLogger("lens_memory")


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


def _cmd_localize(args) -> dict:
    from .facts import load_facts, sample_known_facts, spread_facts
    from .localize import SweepConfig
    from .models import load_model
    from .trace import TraceConfig
    from .workflows.localize import ESTIMATORS, run_localize

    estimators = [e for e in args.estimators.split(",") if e]
    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad:
        raise ValueError(f"--estimators {args.estimators!r}: unknown {bad}; choose from {list(ESTIMATORS)}")
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not args.no_sweep and "mlp" not in kinds:
        raise ValueError(f"--kinds {args.kinds!r}: the Hase et al. regression needs the mlp kind (or pass --no-sweep)")
    cfg = TraceConfig(kinds=kinds, n_samples=args.samples, window=args.window)
    layers = tuple(int(x) for x in args.sweep_layers.split(",")) if args.sweep_layers else None
    sweep = SweepConfig(layers=layers, method=args.sweep_method)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    pool = load_facts(args.facts, split=args.split)  # --limit takes facts spread over relations, as the benchmarks
    facts = (spread_facts([f for f in pool if f.target_new], args.limit) if args.include_unknown
             else sample_known_facts(lm, pool, args.limit))
    with cluster(args, lm):
        summary = run_localize(lm, facts, cfg, sweep, estimators=estimators, n_perm=args.perm,
                               checkpoint_dir=args.out / ".checkpoints",
                               sweep=not args.no_sweep, n_boot=args.boot, source=str(args.facts),
                               only_known=not args.include_unknown)
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
    if args.sequential:
        return _cmd_lifelong(args, lm, facts, layers)
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


def _cmd_lifelong(args, lm: Any, facts: list, layers: list | None) -> dict:
    from .facts import load_facts, sample_known_facts
    from .workflows import edit_config
    from .workflows.lifelong import run_lifelong

    edited = {f.prompt for f in facts}
    rest = [f for f in load_facts(args.facts, split=args.split) if f.prompt not in edited]
    heldout = sample_known_facts(lm, rest, args.heldout)[:args.heldout] if args.heldout > 0 and rest else []
    cfg = edit_config(lm, args.method, layers, seed=args.seed, corpus=args.corpus, stats_tokens=args.stats_tokens)
    summary = run_lifelong(lm, facts, args.method, args.batch_size, heldout=heldout, layers=layers, config=cfg,
                           checkpoint=Path(args.out) / "checkpoint",
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
        summary = {"trace": _cmd_trace, "edit": _cmd_edit, "localize": _cmd_localize, "steer": _cmd_steer,
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
                              "headline", "steering", "verdicts", "hase_ci95", "trace_config")}
    sys.stdout.write(json.dumps(brief, default=str) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
