"""Retrieval-augmented generation: the context-side memory baseline.

Knowledge lives in a persistent :class:`DocumentStore` maintained with Mem0-style ADD / UPDATE /
DELETE operations (Chhikara et al. 2025); a retriever -- Okapi BM25 (Robertson & Zaragoza 2009)
or dense Sentence-BERT embeddings (Reimers & Gurevych 2019) -- picks documents for a query and
:func:`assemble_prompt` puts them before it, as in RAG (Lewis et al. 2020)::

    store = build_fact_store(facts, "runs/rag/store.json")   # counterfactual facts as sentences
    retriever = get_retriever("bm25", store)
    hits = retriever.search(fact.prompt, k=1)
    prompt = assemble_prompt(fact.prompt, hits)              # "<doc>\\n\\n<query>"
    store.update("fact-3", "The Eiffel Tower is located in the city of Paris.")  # retriever follows

Importing this package loads no model; the dense embedder is loaded on its first search.
Modules: :mod:`.store`, :mod:`.retrieve`, :mod:`.prompt`.
"""

from __future__ import annotations

from .context import ContextArtifact, ContextHandle
from .prompt import DEFAULT_TEMPLATE, assemble_prompt, build_fact_store, fact_documents
from .retrieve import BM25Retriever, DenseRetriever, Hit, Retriever, get_retriever, retrieval_recall, tokenize
from .store import FORMAT_VERSION, Document, DocumentNotFoundError, DocumentStore, StoreFormatError

__all__ = ["ContextArtifact", "ContextHandle", "DEFAULT_TEMPLATE", "assemble_prompt", "build_fact_store", "fact_documents", "BM25Retriever",
           "DenseRetriever", "Hit", "Retriever", "get_retriever", "retrieval_recall", "tokenize", "FORMAT_VERSION",
           "Document", "DocumentNotFoundError", "DocumentStore", "StoreFormatError"]
