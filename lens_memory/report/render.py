"""Render a report description as one self-contained HTML file and as GitHub-flavoured Markdown.

A report is plain data -- :class:`Report` holds :class:`Section` objects, which hold paragraphs,
:class:`Figure` objects (PNG files), :class:`Table` objects and subsections -- plus a provenance
dictionary (versions, configs, hashes) printed at the end.

* :func:`render_html` writes ONE file that needs nothing else: every PNG is embedded as a
  ``data:image/png;base64`` URI, the CSS is inline, there is no JavaScript, no web font and no
  network access (a Content-Security-Policy forbids any other resource). The page has a table of
  contents with anchors, numbered figures and tables, and escapes every piece of text.
* :func:`render_markdown` writes a ``.md`` file whose images are referenced by relative path;
  PNGs (and PDFs) outside the Markdown file's directory are copied into ``assets_dir`` next to it.

Paragraphs accept a light subset of Markdown: ``**bold**``, ```code``` and lines starting with
``"- "`` (bullets). A figure whose file is missing raises :class:`FileNotFoundError` naming it,
so a report never silently shows a broken image. Both writers are atomic: the text is written to
a temporary file in the target directory and renamed into place, so an interrupted render leaves
any previous file intact.

Only the standard library is needed; pandas is used only by :meth:`Table.from_dataframe`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
import numbers
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..io import write_bytes

__all__ = ["Figure", "Table", "Section", "Report", "render_html", "render_markdown", "MISSING"]

logger = logging.getLogger(__name__)

MISSING = "—"
"""How a missing table value (absent key, ``None``, NaN) is shown."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` atomically (temporary file + rename, readable mode)."""
    write_bytes(path, data)


def _read_png(path: str | Path) -> bytes:
    """The bytes of a PNG file; a clear error if it is missing or is not a PNG."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report figure not found: {path}")
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError(f"report figure is not a PNG file: {path}")
    return data


def _check_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report {what} not found: {path}")
    return path


def _walk(sections: Sequence[Section], level: int = 2) -> Iterator[tuple[Section, int]]:
    """Every section depth-first with its heading level (top-level sections are ``<h2>``)."""
    for s in sections:
        yield s, level
        yield from _walk(s.subsections, min(level + 1, 6))


def _blocks(paragraph: str) -> Iterator[tuple[str, list[str]]]:
    """Split a paragraph into ``("p", lines)`` and ``("ul", items)`` blocks."""
    kind, lines = None, []
    for line in paragraph.splitlines():
        if not line.strip():
            continue
        k = "ul" if line.lstrip().startswith("- ") else "p"
        text = line.lstrip()[2:] if k == "ul" else line.strip()
        if k != kind and lines:
            yield kind, lines
            lines = []
        kind = k
        lines.append(text)
    if lines:
        yield kind, lines


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def _inline(text: str, code: Callable[[str], str], plain: Callable[[str], str]) -> str:
    """Apply ``code`` to `code` spans and ``plain`` to the text between them."""
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out += [plain(text[pos:m.start()]), code(m.group(1))]
        pos = m.end()
    out.append(plain(text[pos:]))
    return "".join(out)


def _json_scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: #1f2328;
       font: 16px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 2rem 2.5rem 4rem; background: #fff;
       min-height: 100vh; box-shadow: 0 0 12px rgba(0,0,0,.06); }
h1 { font-size: 2rem; margin: 0 0 .25rem; line-height: 1.2; }
.subtitle { color: #57606a; font-size: 1.15rem; margin: 0 0 1.5rem; }
h2 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; margin-top: 2.5rem; }
h3, h4, h5, h6 { margin-top: 1.8rem; }
a { color: #0969da; text-decoration: none; } a:hover { text-decoration: underline; }
code { font: .88em/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
       background: #f0f2f4; padding: .1em .35em; border-radius: 4px; }
nav.toc { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: .75rem 1.25rem; }
nav.toc > strong { display: block; margin-bottom: .25rem; }
nav.toc ul { margin: .15rem 0; padding-left: 1.25rem; }
figure { margin: 1.5rem 0; text-align: center; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4e8; }
figcaption, caption { color: #444c56; font-size: .92rem; margin-top: .4rem; text-align: left; }
caption { caption-side: top; margin-bottom: .4rem; }
.table-wrap { overflow-x: auto; margin: 1.5rem 0; }
table { border-collapse: collapse; font-size: .92rem; min-width: 40%; }
th, td { border: 1px solid #d0d7de; padding: .35rem .65rem; text-align: left; vertical-align: top; }
th { background: #eef1f4; }
tbody tr:nth-child(even) { background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.prov { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1.25rem; margin: .25rem 0; }
dl.prov dt { font-weight: 600; }
dl.prov dd { margin: 0; word-break: break-word; }
dl.prov ul { margin: .1rem 0; padding-left: 1.25rem; }
@media (max-width: 640px) { main { padding: 1rem; } }
@media print { body { background: #fff; } main { box-shadow: none; } }
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _inline_html(text: str) -> str:
    return _inline(text, code=lambda c: f"<code>{_e(c)}</code>",
                   plain=lambda t: _BOLD.sub(r"<strong>\1</strong>", _e(t)))


class _Anchors:
    """Unique, readable ``id`` values derived from titles."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def __call__(self, title: str) -> str:
        base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
        n = self._seen.get(base, 0)
        self._seen[base] = n + 1
        return base if n == 0 else f"{base}-{n}"


