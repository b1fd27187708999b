"""One paper style for every figure: column-width sizes, a colour-blind-safe palette, PNG + PDF.

Figures are built on an explicit ``Figure`` (no global pyplot state), so they work headless, in
scripts and in notebooks alike. :func:`save_figure` writes ``stem.png`` and ``stem.pdf``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._moved import moved

__all__ = ["PALETTE", "KIND_CMAP", "paper_style", "save_figure", "plot_edit_scores",
           "plot_layer_sweep", "plot_steering_tradeoff", "plot_decomposition",
           "plot_attention_conditions", "plot_attention_layers", "plot_condition_bars", "plot_health"]

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


def plot_edit_scores(evaluation, ax=None, title: str | None = None):
    """Efficacy, paraphrase and neighbourhood success before and after an edit, with 95% intervals."""
    import matplotlib

    s = evaluation.summary()
    names = [("efficacy_success", "efficacy"), ("paraphrase_success", "paraphrase"), ("neighborhood_success", "neighbourhood")]
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


def plot_layer_sweep(sweep, ax=None):
    """CAA layer sweep: target-behaviour probability at +strength and -strength per layer."""
    import matplotlib

    with matplotlib.rc_context(paper_style()):
        if ax is None:
            ax = _figure(COLUMN_WIDTH, 2.0).add_subplot(1, 1, 1)
        ax.plot(sweep.layers, sweep.prob_plus, "o-", color=PALETTE[0], ms=3, label=f"+{sweep.strength:g}")
        ax.plot(sweep.layers, sweep.prob_minus, "o-", color=PALETTE[3], ms=3, label=f"-{sweep.strength:g}")
        ax.axhline(sweep.prob_base, color=PALETTE[7], lw=0.8, ls="--", label="unsteered")
        ax.set_xlabel("layer")
        ax.set_ylabel("P(target behaviour)")
        ax.set_ylim(0, 1)
        ax.set_title(f"CAA layer sweep, {sweep.behavior}")
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax.figure


def plot_steering_tradeoff(evaluations, axes=None):
    """Behaviour score (with 95% intervals) and perplexity of steered text vs strength, one line per method."""
    import matplotlib

    with matplotlib.rc_context(paper_style()):
        if axes is None:
            fig = _figure(2 * COLUMN_WIDTH, 2.0)
            axes = fig.subplots(1, 3)
        for i, ev in enumerate(evaluations):
            c = PALETTE[i % len(PALETTE)]
            df = ev.to_dataframe().sort_values("strength")
            label = ev.method.upper() if ev.method != "prompting" else "prompting"
            axes[0].errorbar(df.strength, df.behavior_score, yerr=[df.behavior_score - df.behavior_lo,
                             df.behavior_hi - df.behavior_score], fmt="o-", ms=3, color=c, capsize=2, lw=1, label=label)
            axes[1].plot(df.strength, df.perplexity, "o-", ms=3, color=c, lw=1, label=label)
            axes[2].plot(df.perplexity, df.behavior_score, "o-", ms=3, color=c, lw=1, label=label)
        axes[0].set_xlabel("strength")
        axes[0].set_ylabel("behaviour score")
        axes[1].set_xlabel("strength")
        axes[1].set_ylabel("perplexity (unsteered model)")
        axes[1].set_yscale("log")
        axes[2].set_xlabel("perplexity")
        axes[2].set_xscale("log")
        axes[2].set_ylabel("behaviour score")
        axes[2].legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ev = evaluations[0]
        axes[0].set_title(f"{ev.behavior}: score", fontsize=8)
        axes[1].set_title("fluency", fontsize=8)
        axes[2].set_title("trade-off", fontsize=8)
        axes[0].figure.tight_layout()
    return axes[0].figure


def plot_decomposition(dec, k: int = 10, ax=None):
    """A direction's top SAE features: share of the squared norm each explains, labelled by top tokens."""
    import matplotlib

    k = min(k, len(dec.features))
    with matplotlib.rc_context(paper_style()):
        if ax is None:
            fig = _figure(2 * COLUMN_WIDTH, 2.2)
            ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
        else:
            ax2 = None
        y = np.arange(k)[::-1]
        fr = np.array(dec.fractions[:k])
        ax.barh(y, fr, color=[PALETTE[0] if c > 0 else PALETTE[3] for c in dec.coefficients[:k]])
        ax.set_yticks(y)
        ax.set_yticklabels([f"#{f} {dec.label(f, 2)[:28]}" for f in dec.features[:k]], fontsize=6)
        ax.set_xlabel("share of |v|²")
        ax.set_title(f"{dec.name} in SAE features ({dec.hook})", fontsize=8)
        if ax2 is not None:
            ax2.plot(np.arange(1, len(dec.explained_curve) + 1), dec.explained_curve, "o-", ms=2, color=PALETTE[2])
            ax2.set_xlabel("features (k)")
            ax2.set_ylabel("explained share of |v|²")
            ax2.set_ylim(0, 1)
            ax2.figure.tight_layout()
    return ax.figure


_MASS_LABEL = {"reference": "attention on reference", "sink": "attention on first token (sink)",
               "query": "attention on query's own tokens", "entropy": "attention entropy (nats)",
               "js_vs_none": "JS divergence from no context"}


