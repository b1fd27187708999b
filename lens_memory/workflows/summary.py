"""What every workflow returns: headline numbers (``summary.json``) plus the results behind them.

A workflow computes and returns a summary; nothing is written or drawn until ``save(out)``, which
writes the results, their figures (PNG + PDF) and ``summary.json`` (the headline numbers) into
``out``. The CLI is parsing, one workflow call and ``save``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["WorkflowSummary"]


@dataclass
class WorkflowSummary:
    """Headline numbers of one run (``headline``, JSON-able) and its provenance."""

    headline: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.headline[key]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.headline)

    def save(self, out: str | Path) -> Path:
        """Write ``out/summary.json`` (subclasses write their results and figures first)."""
        from ..io import write_json

        return write_json(Path(out) / "summary.json", self.headline)