def _prov_html(value: Any) -> str:
    if isinstance(value, dict):
        items = "".join(f"<dt>{_e(k)}</dt><dd>{_prov_html(v)}</dd>" for k, v in value.items())
        return f'<dl class="prov">{items}</dl>' if value else "<em>(empty)</em>"
    if isinstance(value, (list, tuple)):
        if value and all(not isinstance(v, (dict, list, tuple)) for v in value):
            return ", ".join(f"<code>{_e(_json_scalar(v))}</code>" for v in value)
        return "<ul>" + "".join(f"<li>{_prov_html(v)}</li>" for v in value) + "</ul>" if value else "[]"
    return f"<code>{_e(_json_scalar(value))}</code>"


def render_html(report: Report, path: str | Path) -> Path:
    """Write ``report`` as one self-contained HTML file at ``path`` (atomically); return the path."""
    path = Path(path)
    anchors = _Anchors()
    ids = {id(s): anchors(s.title) for s, _ in _walk(report.sections)}
    prov_id = anchors("provenance")
    n_fig = n_tab = 0
    out: list[str] = []

    def toc_items(sections: Sequence[Section]) -> str:
        return "".join(f'<li><a href="#{ids[id(s)]}">{_e(s.title)}</a>'
                       + (f"<ul>{toc_items(s.subsections)}</ul>" if s.subsections else "") + "</li>"
                       for s in sections)

    def section(s: Section, level: int) -> None:
        nonlocal n_fig, n_tab
        out.append(f'<section><h{level} id="{ids[id(s)]}">{_e(s.title)}</h{level}>')
        for paragraph in s.text:
            for kind, lines in _blocks(paragraph):
                if kind == "ul":
                    out.append("<ul>" + "".join(f"<li>{_inline_html(x)}</li>" for x in lines) + "</ul>")
                else:
                    out.append(f"<p>{_inline_html(' '.join(lines))}</p>")
        for fig in s.figures:
            n_fig += 1
            data = base64.b64encode(_read_png(fig.path)).decode("ascii")
            pdf = ""
            if fig.pdf is not None:
                rel = os.path.relpath(_check_file(fig.pdf, "PDF").resolve(), path.parent.resolve())
                pdf = f' (<a href="{_e(urllib.parse.quote(Path(rel).as_posix()))}">PDF</a>)'
            out.append(f'<figure id="{anchors(f"figure-{n_fig}")}"><img src="data:image/png;base64,{data}" '
                       f'alt="{_e(re.sub(r"[*`]", "", fig.caption) or f"Figure {n_fig}")}">'
                       f"<figcaption><strong>Figure {n_fig}.</strong> {_inline_html(fig.caption)}{pdf}"
                       "</figcaption></figure>")
        for table in s.tables:
            n_tab += 1
            out.append(_table_html(table, n_tab, anchors(f"table-{n_tab}")))
        for sub in s.subsections:
            section(sub, min(level + 1, 6))
        out.append("</section>")

    for s in report.sections:
        section(s, 2)
    toc = f'<ul>{toc_items(report.sections)}<li><a href="#{prov_id}">Provenance</a></li></ul>'
    doc = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(report.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<header><h1>{_e(report.title)}</h1>"
        + (f'<p class="subtitle">{_inline_html(report.subtitle)}</p>' if report.subtitle else "")
        + f'</header>\n<nav class="toc"><strong>Contents</strong>{toc}</nav>\n'
        + "\n".join(out)
        + f'\n<section><h2 id="{prov_id}">Provenance</h2>{_prov_html(report.provenance)}</section>\n'
        "</main>\n</body>\n</html>\n"
    )
    _atomic_write(path, doc.encode("utf-8"))
    logger.info("wrote HTML report %s (%d figures, %d tables, %.1f kB)", path, n_fig, n_tab, len(doc) / 1e3)
    return path


