"""A small persistent document store with Mem0-style ADD / UPDATE / DELETE operations.

Retrieval-augmented generation (Lewis et al. 2020, "Retrieval-Augmented Generation for
Knowledge-Intensive NLP Tasks") keeps knowledge outside the weights, in documents put into the
context at inference time. Memory layers such as Mem0 (Chhikara et al. 2025, "Mem0: Building
Production-Ready AI Agents with Scalable Long-Term Memory") maintain that external memory with
three operations -- ADD a memory, UPDATE it in place, DELETE it -- and keep their history.
:class:`DocumentStore` is that memory: documents with ids, text and JSON metadata, an event log
(:meth:`DocumentStore.history`) and a version counter that retrievers watch to re-index lazily.

Persistence: ``DocumentStore(path)`` opens (or creates) one JSON file at ``path`` (if ``path`` is
an existing directory, the file ``path / "store.json"`` inside it). Every mutation rewrites the
file atomically (:func:`lens_memory.io.write_json`: temporary file + rename), so a crash never
leaves a half-written store and a new ``DocumentStore(path)`` sees exactly the committed state.
A corrupt file or an unknown format version raises :class:`StoreFormatError` naming the file and
leaves the file untouched. ``DocumentStore()`` keeps everything in memory. One writer at a time:
two processes mutating the same file concurrently will lose each other's changes.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import ArtifactMismatchError, LensMemoryError
from ..io import to_jsonable, write_json

__all__ = ["Document", "DocumentStore", "DocumentNotFoundError", "StoreFormatError", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

FORMAT_NAME = "lens_memory.rag.DocumentStore"
FORMAT_VERSION = 1
STORE_FILENAME = "store.json"


class DocumentNotFoundError(LensMemoryError, KeyError):
    """No document with the given id is in the store."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class StoreFormatError(ArtifactMismatchError):
    """A store file is corrupt or has an unsupported format version."""


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


