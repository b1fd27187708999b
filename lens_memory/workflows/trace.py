"""The tracing workflow: trace a fact set, then (on ``save``) write scores, the AIE figure and heatmaps."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .summary import WorkflowSummary

__all__ = ["TraceSummary", "run_trace"]


@dataclass
class TraceSummary(WorkflowSummary):
    """A :class:`~lens_memory.trace.TraceResult` and its headline numbers; ``heatmaps`` facts are drawn."""

    result: Any = None
    heatmaps: int = 8

    def save(self, out: str | Path) -> Path:
        from .. import viz
        from ..trace import plots

        out = Path(out)
        self.result.save(out / "trace")
        self.result.to_dataframe().to_csv(out / "trace_scores.csv", index=False)
        figs = out / "figures"
        viz.save_figure(self.result.plot(), figs / "aie")
        for i, tr in enumerate(self.result.traces[: self.heatmaps]):
            for kind in self.result.kinds:
                viz.save_figure(plots.plot_trace_heatmap(tr, kind, window=self.result.window), figs / f"fact{i:03d}_{kind}")
        return super().save(out)


def run_trace(lm: Any, facts: Sequence[Any], cfg: Any, *, checkpoint_dir: str | Path | None = None, source: str = "",
              metric: Any = None, heatmaps: int = 8) -> TraceSummary:
    """Trace ``facts`` (only the known ones) and summarise; interrupted runs resume from ``checkpoint_dir``."""
    from ..trace import trace_facts

    t0 = time.time()
    result = trace_facts(lm, facts, cfg, checkpoint_dir=checkpoint_dir, source=source, metric=metric)
    head = {"command": "trace", "model": lm.identity.to_dict(), "config": cfg.to_dict(),
            "noise_scale": result.provenance["noise_scale"], "metric": result.provenance["metric"], **result.summary(),
            "wall_seconds": round(time.time() - t0, 1)}
    return TraceSummary(head, result=result, heatmaps=heatmaps)
