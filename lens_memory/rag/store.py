"""A small persistent document store with Mem0-style ADD / UPDATE / DELETE operations, kept in SQLite.

Retrieval-augmented generation (Lewis et al. 2020, "Retrieval-Augmented Generation for
Knowledge-Intensive NLP Tasks") keeps knowledge outside the weights, in documents put into the
context at inference time. Memory layers such as Mem0 (Chhikara et al. 2025, "Mem0: Building
Production-Ready AI Agents with Scalable Long-Term Memory") maintain that external memory with
three operations -- ADD a memory, UPDATE it in place, DELETE it -- and keep their history.
:class:`DocumentStore` is that memory: documents with ids, text and JSON metadata, an event log
(:meth:`DocumentStore.history`) and a version counter that retrievers watch to re-index lazily.

Persistence is an embedded SQLite database (Python's :mod:`sqlite3`), one file with three tables:
``meta`` (format name and version, the store's version counter, the next automatic id),
``documents`` (in insertion order) and ``history`` (the event log). Where the file lives:

* ``DocumentStore()`` -- in memory (SQLite ``:memory:``), gone when the object is.
* ``DocumentStore("dir")`` for an existing directory -- the file ``dir/store.sqlite``.
* ``DocumentStore("x.json")`` -- the file ``x.sqlite`` next to it. Earlier versions kept the store as
  the JSON file ``x.json`` (``dir/store.json`` for a directory); when the SQLite file does not exist
  yet and such a JSON store does, all of it (documents, history, counters) is imported once into the
  new SQLite file. The JSON file is only read, never changed; later changes go to SQLite only.
* any other path -- used as the SQLite file as it is (``runs/facts.sqlite``, ``facts.db``).

:attr:`DocumentStore.path` is the SQLite file. Concurrency guarantees, which hold for several
handles on one file in one process as well as in several processes:

* Every mutation (``add``, ``add_many``, ``update``, ``delete``) is one ``BEGIN IMMEDIATE``
  transaction: it reads the committed state, changes the documents, appends its events and
  increments the version counter, all or nothing. SQLite's write lock serialises writers, so no
  change is lost; a writer that finds the lock held waits (busy timeout, ``timeout`` seconds).
* The database runs in WAL mode: readers never block the writer and always see the latest committed
  state, so a second handle sees the first handle's changes without reopening. The version counter
  is read from the database, so retrievers re-index after a change made through any handle.
* A crash never leaves a half-applied mutation: SQLite rolls an unfinished transaction back.

A file that is not a SQLite database, a SQLite database without this store's tables or with another
format version, and a corrupt JSON store to import all raise :class:`StoreFormatError` naming the
file, and leave it untouched (nothing is written before the checks pass).

The :class:`Document` record and the errors are in :mod:`lens_memory.rag.document`, the JSON import in
:mod:`lens_memory.rag.store_legacy`; both are re-exported here.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..cache import file_lock
from ..errors import LensMemoryError
from .document import (FORMAT_NAME, Document, DocumentNotFoundError, StoreFormatError, _check_metadata, _check_text,
                       _now)
from .store_legacy import LEGACY_FILENAME, LEGACY_JSON_VERSION, _read_legacy_json

__all__ = ["Document", "DocumentStore", "DocumentNotFoundError", "StoreFormatError", "FORMAT_VERSION",
           "FORMAT_NAME", "LEGACY_FILENAME", "LEGACY_JSON_VERSION"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 1 was the JSON file of earlier versions (imported, see the module docstring); 2 is SQLite
STORE_FILENAME = "store.sqlite"
_SQLITE_HEADER = b"SQLite format 3\x00"
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL);
CREATE TABLE documents (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL,
                        metadata TEXT NOT NULL, version INTEGER NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL);
CREATE TABLE history (seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, id TEXT NOT NULL,
                      time TEXT NOT NULL, version INTEGER NOT NULL);
CREATE INDEX history_by_id ON history (id);
"""
_DOC_COLUMNS = "id, text, metadata, version, created, updated"


def _row_to_doc(row: tuple) -> Document:
    return Document(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5])


