"""One paper style for every figure: column-width sizes, a colour-blind-safe palette, PNG + PDF.

Figures are built on an explicit ``Figure`` (no global pyplot state), so they work headless, in
scripts and in notebooks alike. :func:`save_figure` writes ``stem.png`` and ``stem.pdf``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PALETTE", "KIND_CMAP", "paper_style", "save_figure", "plot_trace_heatmap", "plot_aie", "plot_edit_scores"]

#: Okabe-Ito colour-blind-safe palette.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
KIND_CMAP = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds", "hidden_sever_mlp": "Purples",
             "hidden_sever_attn": "Purples"}
KIND_TITLE = {"hidden": "single restored layer", "mlp": "restored MLP", "attn": "restored attention",
              "hidden_sever_mlp": "restored layer, MLP severed", "hidden_sever_attn": "restored layer, attention severed"}
COLUMN_WIDTH = 3.4  # inches, one column of a two-column paper


def paper_style() -> dict[str, Any]:
    """Matplotlib rc parameters of the house style (use with ``matplotlib.rc_context``)."""
    from cycler import cycler

    return {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
            "legend.fontsize": 7, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 150,
            "savefig.dpi": 200, "savefig.bbox": "tight", "pdf.fonttype": 42,
            "axes.prop_cycle": cycler(color=PALETTE)}


def _figure(w: float, h: float):
    import matplotlib

    from matplotlib.figure import Figure

    with matplotlib.rc_context(paper_style()):
        return Figure(figsize=(w, h))


def save_figure(fig, stem: str | Path) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` (atomically); return both paths."""
    import matplotlib

    from .io import atomic_path

    stem = Path(stem)
    out = []
    with matplotlib.rc_context(paper_style()):
        for ext in ("png", "pdf"):
            p = stem.with_suffix(f".{ext}")
            with atomic_path(p) as tmp:
                fig.savefig(tmp, format=ext)
            out.append(p)
    return out


def plot_trace_heatmap(trace, kind: str, ax=None, window: int | None = None):
    """Tokens x layers heatmap of one fact (subject tokens marked with ``*``), as ROME's Fig. 1."""
    import matplotlib

    scores = trace.scores[kind].numpy().T  # [pos layer]
    s0, s1 = trace.subject_range
    labels = [repr(t)[1:-1] + ("*" if s0 <= i < s1 else "") for i, t in enumerate(trace.tokens)]
    with matplotlib.rc_context(paper_style()):
        if ax is None:
            fig = _figure(COLUMN_WIDTH, 0.22 * len(labels) + 0.9)
            ax = fig.add_subplot(1, 1, 1)
        im = ax.pcolormesh(scores, cmap=KIND_CMAP.get(kind, "Purples"), vmin=trace.low, vmax=max(trace.high, scores.max()))
        ax.invert_yaxis()
        ax.set_yticks(np.arange(len(labels)) + 0.5)
        ax.set_yticklabels(labels)
        n_layers = scores.shape[1]
        step = max(1, n_layers // 6)
        ax.set_xticks(np.arange(0, n_layers, step) + 0.5)
        ax.set_xticklabels(range(0, n_layers, step))
        title = KIND_TITLE.get(kind, kind) + (f" (window {window})" if window and kind in ("mlp", "attn") else "")
        ax.set_title(f"{trace.fact.prompt} → {trace.answer.strip()}\n{title}")
        ax.set_xlabel("layer")
        cb = ax.figure.colorbar(im, ax=ax)
        cb.set_label(f"p({trace.answer.strip()})")
    return ax.figure


def plot_aie(result, kinds: list[str] | None = None):
    """Average indirect effect per layer, one panel per kind, one line per token category (95% bands)."""
    import matplotlib

    from .trace.result import CATEGORIES

    kinds = kinds or result.kinds
    with matplotlib.rc_context(paper_style()):
        fig = _figure(COLUMN_WIDTH * len(kinds) * 0.8 + 0.4, 2.2)
        axes = fig.subplots(1, len(kinds), sharey=True, squeeze=False)[0]
        for ax, kind in zip(axes, kinds):
            aie = result.aie(kind)
            layers = np.arange(result.n_layers)
            for color, c in zip(PALETTE, CATEGORIES):
                if aie.n[c] == 0:
                    continue
                ax.plot(layers, aie.mean[c], color=color, label=f"{c} (n={aie.n[c]})", lw=1.2)
                ax.fill_between(layers, aie.lo[c], aie.hi[c], color=color, alpha=0.15, lw=0)
            ax.set_title(KIND_TITLE.get(kind, kind))
            ax.set_xlabel("layer")
        axes[0].set_ylabel("average indirect effect")
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        fig.suptitle(f"Causal tracing, {result.provenance['model']['name']}, {len(result.traces)} facts", fontsize=8, y=1.08)
    return fig


def plot_edit_scores(evaluation, ax=None, title: str | None = None):
    """Efficacy, paraphrase and neighbourhood success before and after an edit, with 95% intervals."""
    import matplotlib

    s = evaluation.summary()
    names = [("efficacy_score", "efficacy"), ("paraphrase_score", "paraphrase"), ("neighborhood_score", "neighbourhood")]
    x = np.arange(len(names))
    with matplotlib.rc_context(paper_style()):
        if ax is None:
            fig = _figure(COLUMN_WIDTH, 2.0)
            ax = fig.add_subplot(1, 1, 1)
        for off, phase, color, label in ((-0.18, "pre", PALETTE[7], "before"), (0.18, "post", PALETTE[0], "after")):
            means = np.array([s[phase][m] for m, _ in names])
            ci = np.array([s[phase][m + "_ci95"] for m, _ in names])
            err = np.abs(np.stack([means - ci[:, 0], ci[:, 1] - means]))
            ax.bar(x + off, means, width=0.34, color=color, label=label, yerr=err, capsize=2,
                   error_kw={"lw": 0.8})
        ax.set_xticks(x)
        ax.set_xticklabels([n for _, n in names])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("success rate")
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        prov = evaluation.provenance
        ax.set_title(title or f"{prov.get('method', 'edit').upper()} on {prov['model']['name']}, "
                              f"{s['n_facts']} facts, layers {prov.get('layers', '?')}")
    return ax.figure