def plot_attention_conditions(comparison, metric: str = "reference"):
    """Layer x head heatmaps of ``metric``, one per condition (no context, RAG, KV memories)."""
    import matplotlib

    vals = comparison.values[metric]  # [condition layer head]
    n_c = len(comparison.conditions)
    vmax = float(np.nanmax(vals)) if np.isfinite(vals).any() else 1.0
    with matplotlib.rc_context(paper_style()):
        fig = _figure(min(2 * COLUMN_WIDTH, 1.5 * n_c + 0.8), 2.6)
        axes = fig.subplots(1, n_c, sharey=True, squeeze=False)[0]
        im = None
        for ax, c, v in zip(axes, comparison.conditions, vals):
            im = ax.imshow(v, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax, origin="lower", interpolation="nearest")
            ax.set_title(c)
            ax.set_xlabel("head")
            ax.set_xticks(range(v.shape[1]))
        axes[0].set_ylabel("layer")
        n_l = vals.shape[1]
        step = max(1, n_l // 9)
        axes[0].set_yticks(range(0, n_l, step))
        fig.colorbar(im, ax=list(axes), shrink=0.85, label=_MASS_LABEL.get(metric, metric))
    return fig


def plot_attention_layers(comparison, metrics: tuple[str, ...] = ("reference", "sink", "query", "js_vs_none")):
    """Per layer (mean over heads): each metric as a line per condition."""
    import matplotlib

    with matplotlib.rc_context(paper_style()):
        fig = _figure(2 * COLUMN_WIDTH, 1.9)
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        for ax, m in zip(axes, metrics):
            for i, c in enumerate(comparison.conditions):
                ax.plot(comparison.values[m][i].mean(-1), marker="o", ms=2, lw=1, label=c, color=PALETTE[i % len(PALETTE)])
            ax.set_xlabel("layer")
            ax.set_title(_MASS_LABEL.get(m, m), fontsize=7)
        fig.tight_layout(rect=(0, 0, 0.9, 1))
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, frameon=False, loc="center right")
    return fig


def plot_condition_bars(table: dict[str, dict[str, float]], metrics: tuple[str, ...], title: str | None = None,
                        ylabel: str = "", errors: dict[str, dict[str, tuple[float, float]]] | None = None,
                        bounds: tuple[float, float] | None = None):
    """Grouped bars: one group per metric, one bar per condition (``table[condition][metric]``).

    ``bounds``: clip error bars to this range (e.g. ``(0, 1)`` for success rates). The legend sits
    to the right of the axes, so it never covers a bar.
    """
    import matplotlib

    conds = list(table)
    width = 0.8 / max(1, len(conds))
    with matplotlib.rc_context(paper_style()):
        fig = _figure(COLUMN_WIDTH * (1.35 if len(conds) > 4 else 1.0), 2.0)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(metrics))
        for i, c in enumerate(conds):
            vals = [table[c].get(m, np.nan) for m in metrics]
            yerr = None
            if errors and c in errors:
                lo_hi = [errors[c].get(m, (v, v)) for m, v in zip(metrics, vals)]
                if bounds is not None:
                    lo_hi = [(max(lo, bounds[0]), min(hi, bounds[1])) for lo, hi in lo_hi]
                yerr = np.array([[max(0.0, v - lo) for v, (lo, _) in zip(vals, lo_hi)],
                                 [max(0.0, hi - v) for v, (_, hi) in zip(vals, lo_hi)]])
            ax.bar(x + (i - (len(conds) - 1) / 2) * width, vals, width, label=c, color=PALETTE[i % len(PALETTE)],
                   yerr=yerr, capsize=1.5, error_kw={"lw": 0.6})
        ax.set_xticks(x)
        ax.set_xticklabels(metrics)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.legend(frameon=False, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


#: tracing's plots live next to the trace result (:mod:`lens_memory.trace.plots`); the old names warn
__getattr__ = moved("lens_memory.viz", {"plot_trace_heatmap": "lens_memory.trace.plots",
                                        "plot_aie": "lens_memory.trace.plots"})


_HEALTH_PANELS = (("retention", "retention of all edits", None), ("batch_neighborhood", "neighbourhood (batch)", None),
                  ("heldout_accuracy_ratio", "held-out accuracy / before", 0.95),
                  ("perplexity_ratio", "perplexity / before", 1.05), ("delta_norm", "max ‖ΔW‖ / ‖W‖", None))


def plot_health(healths, axes=None):
    """Lifelong-editing health against the number of edits, one line per method (a list or one result)."""
    import matplotlib

    healths = healths if isinstance(healths, (list, tuple)) else [healths]
    with matplotlib.rc_context(paper_style()):
        if axes is None:
            axes = _figure(2 * COLUMN_WIDTH, 1.7).subplots(1, len(_HEALTH_PANELS))
        for i, h in enumerate(healths):
            rows = h.rows
            x = [r["n_edits"] for r in rows]
            for ax, (metric, title, line) in zip(axes, _HEALTH_PANELS):
                if metric == "delta_norm":
                    y = [max([v for k, v in r.items() if k.startswith("delta_norm.")] or [0.0]) for r in rows]
                else:
                    y = [r.get(metric, np.nan) for r in rows]
                ax.plot(x, y, "o-", ms=2, lw=1, color=PALETTE[i % len(PALETTE)], label=h.method)
                if line is not None and i == 0:
                    ax.axhline(line, color=PALETTE[7], lw=0.6, ls="--")
                ax.set_title(title, fontsize=7)
                ax.set_xlabel("edits")
        axes[-1].legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        axes[0].figure.tight_layout()
    return axes[0].figure
