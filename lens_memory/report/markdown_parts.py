"""The parts of the Markdown report: escaping, GitHub heading anchors, code fences, linked assets and tables.

:func:`lens_memory.report.render.render_markdown` assembles the document from them; :class:`_Assets`
copies figures that lie outside the Markdown file's directory next to it.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from pathlib import Path

from .document import Table
from .render_common import _atomic_write, _inline


def _md_escape(text: str) -> str:
    """Escape raw HTML in Markdown prose (code spans are left as they are)."""
    return _inline(text, code=lambda c: f"`{c}`",
                   plain=lambda t: t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def _md_cell(text: str) -> str:
    return _md_escape(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _gh_anchor(title: str, seen: dict[str, int]) -> str:
    """The anchor GitHub gives a heading (lowercase, punctuation dropped, spaces to dashes, deduplicated)."""
    base = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def _fence(text: str) -> str:
    """A backtick fence longer than any backtick run in ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


class _Assets:
    """Places files so the Markdown can link them relatively; copies those outside ``root``."""

    def __init__(self, root: Path, assets_dir: str | Path) -> None:
        self.root, self.dir = root.resolve(), root / assets_dir
        self._names: dict[str, str] = {}  # copied file name -> content hash, to avoid clashes

    def link(self, src: str | Path, data: bytes) -> str:
        src = Path(src).resolve()
        if src.is_relative_to(self.root):
            rel = src.relative_to(self.root)
        else:
            digest = hashlib.sha256(data).hexdigest()
            name, k = src.name, 1
            while self._names.get(name, digest) != digest:  # same name, different file: add a suffix
                k += 1
                name = f"{src.stem}-{k}{src.suffix}"
            self._names[name] = digest
            dest = self.dir / name
            if not (dest.is_file() and dest.read_bytes() == data):
                _atomic_write(dest, data)
            rel = Path(os.path.relpath(dest.resolve(), self.root))
        return urllib.parse.quote(rel.as_posix())


def _table_md(table: Table, number: int) -> list[str]:
    header, numeric = table.header(), table.numeric_columns()
    out = [f"**Table {number}.** {_md_escape(table.caption)}".rstrip(), ""]
    if not header:
        return out + ["*(empty table)*", ""]
    out.append("| " + " | ".join(_md_cell(c) for c in header) + " |")
    out.append("|" + "|".join("---:" if c in numeric else "---" for c in header) + "|")
    out += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in table.cells()]
    return out + [""]