def _resolve_path(path: str | Path) -> tuple[Path, Path | None]:
    """``(SQLite file, JSON store to import if that file is new or None)`` for a user-given path."""
    p = Path(path)
    if p.is_dir():
        return p / STORE_FILENAME, p / LEGACY_FILENAME
    if p.suffix.lower() == ".json":
        return p.with_suffix(".sqlite"), p
    return p, None


def _check_sqlite_header(db: Path) -> None:
    """Refuse a non-empty file that is not SQLite before SQLite opens (and possibly writes to) it."""
    if db.is_file() and db.stat().st_size > 0:  # SQLite itself leaves an empty file while creating one
        with open(db, "rb") as f:
            if f.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                raise StoreFormatError(f"document store {db} is not a SQLite database")


class DocumentStore:
    """Documents keyed by id, in insertion order; in a SQLite file at ``path`` or in memory if ``path`` is None.

    ``timeout`` is how many seconds a mutation waits for another handle's write lock before failing
    with :class:`sqlite3.OperationalError`. A handle may be shared between threads. :meth:`close`
    (or ``with DocumentStore(path) as store:``) releases the file; an unclosed handle is released
    when it is garbage-collected.
    """

    def __init__(self, path: str | Path | None = None, timeout: float = 30.0) -> None:
        self.path: Path | None = None
        self._lock = threading.RLock()
        if path is None:
            self._conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self._conn.executescript(_SCHEMA)
            self._init_meta(self._conn, None)
            return
        self.path, legacy = _resolve_path(path)
        _check_sqlite_header(self.path)
        legacy_data = None
        if legacy is not None and legacy.is_file() and (not self.path.exists() or self.path.stat().st_size == 0):
            legacy_data = _read_legacy_json(legacy)  # before the SQLite file is created
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            self._open(legacy, legacy_data)
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ opening
    def _schema_state(self) -> str:
        """``"ours"`` or ``"empty"``; :class:`StoreFormatError` for anything else."""
        try:
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables - {"sqlite_sequence"}:
                return "empty"
            if not {"meta", "documents", "history"} <= tables:
                raise StoreFormatError(f"{self.path} is a SQLite database but not a lens_memory document store "
                                       f"(tables {sorted(tables)})")
            meta = dict(self._conn.execute("SELECT key, value FROM meta WHERE key IN ('format', 'format_version')"))
        except sqlite3.DatabaseError as exc:
            raise StoreFormatError(f"document store {self.path} is corrupt or not a SQLite database ({exc})") from None
        if meta.get("format") != FORMAT_NAME:
            raise StoreFormatError(f"{self.path} is not a lens_memory document store (format {meta.get('format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise StoreFormatError(f"document store {self.path} has format version {meta.get('format_version')!r}; "
                                   f"this lens_memory reads version {FORMAT_VERSION}")
        return "ours"

    def _open(self, legacy: Path | None, legacy_data: dict[str, Any] | None) -> None:
        """Check the file, then (only if it holds no tables yet) create the schema, importing ``legacy_data``."""
        if self._schema_state() == "ours":
            self._conn.execute("PRAGMA journal_mode = WAL")  # already WAL unless an older writer changed it
            return
        if legacy_data is None and legacy is not None and legacy.is_file():
            legacy_data = _read_legacy_json(legacy)
        # Creation is serialised by a file lock: switching a fresh file to WAL ignores the busy timeout, so two
        # processes creating the same store at once failed with "database is locked" (6 processes: 2 of 90 opens).
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            if self._schema_state() == "ours":  # another process created it while we waited for the lock
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            self._conn.execute("PRAGMA journal_mode = WAL")  # persistent; cannot change inside a transaction
            with self._write() as c:
                # statement by statement: executescript() would COMMIT the transaction first
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    c.execute(statement)
                self._init_meta(c, legacy_data)
        if legacy_data is not None:
            log.info("imported %d documents from the JSON store %s into %s", len(legacy_data["documents"]),
                     legacy, self.path)
        else:
            log.info("created document store %s", self.path)

    @staticmethod
    def _init_meta(c: sqlite3.Connection, legacy: dict[str, Any] | None) -> None:
        legacy = legacy or {"documents": [], "history": [], "next_auto_id": 0, "store_version": 0}
        c.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                      [("format", FORMAT_NAME), ("format_version", FORMAT_VERSION),
                       ("store_version", legacy["store_version"]), ("next_auto_id", legacy["next_auto_id"])])
        c.executemany(f"INSERT INTO documents ({_DOC_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                      [(d.id, d.text, json.dumps(d.metadata), d.version, d.created, d.updated)
                       for d in legacy["documents"]])
        c.executemany("INSERT INTO history (op, id, time, version) VALUES (?, ?, ?, ?)",
                      [(h["op"], h["id"], h["time"], h["version"]) for h in legacy["history"]])

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed if the block succeeds, rolled back otherwise."""
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query in the block sees the same committed state."""
        with self._lock:
            c = self._conn
            if c.in_transaction:  # nested inside _write or _read
                yield c
                return
            c.execute("BEGIN")
            try:
                yield c
            finally:
                if c.in_transaction:
                    c.execute("COMMIT")

    def _fetch(self, c: sqlite3.Connection, doc_id: Any) -> Document:
        row = c.execute(f"SELECT {_DOC_COLUMNS} FROM documents WHERE id = ?", (doc_id,)).fetchone() \
            if isinstance(doc_id, str) else None
        if row is None:
            where = f" at {self.path}" if self.path else ""
            n = c.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
            raise DocumentNotFoundError(f"no document with id {doc_id!r} in the store{where} ({n} documents)")
        return _row_to_doc(row)

    @staticmethod
    def _exists(c: sqlite3.Connection, doc_id: str) -> bool:
        return c.execute("SELECT 1 FROM documents WHERE id = ?", (doc_id,)).fetchone() is not None

    @staticmethod
    def _meta(c: sqlite3.Connection, key: str) -> int:
        return int(c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    @staticmethod
    def _log_events(c: sqlite3.Connection, events: list[dict[str, Any]]) -> None:
        """Append ``events`` to the history and increment the version counter (inside a write transaction)."""
        c.executemany("INSERT INTO history (op, id, time, version) VALUES (:op, :id, :time, :version)", events)
        c.execute("UPDATE meta SET value = value + 1 WHERE key = 'store_version'")

    # ------------------------------------------------------------------ mutations
    def add(self, text: str, doc_id: str | None = None, metadata: dict[str, Any] | None = None) -> str:
        """ADD a document; returns its id (``doc-<n>`` if none given). Refuses a duplicate id or empty text."""
        return self.add_many([text], [doc_id], [metadata])[0]

    def add_many(self, texts: Iterable[str], ids: Iterable[str | None] | None = None,
                 metadatas: Iterable[dict[str, Any] | None] | None = None) -> list[str]:
        """ADD several documents in one transaction, all or none; returns their ids.

        Automatic ids are ``doc-<n>`` with ``n`` from a counter kept in the database, so an automatic
        id is never reused, not even after its document was deleted or by another handle.
        """
        texts = list(texts)
        ids = [None] * len(texts) if ids is None else list(ids)
        metas = [None] * len(texts) if metadatas is None else list(metadatas)
        if not len(texts) == len(ids) == len(metas):
            raise LensMemoryError(f"add_many: {len(texts)} texts, {len(ids)} ids and {len(metas)} metadatas "
                                  "differ in length")
        if not texts:
            return []
        now, events = _now(), []
        with self._write() as c:
            next_auto = self._meta(c, "next_auto_id")
            for text, doc_id, meta in zip(texts, ids, metas):
                _check_text(text, doc_id)
                if doc_id is None:
                    while self._exists(c, f"doc-{next_auto}"):
                        next_auto += 1
                    doc_id = f"doc-{next_auto}"
                    next_auto += 1
                elif not isinstance(doc_id, str) or not doc_id.strip():
                    raise LensMemoryError(f"document id must be a non-empty string, got {doc_id!r}")
                elif self._exists(c, doc_id):
                    raise LensMemoryError(f"document id {doc_id!r} already exists; use update() to change it")
                c.execute(f"INSERT INTO documents ({_DOC_COLUMNS}) VALUES (?, ?, ?, 1, ?, ?)",
                          (doc_id, text, json.dumps(_check_metadata(meta, doc_id)), now, now))
                events.append({"op": "ADD", "id": doc_id, "time": now, "version": 1})
            c.execute("UPDATE meta SET value = ? WHERE key = 'next_auto_id'", (next_auto,))
            self._log_events(c, events)
        return [e["id"] for e in events]

    def update(self, doc_id: str, text: str | None = None, metadata: dict[str, Any] | None = None) -> Document:
        """UPDATE a document's text and/or metadata (metadata is replaced, not merged); returns the new version."""
        with self._write() as c:
            old = self._fetch(c, doc_id)
            if text is None and metadata is None:
                raise LensMemoryError(f"update of document {doc_id!r}: give a new text and/or metadata")
            new_text = old.text if text is None else _check_text(text, doc_id)
            new_meta = old.metadata if metadata is None else _check_metadata(metadata, doc_id)
            now = _now()
            doc = Document(doc_id, new_text, new_meta, old.version + 1, old.created, now)
            c.execute("UPDATE documents SET text = ?, metadata = ?, version = ?, updated = ? WHERE id = ?",
                      (doc.text, json.dumps(doc.metadata), doc.version, now, doc_id))
            self._log_events(c, [{"op": "UPDATE", "id": doc_id, "time": now, "version": doc.version}])
        return doc

    def delete(self, doc_id: str) -> None:
        """DELETE a document. Its id stays in the history; an explicit id may be added again later."""
        with self._write() as c:
            old = self._fetch(c, doc_id)
            c.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
            self._log_events(c, [{"op": "DELETE", "id": doc_id, "time": _now(), "version": old.version}])

    # ------------------------------------------------------------------ reading
    @property
    def version(self) -> int:
        """The store's version counter, incremented by every committed mutation through any handle."""
        with self._read() as c:
            return self._meta(c, "store_version")

    def snapshot(self) -> tuple[int, list[Document]]:
        """``(version, documents in insertion order)`` read in one transaction, so the two agree."""
        with self._read() as c:
            version = self._meta(c, "store_version")
            rows = c.execute(f"SELECT {_DOC_COLUMNS} FROM documents ORDER BY seq").fetchall()
        return version, [_row_to_doc(r) for r in rows]

    def get(self, doc_id: str) -> Document:
        """The document with this id (a copy); :class:`DocumentNotFoundError` if there is none."""
        with self._read() as c:
            return self._fetch(c, doc_id)

    def history(self, doc_id: str | None = None) -> list[dict[str, Any]]:
        """The event log, oldest first: dicts with ``op`` (ADD/UPDATE/DELETE), ``id``, ``time``, ``version``."""
        query, args = "SELECT op, id, time, version FROM history", ()
        if doc_id is not None:
            query, args = query + " WHERE id = ?", (doc_id,)
        with self._read() as c:
            rows = c.execute(query + " ORDER BY seq", args).fetchall()
        return [{"op": op, "id": i, "time": t, "version": v} for op, i, t, v in rows]

    def ids(self) -> list[str]:
        return self._column("id")

    def texts(self) -> list[str]:
        return self._column("text")

    def _column(self, name: str) -> list[Any]:
        with self._read() as c:
            return [r[0] for r in c.execute(f"SELECT {name} FROM documents ORDER BY seq")]

    def __len__(self) -> int:
        with self._read() as c:
            return int(c.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def __iter__(self) -> Iterator[Document]:
        """Iterate over the documents (copies) in insertion order, as they were when iteration began."""
        return iter(self.snapshot()[1])

    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            return False
        with self._read() as c:
            return self._exists(c, doc_id)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release the database file. The handle cannot be used afterwards."""
        with self._lock:
            self._conn.close()

    def __del__(self) -> None:  # close quietly: Python >= 3.13 warns about connections left open
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()

    def __enter__(self) -> "DocumentStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "in memory"
        return f"DocumentStore({where}, {len(self)} documents, version {self.version})"
