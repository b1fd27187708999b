"""The parts of the HTML report page: stylesheet, Content-Security-Policy, escaping, anchors, provenance and tables.

:func:`lens_memory.report.render.render_html` assembles the page from them.
"""

from __future__ import annotations

import html
import re
from typing import Any

from .document import Table
from .render_common import _BOLD, _inline, _json_scalar

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
