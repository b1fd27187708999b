"""Retrievers over a :class:`~lens_memory.rag.store.DocumentStore`: sparse BM25 and dense embeddings.

* :class:`BM25Retriever` -- Okapi BM25 (Robertson & Zaragoza 2009, "The Probabilistic Relevance
  Framework: BM25 and Beyond"), scored by the ``bm25s`` library (Lù 2024, "BM25S: Orders of magnitude
  faster lexical search via eager sparse scoring"); exact formula in its docstring.
* :class:`DenseRetriever` -- cosine similarity of L2-normalised Sentence-BERT embeddings
  (Reimers & Gurevych 2019, "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks"),
  by default all-MiniLM-L6-v2 shipped offline; the dense retriever of RAG (Lewis et al. 2020)
  in its simplest form.

Both re-index lazily: before each search they compare the store's version counter (kept in the
store's database, so it counts changes made through any handle, in any process) with the one they
indexed. When it moved they read the documents and the version together in one transaction
(:meth:`DocumentStore.snapshot`) and re-index: BM25 rebuilds its sparse index (cheap), the dense
retriever re-embeds only documents whose text changed. A search therefore reflects every ADD /
UPDATE / DELETE committed before it, and its hits carry the text that was scored.
:func:`retrieval_recall` measures recall@k over a query set. Ties are broken by store (insertion)
order; ranks are 1-based.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import LensMemoryError
from .store import DocumentStore

__all__ = ["Hit", "Retriever", "BM25Retriever", "DenseRetriever", "get_retriever", "retrieval_recall", "tokenize"]

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-cased ``\\w+`` word tokens."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Hit:
    """One retrieved document: its id, score (higher is better), 1-based rank and text."""

    doc_id: str
    score: float
    rank: int
    text: str


class Retriever:
    """Base class: keeps an index in sync with ``store`` and ranks its documents for a query."""

    def __init__(self, store: DocumentStore) -> None:
        if not isinstance(store, DocumentStore):
            raise LensMemoryError(f"a retriever needs a DocumentStore, got {type(store).__name__}")
        self.store = store
        self._indexed_version: int | None = None
        self._ids: list[str] = []
        self._texts: list[str] = []

    def _sync(self) -> None:
        """Re-index if the store changed since the last index (through this or any other handle)."""
        if self._indexed_version != self.store.version:
            version, documents = self.store.snapshot()  # documents and version from one transaction
            docs = {d.id: d.text for d in documents}
            self._reindex(docs)
            self._ids, self._texts = list(docs), list(docs.values())
            self._indexed_version = version

    def _reindex(self, docs: dict[str, str]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, query: str) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def scores(self, query: str) -> dict[str, float]:
        """The score of every document in the store for ``query``."""
        self._check_query(query)
        return dict(zip(self._ids, self._score(query).tolist()))

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The ``k`` best documents (fewer if the store holds fewer), best first."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise LensMemoryError(f"k must be a positive integer, got k={k!r}")
        self._check_query(query)
        s = self._score(query)
        order = np.argsort(-s, kind="stable")[: int(k)]
        return [Hit(self._ids[i], float(s[i]), r + 1, self._texts[i]) for r, i in enumerate(order)]

    def _check_query(self, query: str) -> None:
        """Refuse an empty query, bring the index up to date, and refuse an empty store."""
        if not isinstance(query, str) or not query.strip():
            raise LensMemoryError(f"query must be a non-empty string, got {query!r}")
        self._sync()
        if not self._ids:
            where = f" from {self.store.path}" if self.store.path else ""
            raise LensMemoryError(f"cannot retrieve{where}: the document store is empty")


class BM25Retriever(Retriever):
    r"""Okapi BM25 over ``\w+`` lower-cased tokens, scored by ``bm25s``.

    For a query with tokens :math:`q_1..q_n` (repeated tokens count repeatedly) and document D::

        score(D, Q) = sum_i IDF(q_i) * f(q_i, D) * (k1 + 1) / (f(q_i, D) + k1 * (1 - b + b * |D| / avgdl))
        IDF(q)      = ln((N - df(q) + 0.5) / (df(q) + 0.5) + 1)

    with f(q, D) the count of q in D, |D| its length in tokens, avgdl the mean length over the
    store, N the number of documents and df(q) the number containing q. The ``+ 1`` inside the
    log keeps IDF positive for terms in more than half the documents (the Lucene variant).

    ``bm25s`` names its variants after Kamphuis et al. (2020, "Which BM25 Do You Mean? A Large-Scale
    Reproducibility Study of Scoring Variants"); this one is ``method="atire"`` (the term-frequency
    part *with* the ``(k1 + 1)`` factor) with ``idf_method="lucene"``, computed in float64. ``bm25s``
    precomputes every (term, document) score into a sparse matrix when it indexes; a query sums
    the columns of its tokens.
    """

    def __init__(self, store: DocumentStore, k1: float = 1.5, b: float = 0.75) -> None:
        super().__init__(store)
        if not k1 >= 0 or not 0 <= b <= 1:
            raise LensMemoryError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1!r}, b={b!r}")
        self.k1, self.b = float(k1), float(b)
        self._index: Any = None  # a bm25s.BM25, or None while no document has a token
        self._df: Counter[str] = Counter()
        self._n_docs = 0

    def _reindex(self, docs: dict[str, str]) -> None:
        import bm25s  # imported on first use: it pulls in scipy

        corpus = [tokenize(text) for text in docs.values()]
        self._n_docs = len(corpus)
        self._df = Counter(term for tokens in corpus for term in set(tokens))
        self._index = None
        if self._df:  # bm25s cannot index a corpus without a single token
            self._index = bm25s.BM25(k1=self.k1, b=self.b, method="atire", idf_method="lucene", dtype="float64")
            self._index.index(corpus, show_progress=False)
        log.debug("BM25 index: %d documents, %d distinct terms", self._n_docs, len(self._df))

    def idf(self, term: str) -> float:
        """ln((N - df + 0.5) / (df + 0.5) + 1) for one (already lower-cased) term, as ``bm25s`` computes it."""
        self._sync()
        df = self._df.get(term, 0)
        return math.log((self._n_docs - df + 0.5) / (df + 0.5) + 1.0)

    def _score(self, query: str) -> np.ndarray:
        if self._index is None:
            return np.zeros(len(self._ids))
        token_ids = self._index.get_tokens_ids(tokenize(query))  # tokens not in the store are dropped
        return np.asarray(self._index.get_scores_from_ids(token_ids), dtype=np.float64)


class DenseRetriever(Retriever):
    """Cosine similarity between normalised sentence embeddings of the query and each document.

    ``model`` is a sentence-transformers name (``all-MiniLM-L6-v2`` works offline; other names
    need the network) or any object with a sentence-transformers-style ``encode(texts, ...)``.
    The embedder is loaded on the first search; document embeddings are cached per id and
    recomputed only for documents whose text changed.
    """

    def __init__(self, store: DocumentStore, model: str | Any = "all-MiniLM-L6-v2", batch_size: int = 64) -> None:
        super().__init__(store)
        self.model_name = model if isinstance(model, str) else type(model).__name__
        self._model = None if isinstance(model, str) else model
        self.batch_size = batch_size
        self._emb_cache: dict[str, tuple[str, np.ndarray]] = {}  # id -> (text, unit vector)
        self._matrix = np.zeros((0, 0), dtype=np.float32)

    @property
    def model(self) -> Any:
        if self._model is None:
            from ..embedder import sentence_embedder

            self._model = sentence_embedder(self.model_name)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings, one row per text (float32)."""
        e = np.asarray(self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                         normalize_embeddings=True, show_progress_bar=False), dtype=np.float32)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    def _reindex(self, docs: dict[str, str]) -> None:
        stale = [i for i, t in docs.items() if i not in self._emb_cache or self._emb_cache[i][0] != t]
        fresh = dict(zip(stale, self.embed([docs[i] for i in stale]))) if stale else {}
        log.debug("dense index: %d of %d documents embedded", len(stale), len(docs))
        self._emb_cache = {i: (t, fresh[i] if i in fresh else self._emb_cache[i][1]) for i, t in docs.items()}
        self._matrix = np.stack([self._emb_cache[i][1] for i in docs]) if docs else np.zeros((0, 0), np.float32)

    def _score(self, query: str) -> np.ndarray:
        return (self._matrix @ self.embed([query])[0]).astype(np.float64)