class DocumentStore:
    """Documents keyed by id, in insertion order; on disk at ``path`` or in memory if ``path`` is None."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._docs: dict[str, Document] = {}
        self._history: list[dict[str, Any]] = []
        self._next_auto = 0
        self.version = 0  # bumped by every mutation; retrievers compare it to re-index
        self.path: Path | None = None
        if path is not None:
            p = Path(path)
            self.path = p / STORE_FILENAME if p.is_dir() else p
            if self.path.exists():
                self._load()
            else:
                self._save(self._docs, self._history, self._next_auto, self.version)
                log.info("created document store %s", self.path)

    # ------------------------------------------------------------------ persistence
    def _load(self) -> None:
        assert self.path is not None
        p = self.path
        try:
            data = json.loads(p.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreFormatError(f"document store {p} is corrupt: not valid UTF-8 JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise StoreFormatError(f"{p} is not a lens_memory document store (no 'format': {FORMAT_NAME!r})")
        if data.get("version") != FORMAT_VERSION:
            raise StoreFormatError(f"document store {p} has format version {data.get('version')!r}; "
                                   f"this lens_memory reads version {FORMAT_VERSION}")
        try:
            docs: dict[str, Document] = {}
            for d in data["documents"]:
                doc = Document(id=d["id"], text=d["text"], metadata=d["metadata"], version=d["version"],
                               created=d["created"], updated=d["updated"])
                if not isinstance(doc.id, str) or not doc.id or doc.id in docs:
                    raise ValueError(f"bad or duplicate document id {doc.id!r}")
                _check_text(doc.text, doc.id)
                if not isinstance(doc.metadata, dict) or not isinstance(doc.version, int):
                    raise ValueError(f"bad metadata or version of document {doc.id!r}")
                docs[doc.id] = doc
            history = [dict(h) for h in data["history"]]
            next_auto, version = int(data["next_auto_id"]), int(data["store_version"])
        except (KeyError, TypeError, ValueError, LensMemoryError) as exc:
            raise StoreFormatError(f"document store {p} is corrupt ({type(exc).__name__}: {exc})") from None
        self._docs, self._history, self._next_auto, self.version = docs, history, next_auto, version

    def _save(self, docs: dict[str, Document], history: list[dict[str, Any]], next_auto: int, version: int) -> None:
        if self.path is None:
            return
        write_json(self.path, {"format": FORMAT_NAME, "version": FORMAT_VERSION, "store_version": version,
                               "next_auto_id": next_auto, "documents": list(docs.values()), "history": history})

    def _commit(self, docs: dict[str, Document], events: list[dict[str, Any]], next_auto: int | None = None) -> None:
        """Write the new state first, then adopt it: a failed write leaves the store unchanged."""
        history = self._history + events
        next_auto = self._next_auto if next_auto is None else next_auto
        self._save(docs, history, next_auto, self.version + 1)
        self._docs, self._history, self._next_auto = docs, history, next_auto
        self.version += 1

    # ------------------------------------------------------------------ mutations
    def add(self, text: str, doc_id: str | None = None, metadata: dict[str, Any] | None = None) -> str:
        """ADD a document; returns its id (``doc-<n>`` if none given). Refuses a duplicate id or empty text."""
        return self.add_many([text], [doc_id], [metadata])[0]

    def add_many(self, texts: Iterable[str], ids: Iterable[str | None] | None = None,
                 metadatas: Iterable[dict[str, Any] | None] | None = None) -> list[str]:
        """ADD several documents in one write, all or none; returns their ids."""
        texts = list(texts)
        ids = [None] * len(texts) if ids is None else list(ids)
        metas = [None] * len(texts) if metadatas is None else list(metadatas)
        if not len(texts) == len(ids) == len(metas):
            raise LensMemoryError(f"add_many: {len(texts)} texts, {len(ids)} ids and {len(metas)} metadatas "
                                  "differ in length")
        docs, events, next_auto, now = dict(self._docs), [], self._next_auto, _now()
        for text, doc_id, meta in zip(texts, ids, metas):
            _check_text(text, doc_id)
            if doc_id is None:
                while f"doc-{next_auto}" in docs:
                    next_auto += 1
                doc_id = f"doc-{next_auto}"
                next_auto += 1
            elif not isinstance(doc_id, str) or not doc_id.strip():
                raise LensMemoryError(f"document id must be a non-empty string, got {doc_id!r}")
            elif doc_id in docs:
                raise LensMemoryError(f"document id {doc_id!r} already exists; use update() to change it")
            docs[doc_id] = Document(doc_id, text, _check_metadata(meta, doc_id), 1, now, now)
            events.append({"op": "ADD", "id": doc_id, "time": now, "version": 1})
        if events:
            self._commit(docs, events, next_auto)
        return [e["id"] for e in events]

    def update(self, doc_id: str, text: str | None = None, metadata: dict[str, Any] | None = None) -> Document:
        """UPDATE a document's text and/or metadata (metadata is replaced, not merged)."""
        old = self.get(doc_id)
        if text is None and metadata is None:
            raise LensMemoryError(f"update of document {doc_id!r}: give a new text and/or metadata")
        new_text = old.text if text is None else _check_text(text, doc_id)
        new_meta = old.metadata if metadata is None else _check_metadata(metadata, doc_id)
        now = _now()
        doc = Document(doc_id, new_text, copy.deepcopy(new_meta), old.version + 1, old.created, now)
        self._commit({**self._docs, doc_id: doc}, [{"op": "UPDATE", "id": doc_id, "time": now, "version": doc.version}])
        return doc

    def delete(self, doc_id: str) -> None:
        """DELETE a document."""
        old = self.get(doc_id)
        docs = {k: v for k, v in self._docs.items() if k != doc_id}
        self._commit(docs, [{"op": "DELETE", "id": doc_id, "time": _now(), "version": old.version}])

    # ------------------------------------------------------------------ reading
    def get(self, doc_id: str) -> Document:
        """The document with this id (a copy); :class:`DocumentNotFoundError` if there is none."""
        try:
            doc = self._docs[doc_id]
        except (KeyError, TypeError):
            where = f" at {self.path}" if self.path else ""
            raise DocumentNotFoundError(f"no document with id {doc_id!r} in the store{where} "
                                        f"({len(self)} documents)") from None
        return Document(doc.id, doc.text, copy.deepcopy(doc.metadata), doc.version, doc.created, doc.updated)

    def history(self, doc_id: str | None = None) -> list[dict[str, Any]]:
        """The event log, oldest first: dicts with ``op`` (ADD/UPDATE/DELETE), ``id``, ``time``, ``version``."""
        return [dict(h) for h in self._history if doc_id is None or h["id"] == doc_id]

    def ids(self) -> list[str]:
        return list(self._docs)

    def texts(self) -> list[str]:
        return [d.text for d in self._docs.values()]

    def __len__(self) -> int:
        return len(self._docs)

    def __iter__(self) -> Iterator[Document]:
        """Iterate over the documents (copies) in insertion order."""
        return (self.get(i) for i in list(self._docs))

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and doc_id in self._docs

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "in memory"
        return f"DocumentStore({where}, {len(self)} documents, version {self.version})"
