"""Every paper figure, regenerated from a report run's saved results (no model needed).

:func:`regenerate_figures` reads ``RUN/stages/*`` as written by ``lens-memory report --out RUN``
(trace results, the comparison, attention analysis, memory layer sweep, steering evaluations and
decompositions, stage summaries) and writes each figure as PNG and PDF, in the house style of
:mod:`lens_memory.viz` (column-width sizes, Okabe-Ito colour-blind-safe palette), into one
folder. ``analyses/make_figures.py`` is its command line.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import LensMemoryError
from ..io import read_json

__all__ = ["regenerate_figures"]

log = logging.getLogger(__name__)


def _taxonomy_annotations(stages: Path, rows: list[dict]) -> dict[str, list[str]]:
    from .build import _kib, _steer_range

    ann = {r["mechanism"]: [f"E/P/N {r['efficacy']:.2f}/{r['paraphrase']:.2f}/{r['neighborhood']:.2f}",
                            f"{_kib(r['bytes_per_fact'])}/fact"]
           for r in rows if r["mechanism"] != "none"}
    for m in ("caa", "sta", "lmsteer"):
        p = stages / f"steer_{m}" / "stage.json"
        if p.exists():
            ann[m] = list(_steer_range(read_json(p)["summary"]))
    return ann


def regenerate_figures(run: str | Path, out: str | Path) -> list[Path]:
    """Rebuild every figure of the report run in ``run`` into ``out``; return the files written."""
    from .. import viz
    from ..trace import plots as trace_plots
    from ..compare import Comparison
    from ..memory.attention import AttentionComparison
    from ..memory.evaluate import MemoryLayerSweep
    from ..steer.decompose import Decomposition
    from ..steer.evaluate import SteeringEvaluation
    from ..trace.result import TraceResult
    from .taxonomy import plot_taxonomy

    stages, out = Path(run) / "stages", Path(out)
    if not (stages / "compare" / "stage.json").exists():
        raise LensMemoryError(f"{run} holds no finished report run (no stages/compare/stage.json); "
                              f"run `lens-memory report --out {run}` first")
    written: list[Path] = []

    def save(fig, name: str) -> None:
        written.extend(viz.save_figure(fig, out / name))

    cmp = Comparison.load(stages / "compare")
    save(cmp.plot(), "comparison_knowledge")
    save(plot_taxonomy(_taxonomy_annotations(stages, cmp.rows)), "taxonomy")
    tr = TraceResult.load(stages / "trace" / "trace")
    save(trace_plots.plot_aie(tr), "trace_aie")
    for kind in tr.kinds:
        save(trace_plots.plot_trace_heatmap(tr.traces[0], kind, window=tr.provenance["config"]["window"]), f"trace_heatmap_{kind}")
    att = AttentionComparison.load(stages / "memory" / "attention")
    save(att.plot("reference"), "attention_reference_heatmap")
    save(att.plot("js_vs_none"), "attention_divergence_heatmap")
    save(viz.plot_attention_layers(att), "attention_by_layer")
    if (stages / "memory" / "layer_sweep").exists():
        save(MemoryLayerSweep.load(stages / "memory" / "layer_sweep").plot(), "memory_layer_sweep")
    for m in ("caa", "sta", "lmsteer"):
        d = stages / f"steer_{m}"
        if not (d / "stage.json").exists():
            continue
        evals = [SteeringEvaluation.load(d / "evaluation")]
        if (d / "baseline").exists():
            evals.append(SteeringEvaluation.load(d / "baseline"))
        save(viz.plot_steering_tradeoff(evals), f"steering_tradeoff_{m}")
        if (d / "decomposition").exists():
            save(Decomposition.load(d / "decomposition").plot(), f"steering_decomposition_{m}")
    log.info("wrote %d files into %s", len(written), out)
    return written
