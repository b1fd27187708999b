"""The one-time import of earlier versions' JSON document stores into the SQLite store.

Earlier versions of :class:`~lens_memory.rag.store.DocumentStore` kept a store as one JSON file (format
version 1: ``x.json``, or ``dir/store.json`` for a directory). When the SQLite file does not exist yet
and such a JSON store does, :func:`_read_legacy_json` reads and checks all of it (documents, history,
counters) and the store writes it into the new SQLite file. The JSON file is only read, never changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import LensMemoryError
from .document import FORMAT_NAME, Document, StoreFormatError, _check_text

__all__ = ["LEGACY_FILENAME", "LEGACY_JSON_VERSION"]

LEGACY_FILENAME = "store.json"  # a directory's store in earlier versions
LEGACY_JSON_VERSION = 1


def _read_legacy_json(p: Path) -> dict[str, Any]:
    """Read and check a JSON store of format version 1 (earlier lens_memory); the file is only read."""
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreFormatError(f"document store {p} is corrupt: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise StoreFormatError(f"{p} is not a lens_memory document store (no 'format': {FORMAT_NAME!r})")
    if data.get("version") != LEGACY_JSON_VERSION:
        raise StoreFormatError(f"JSON document store {p} has format version {data.get('version')!r}; "
                               f"this lens_memory imports JSON stores of version {LEGACY_JSON_VERSION}")
    try:
        docs: dict[str, Document] = {}
        for d in data["documents"]:
            doc = Document(*(d[k] for k in ("id", "text", "metadata", "version", "created", "updated")))
            if not isinstance(doc.id, str) or not doc.id or doc.id in docs:
                raise ValueError(f"bad or duplicate document id {doc.id!r}")
            if not isinstance(doc.metadata, dict) or not isinstance(doc.version, int):
                raise ValueError(f"bad metadata or version of document {doc.id!r}")
            docs[doc.id] = doc
            _check_text(doc.text, doc.id)
        history = [{k: h[k] for k in ("op", "id", "time", "version")} for h in data["history"]]
        next_auto, version = int(data["next_auto_id"]), int(data["store_version"])
    except (KeyError, TypeError, ValueError, LensMemoryError) as exc:
        raise StoreFormatError(f"document store {p} is corrupt ({type(exc).__name__}: {exc})") from None
    return {"documents": list(docs.values()), "history": history, "next_auto_id": next_auto, "store_version": version}
