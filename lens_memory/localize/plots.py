"""Figures of the localization tests, in the house style (:mod:`lens_memory.viz`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..viz import COLUMN_WIDTH, PALETTE, _figure, paper_style

__all__ = ["plot_atp_validation", "plot_edit_sweep", "plot_hase"]


def plot_atp_validation(validation: Any, ax=None):
    """Spearman correlation of estimated and exact effect maps: one dot per fact, a bar per kind (mean)."""
    import matplotlib

    s = validation.summary()
    with matplotlib.rc_context(paper_style()):
        if ax is None:
            ax = _figure(COLUMN_WIDTH, 2.0).add_subplot(1, 1, 1)
        for i, k in enumerate(validation.kinds):
            rho = [r["spearman"] for r in validation.rows if r["kind"] == k]
            ax.bar(i, s[k]["spearman_mean"], color=PALETTE[i], alpha=0.5, width=0.6)
            ax.plot(np.full(len(rho), i) + np.linspace(-0.15, 0.15, len(rho)), rho, "o", ms=2.5, color=PALETTE[i])
        ax.axhline(0.8, color=PALETTE[7], lw=0.6, ls="--")
        ax.set_xticks(range(len(validation.kinds)), validation.kinds)
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
        ax.set_ylabel("Spearman (estimate vs exact)")
        ax.set_title(f"{validation.provenance.get('estimate', 'estimate')}: {s['n_facts']} facts, "
                     f"{s['speedup']:.0f}x faster", fontsize=7)
    return ax.figure


def plot_edit_sweep(sweep: Any, trace: Any = None, fact: int | None = None, metric: str = "rewrite_score", ax=None):
    """Edit success per layer (mean with 95% interval, or fact ``fact``), with the MLP tracing effect at the last
    subject token on a second axis when ``trace`` (a :class:`~lens_memory.trace.TraceResult`) is given."""
    import matplotlib

    with matplotlib.rc_context(paper_style()):
        if ax is None:
            ax = _figure(COLUMN_WIDTH, 2.0).add_subplot(1, 1, 1)
        x = np.asarray(sweep.layers)
        if fact is None:
            m, lo, hi = sweep.curve(metric)
            ax.fill_between(x, lo, hi, color=PALETTE[0], alpha=0.2, lw=0)
        else:
            m = sweep.metrics[metric][fact]
        ax.plot(x, m, "o-", ms=2.5, color=PALETTE[0], label=f"edit: {metric}")
        ax.set_xlabel("edit layer")
        ax.set_ylabel(metric, color=PALETTE[0])
        if trace is not None:
            tw = ax.twinx()
            if fact is None:
                curve = np.asarray(trace.aie("mlp").mean["last subject"])
            else:
                t = trace.traces[fact]
                curve = t.effect("mlp")[:, t.subject_range[1] - 1].numpy()
            tw.plot(np.arange(len(curve)), curve, "s--", ms=2, color=PALETTE[1], label="trace: MLP effect")
            tw.set_ylabel("tracing effect (last subject)", color=PALETTE[1])
            tw.spines["right"].set_visible(True)
        where = "mean over facts" if fact is None else f"fact {fact}"
        ax.set_title(f"{sweep.provenance.get('config', {}).get('method', 'rome').upper()} at every layer, {where}",
                     fontsize=7)
    return ax.figure


def plot_hase(reg: Any, ax=None):
    """Edit success against the tracing effect, one colour per layer (Hase et al. 2023, Fig. 1)."""
    import matplotlib

    with matplotlib.rc_context(paper_style()):
        if ax is None:
            ax = _figure(COLUMN_WIDTH, 2.4).add_subplot(1, 1, 1)
        cmap = matplotlib.colormaps["viridis"]
        n = len(reg.layers)
        for j, layer in enumerate(reg.layers):
            ax.plot(reg.effect[:, j], reg.success[:, j], "o", ms=2.5, color=cmap(j / max(n - 1, 1)),
                    label=str(layer) if n <= 12 else None)
        s = reg.stats
        ax.set_xlabel("tracing effect at the edit layer")
        ax.set_ylabel("edit success")
        ax.set_title(f"R²: tracing {s['r2_tracing']:.2f}, layer {s['r2_layer']:.2f}, "
                     f"layer+tracing {s['r2_layer+tracing']:.2f}", fontsize=7)
        if n <= 12:
            ax.legend(title="layer", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=6)
    return ax.figure
