"""Tracing's figures: one fact's tokens x layers heatmap (ROME Fig. 1) and the average indirect effect.

Domain plots live next to their results; :mod:`lens_memory.viz` keeps the shared style
(``paper_style``, palette, figure sizes, ``save_figure``).
"""

from __future__ import annotations

import numpy as np

from ..viz import COLUMN_WIDTH, KIND_CMAP, KIND_TITLE, PALETTE, _figure, paper_style

__all__ = ["plot_trace_heatmap", "plot_aie"]


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

    from .result import CATEGORIES

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
