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

This module holds the two writers; the data model is in :mod:`lens_memory.report.document` (re-exported
here), the format parts in :mod:`~lens_memory.report.html_parts` and :mod:`~lens_memory.report.markdown_parts`,
the helpers they share in :mod:`~lens_memory.report.render_common`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import urllib.parse
from pathlib import Path
from typing import Sequence

from .document import MISSING, Figure, Report, Section, Table, _walk
from .html_parts import _CSP, _CSS, _Anchors, _e, _inline_html, _prov_html, _table_html
from .markdown_parts import _Assets, _fence, _gh_anchor, _md_escape, _table_md
from .render_common import _atomic_write, _blocks, _check_file, _read_png

__all__ = ["Figure", "Table", "Section", "Report", "render_html", "render_markdown", "MISSING"]

logger = logging.getLogger(__name__)


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
