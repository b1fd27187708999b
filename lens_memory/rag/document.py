"""Documents of the RAG store: the :class:`Document` record, its text and metadata checks, and the store's errors.

Shared by :mod:`lens_memory.rag.store` (the SQLite :class:`~lens_memory.rag.store.DocumentStore`) and
:mod:`lens_memory.rag.store_legacy` (the JSON stores of earlier versions). ``FORMAT_NAME`` is the
store's format name in both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..errors import ArtifactMismatchError, LensMemoryError
from ..io import to_jsonable

__all__ = ["Document", "DocumentNotFoundError", "StoreFormatError", "FORMAT_NAME"]

FORMAT_NAME = "lens_memory.rag.DocumentStore"


class DocumentNotFoundError(LensMemoryError, KeyError):
    """No document with the given id is in the store."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class StoreFormatError(ArtifactMismatchError):
    """A store file is corrupt, is not a document store, or has an unsupported format version."""


@dataclass(frozen=True)
class Document:
    """One stored document. ``version`` counts its ADD (1) and every UPDATE since."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    created: str = ""
    updated: str = ""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _check_text(text: Any, doc_id: str | None) -> str:
    if not isinstance(text, str) or not text.strip():
        where = f" for document {doc_id!r}" if doc_id is not None else ""
        raise LensMemoryError(f"document text{where} must be a non-empty string, got {text!r}")
    return text


def _check_metadata(metadata: Any, doc_id: str | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise LensMemoryError(f"metadata of document {doc_id!r} must be a dict, got {metadata!r}")
    clean = to_jsonable(metadata)
    try:
        json.dumps(clean)
    except (TypeError, ValueError) as exc:
        raise LensMemoryError(f"metadata of document {doc_id!r} is not JSON-serialisable: "
                              f"{metadata!r} ({exc})") from None
    return clean
