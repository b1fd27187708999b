"""The command line's arguments: one parser per subcommand (the commands are :mod:`lens_memory.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .parallel.cli_options import add_cluster_args
from .parallel.cli_options import positive_int as _positive_int

__all__ = ["build_parser"]


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
    t.add_argument("--engine", default="fast", choices=["fast", "reference", "atp", "atp*"],
                   help="exact engines (fast, reference) or gradient estimates (atp: attribution patching; "
                        "atp*: with the QK fix and GradDrop of Kramár et al. 2024)")
    t.add_argument("--metric", default="prob", choices=["prob", "logprob", "logit"],
                   help="what a run scores: the answer's probability (ROME; default), log-probability or logit")
    t.add_argument("--heatmaps", type=int, default=8, help="per-fact heatmap figures to write")


def _add_localize(sub: Any) -> None:
    lo = sub.add_parser("localize", help="does localization inform editing? AtP vs exact tracing, ROME at every "
                                         "layer, the Hase et al. regression")
    _common(lo)
    add_cluster_args(lo)
    _facts_args(lo)
    lo.add_argument("--split", default="test", choices=["test", "dev", "all"], help="built-in split of the facts")
    lo.add_argument("--samples", type=_positive_int, default=10, help="noise samples per corrupted run")
    lo.add_argument("--kinds", default="hidden,mlp,attn",
                    help="comma list of traced kinds (the Hase et al. regression needs mlp only; the estimators are "
                         "validated on every kind traced)")
    lo.add_argument("--window", default="scaled", help="MLP / attention restoration window (as `trace`)")
    lo.add_argument("--estimators", default="atp,atp*", help="comma list of atp, atp* validated against exact tracing")
    lo.add_argument("--sweep-method", default="rome", choices=["rome", "memit"],
                    help="edit at every layer with ROME, or a MEMIT window centred on the layer")
    lo.add_argument("--sweep-layers", default=None, help="comma list of layers to edit (default: every layer)")
    lo.add_argument("--no-sweep", action="store_true", help="only validate the estimators (no edits, no regression)")
    lo.add_argument("--include-unknown", action="store_true",
                    help="also facts the model does not know (e.g. on a random test model; the paper uses known ones)")
    lo.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of facts for the R² intervals")
    lo.add_argument("--perm", type=int, default=1000,
                    help="permutations of facts for the permutation check of the Hase et al. F-test")


def _add_edit(sub: Any) -> None:
    e = sub.add_parser("edit", help="ROME / MEMIT fact editing with CounterFact-style evaluation")
    _common(e)
    add_cluster_args(e)
    _facts_args(e)
    e.add_argument("--method", default="rome", choices=["rome", "prome", "rrome", "memit", "alphaedit"],
                   help="prome: ROME with p-ROME's plain prompt keys; rrome: r-ROME's prefix-averaged keys (Gupta et al. "
                        "2024); alphaedit: MEMIT with AlphaEdit's null-space projection")
    e.add_argument("--layer", type=int, default=None, help="ROME / p-ROME / r-ROME layer (default: traced suggestion)")
    e.add_argument("--layers", default=None, help="MEMIT / AlphaEdit layers, comma list (default: traced suggestion)")
    e.add_argument("--trace-facts", type=int, default=3,
                   help="dev-split facts traced (MLP restoration) to suggest the layer(s); 0 uses the model's default")
    e.add_argument("--split", default="test", choices=["test", "dev", "all"],
                   help="facts edited and reported (default: the test split; layers are chosen on dev facts)")
    e.add_argument("--stats-tokens", type=int, default=None,
                   help="corpus tokens for the key statistics (default: the model's, e.g. 16384 for gemma-3-270m)")
    e.add_argument("--corpus", default=None,
                   help="'offline', 'samples[:N]' (text sampled from the model, cached), a text file/dir, "
                        "or hf:NAME[:CONFIG[:SPLIT]] (default: the model's)")
    e.add_argument("--sequential", action="store_true",
                   help="lifelong editing: batches each computed on the edited model, health tracked per batch")
    e.add_argument("--batch-size", type=_positive_int, default=1, help="facts per batch with --sequential")
    e.add_argument("--heldout", type=int, default=20, help="unedited known test facts whose accuracy is tracked")
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
    rp.add_argument("--stages", default=None,
                    help="comma list of stages to run (default: all but the optional 'lifelong')")
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
    _add_localize(sub)
    _add_steer(sub)
    _add_memory(sub)
    _add_report(sub)
    _add_models(sub)
    _add_conformance(sub)
    return ap