def _table_html(table: Table, number: int, anchor: str) -> str:
    header, numeric = table.header(), table.numeric_columns()
    if not header:
        return f"<p><strong>Table {number}.</strong> {_inline_html(table.caption)} <em>(empty table)</em></p>"

    def cls(c: str) -> str:
        return ' class="num"' if c in numeric else ""

    head = "".join(f"<th{cls(c)}>{_e(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td{cls(c)}>{_e(v)}</td>" for c, v in zip(header, row)) + "</tr>"
                   for row in table.cells())
    return (f'<div class="table-wrap"><table id="{anchor}"><caption><strong>Table {number}.</strong> '
            f"{_inline_html(table.caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            "</table></div>")


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


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


def render_markdown(report: Report, path: str | Path, assets_dir: str | Path = "figures") -> Path:
    """Write ``report`` as GitHub-flavoured Markdown at ``path`` (atomically); return the path.

    Figures (and their PDFs) already under ``path.parent`` are linked where they are; the others
    are copied into ``path.parent / assets_dir`` first.
    """
    path = Path(path)
    assets = _Assets(path.parent, assets_dir)
    seen: dict[str, int] = {}
    anchors = {id(s): _gh_anchor(s.title, seen) for s, _ in _walk(report.sections)}
    prov_anchor = _gh_anchor("Provenance", seen)
    n_fig = n_tab = 0
    out = [f"# {_md_escape(report.title)}", ""]
    if report.subtitle:
        out += [f"*{_md_escape(report.subtitle)}*", ""]
    out += ["## Contents", ""]
    for s, level in _walk(report.sections):
        label = _md_escape(s.title).replace("[", "\\[").replace("]", "\\]")
        out.append(f"{'  ' * (level - 2)}- [{label}](#{anchors[id(s)]})")
    out += [f"- [Provenance](#{prov_anchor})", ""]

    for s, level in _walk(report.sections):
        out += [f"{'#' * level} {_md_escape(s.title)}", ""]
        for paragraph in s.text:
            for kind, lines in _blocks(paragraph):
                out += ([f"- {_md_escape(x)}" for x in lines] if kind == "ul" else [_md_escape(" ".join(lines))])
                out.append("")
        for fig in s.figures:
            n_fig += 1
            src = assets.link(fig.path, _read_png(fig.path))
            alt = re.sub(r"[\[\]\n]", " ", fig.caption or f"Figure {n_fig}")
            caption = f"*Figure {n_fig}.* {_md_escape(fig.caption)}".rstrip()
            if fig.pdf is not None:
                pdf = _check_file(fig.pdf, "PDF")
                caption += f" ([PDF]({assets.link(pdf, pdf.read_bytes())}))"
            out += [f"![{_md_escape(alt)}]({src})", "", caption, ""]
        for table in s.tables:
            n_tab += 1
            out += _table_md(table, n_tab)

    prov = json.dumps(report.provenance, indent=2, default=str, ensure_ascii=False)
    fence = _fence(prov)
    out += ["## Provenance", "", f"{fence}json", prov, fence, ""]
    text = "\n".join(out)
    _atomic_write(path, text.encode("utf-8"))
    logger.info("wrote Markdown report %s (%d figures, %d tables)", path, n_fig, n_tab)
    return path


def _table_md(table: Table, number: int) -> list[str]:
    header, numeric = table.header(), table.numeric_columns()
    out = [f"**Table {number}.** {_md_escape(table.caption)}".rstrip(), ""]
    if not header:
        return out + ["*(empty table)*", ""]
    out.append("| " + " | ".join(_md_cell(c) for c in header) + " |")
    out.append("|" + "|".join("---:" if c in numeric else "---" for c in header) + "|")
    out += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in table.cells()]
    return out + [""]
