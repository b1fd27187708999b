"""The report data model: a :class:`Report` of :class:`Section` s holding paragraphs, :class:`Figure` s and :class:`Table` s.

Plain data, rendered by :mod:`lens_memory.report.render` (HTML and Markdown). :class:`Table` formats
its own cells; a missing value is shown as :data:`MISSING`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["Figure", "Table", "Section", "Report", "MISSING"]

MISSING = "—"
"""How a missing table value (absent key, ``None``, NaN) is shown."""


@dataclass
class Figure:
    """A PNG image with a caption; ``pdf`` optionally names a vector version to link to."""

    path: str | Path
    caption: str = ""
    pdf: str | Path | None = None


@dataclass
class Table:
    """Rows of ``{column: value}``; ``columns`` fixes order/subset, ``formats`` maps a column to e.g. ``"{:.2f}"``.

    Without ``columns`` the columns are the union of the rows' keys, in first-seen order.
    Missing values (absent key, ``None``, NaN) are shown as :data:`MISSING`; other numbers
    without a format are shown with 4 significant digits (floats) or in full (integers).
    """

    rows: list[dict[str, Any]]
    caption: str = ""
    columns: list[str] | None = None
    formats: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dataframe(cls, df: Any, caption: str = "", formats: dict[str, str] | None = None,
                       index: bool = False) -> Table:
        """Build a table from a pandas DataFrame (``index=True`` keeps the index as first column(s))."""
        if index:
            df = df.reset_index()
        df = df.astype(object).where(df.notna(), None)  # pandas NA/NaT/NaN -> None
        columns = [str(c) for c in df.columns]
        rows = [dict(zip(columns, values)) for values in df.itertuples(index=False, name=None)]
        return cls(rows=rows, caption=caption, columns=columns, formats=dict(formats or {}))

    def header(self) -> list[str]:
        """The columns shown, in order."""
        if self.columns is not None:
            return list(self.columns)
        return list(dict.fromkeys(k for row in self.rows for k in row))

    def cells(self) -> list[list[str]]:
        """Every row as formatted strings, one per column of :meth:`header`."""
        return [[self._format(c, row.get(c)) for c in self.header()] for row in self.rows]

    def numeric_columns(self) -> set[str]:
        """Columns whose present values are all numbers (right-aligned when rendered)."""
        return {c for c in self.header()
                if any(not _is_missing(r.get(c)) for r in self.rows)
                and all(_is_missing(r.get(c)) or _is_number(r.get(c)) for r in self.rows)}

    def _format(self, column: str, value: Any) -> str:
        if _is_missing(value):
            return MISSING
        fmt = self.formats.get(column)
        if fmt is not None:
            try:
                return fmt.format(value)
            except (ValueError, TypeError, IndexError, KeyError) as exc:
                raise ValueError(f"table {self.caption!r}: format {fmt!r} of column {column!r} "
                                 f"does not apply to {value!r} ({exc})") from exc
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, numbers.Integral):
            return str(int(value))
        if isinstance(value, numbers.Real):
            return f"{float(value):.4g}"
        return str(value)


@dataclass
class Section:
    """A titled part of a report: paragraphs, then figures, then tables, then subsections."""

    title: str
    text: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.text, str):  # a lone string is one paragraph, not a list of characters
            self.text = [self.text]


@dataclass
class Report:
    """A whole report; ``provenance`` (nested JSON-like values) is printed as the last section."""

    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)
                             and math.isnan(float(value)))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _walk(sections: Sequence[Section], level: int = 2) -> Iterator[tuple[Section, int]]:
    """Every section depth-first with its heading level (top-level sections are ``<h2>``)."""
    for s in sections:
        yield s, level
        yield from _walk(s.subsections, min(level + 1, 6))