_KINDS = {"bm25": BM25Retriever, "dense": DenseRetriever}


def get_retriever(kind: str, store: DocumentStore, **kw: Any) -> Retriever:
    """``"bm25"`` -> :class:`BM25Retriever`, ``"dense"`` -> :class:`DenseRetriever`; ``kw`` go to its constructor."""
    if kind not in _KINDS:
        raise LensMemoryError(f"unknown retriever {kind!r} (known: {', '.join(map(repr, _KINDS))})")
    return _KINDS[kind](store, **kw)


def retrieval_recall(retriever: Retriever, queries: Sequence[str], relevant_ids: Sequence[str | Iterable[str]],
                     ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"recall@k": fraction of queries with a relevant id among the top k}`` for each k.

    ``relevant_ids[i]`` is one id or a set of ids for ``queries[i]``; a query counts as a hit at k
    when any of its relevant ids is in the top k (with one relevant id per query this is recall@k).
    """
    queries, relevant_ids = list(queries), list(relevant_ids)
    if len(queries) != len(relevant_ids):
        raise LensMemoryError(f"retrieval_recall: {len(queries)} queries but {len(relevant_ids)} relevant_ids")
    if not queries:
        raise LensMemoryError("retrieval_recall: no queries")
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise LensMemoryError(f"retrieval_recall: ks must be positive integers, got ks={ks!r}")
    hits = dict.fromkeys(ks, 0)
    for q, rel in zip(queries, relevant_ids):
        rel_set = {rel} if isinstance(rel, str) else set(rel)
        if not rel_set:
            raise LensMemoryError(f"retrieval_recall: query {q!r} has no relevant ids")
        ranked = [h.doc_id for h in retriever.search(q, max(ks))]
        for k in ks:
            hits[k] += bool(rel_set & set(ranked[:k]))
    return {f"recall@{k}": hits[k] / len(queries) for k in ks}
