"""Helpers both report writers share: paragraph markup (bullets, `code` spans), JSON scalars, figure files, atomic writes.

Used by :mod:`lens_memory.report.render` and its format parts (:mod:`~lens_memory.report.html_parts`,
:mod:`~lens_memory.report.markdown_parts`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from ..io import write_bytes

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
