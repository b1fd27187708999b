"""The memory taxonomy as a figure: short-term vs long-term by implicit vs explicit, every method placed on it.

The two axes follow the memory taxonomy that motivates lens_memory (and Memory3's framing,
Yang et al. 2024): *implicit* memory lives in the network's own numbers (weights, activations),
*explicit* memory is readable stored material (pre-encoded key-values, text); *long-term* memory
persists across queries without being re-read (weights, a stored KV bank), *short-term* memory
is present only while a query is processed (an added activation, text in the context):

=============  ==================================  =====================================
               implicit                            explicit
=============  ==================================  =====================================
long-term      weights: ROME, MEMIT                 KV memory: Memory3 dense / sparse
short-term     activations: CAA, STA, LM-Steer,     context: RAG text in the prompt
               fact vectors
=============  ==================================  =====================================

:func:`plot_taxonomy` draws the grid and writes each method's measured numbers into its cell.
"""

from __future__ import annotations

from typing import Mapping, Sequence

__all__ = ["CELLS", "METHOD_CELL", "plot_taxonomy"]

#: (row, column) -> (title, substrate)
CELLS = {("long-term", "implicit"): "weights", ("long-term", "explicit"): "key-value memory",
         ("short-term", "implicit"): "activations", ("short-term", "explicit"): "context"}
#: where each built-in mechanism sits
METHOD_CELL = {"rome": ("long-term", "implicit"), "memit": ("long-term", "implicit"),
               "kv_dense": ("long-term", "explicit"), "kv_sparse": ("long-term", "explicit"),
               "rag": ("short-term", "explicit"), "fact_vector": ("short-term", "implicit"),
               "caa": ("short-term", "implicit"), "sta": ("short-term", "implicit"),
               "lmsteer": ("short-term", "implicit")}


def plot_taxonomy(annotations: Mapping[str, Sequence[str]], cells: Mapping[str, tuple[str, str]] | None = None,
                  title: str | None = None):
    """A 2x2 grid (rows long/short-term, columns implicit/explicit) with each method and its numbers.

    Args:
        annotations: method -> lines of text (its measured numbers), in the order to draw.
        cells: method -> (row, column); defaults to :data:`METHOD_CELL`.
    """
    from ..viz import PALETTE, _figure

    cells = dict(METHOD_CELL, **(cells or {}))
    unknown = [m for m in annotations if m not in cells]
    if unknown:
        raise ValueError(f"no taxonomy cell for method(s) {unknown}; pass cells={{name: (row, column)}}")
    rows, cols = ("long-term", "short-term"), ("implicit", "explicit")
    fig = _figure(7.0, 5.2)
    ax = fig.add_axes((0.08, 0.02, 0.9, 0.86))
    ax.set_xlim(0, 2)
    ax.set_ylim(0, 2)
    ax.axis("off")
    tint = {("long-term", "implicit"): PALETTE[0], ("long-term", "explicit"): PALETTE[2],
            ("short-term", "implicit"): PALETTE[1], ("short-term", "explicit"): PALETTE[4]}
    for ri, r in enumerate(rows):
        for ci, c in enumerate(cols):
            x0, y0 = ci, 1 - ri
            ax.add_patch(_rect(x0 + 0.01, y0 + 0.01, 0.98, 0.98, tint[(r, c)]))
            ax.text(x0 + 0.04, y0 + 0.93, CELLS[(r, c)], fontsize=9, fontweight="bold", va="top",
                    color=tint[(r, c)])
            mine = [(m, lines) for m, lines in annotations.items() if cells[m] == (r, c)]
            n_lines = sum(1 + len(lines) for _, lines in mine) + 0.4 * len(mine)
            step = min(0.07, 0.8 / max(n_lines, 1))
            size = 7 if step >= 0.06 else 6
            y = y0 + 0.83
            for m, lines in mine:
                ax.text(x0 + 0.05, y, m, fontsize=size + 1, fontweight="bold", va="top")
                y -= step
                for line in lines:
                    ax.text(x0 + 0.08, y, line, fontsize=size, va="top", family="monospace")
                    y -= step
                y -= 0.4 * step
    for ci, c in enumerate(cols):
        ax.text(ci + 0.5, 2.03, c, ha="center", va="bottom", fontsize=10, fontweight="bold")
    for ri, r in enumerate(rows):
        ax.text(-0.03, 1.5 - ri, r, ha="right", va="center", rotation=90, fontsize=10, fontweight="bold")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _rect(x: float, y: float, w: float, h: float, color: str):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.03", facecolor=color, alpha=0.08,
                          edgecolor=color, linewidth=1.2)
