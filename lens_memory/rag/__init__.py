"""Retrieval-augmented generation: the context-side memory baseline.

Knowledge lives in a persistent :class:`DocumentStore` (an SQLite file that several handles and
processes may change at once) maintained with Mem0-style ADD / UPDATE / DELETE operations (Chhikara
et al. 2025); a retriever -- Okapi BM25 (Robertson & Zaragoza 2009) or dense Sentence-BERT
embeddings (Reimers & Gurevych 2019) -- picks documents for a query and :func:`assemble_prompt`
puts them before it, as in RAG (Lewis et al. 2020)::

    store = build_fact_store(facts, "runs/rag/store.sqlite") # counterfactual facts as sentences
    retriever = get_retriever("bm25", store)
    hits = retriever.search(fact.prompt, k=1)
    prompt = assemble_prompt(fact.prompt, hits)              # "<doc>\\n\\n<query>"
    store.update("fact-3", "The Eiffel Tower is located in the city of Paris.")  # retriever follows

Importing this package loads no model; the dense embedder is loaded on its first search.
Modules: :mod:`.store` (with :mod:`.document` and :mod:`.store_legacy`), :mod:`.retrieve`, :mod:`.prompt`,
:mod:`.context`.

Fidelity. Reference code: none was used. Lewis et al. (2020) fine-tune a DPR query encoder and a BART
generator jointly and marginalise over the top-k passages. Deviations, and why:

* **In-context reading with a frozen model.** Nothing is trained. Retrieved text is put before the query
  (:class:`ContextArtifact`) and read by the unchanged base model, the way the KV memory and the weight
  edits use the unchanged model too.
* **Retrievers.** BM25 (k1 = 1.5, b = 0.75, scored by the ``bm25s`` library) and all-MiniLM-L6-v2
  embeddings instead of DPR, because both run offline. BM25 uses the Lucene IDF
  ln((N - df + 0.5) / (df + 0.5) + 1), which stays positive for terms in more than half the documents,
  with the Okapi term-frequency part f (k1 + 1) / (f + k1 (1 - b + b |D| / avgdl)) (``bm25s``
  ``method="atire", idf_method="lucene"``), not the Robertson-Sparck Jones IDF without the ``+ 1``.
* **Oracle documents in the knowledge comparison.** When efficacy / paraphrase / neighbourhood are
  measured, each fact gets its own document (``ContextArtifact([doc])``, no retrieval). The comparison
  with KV memories and edits is about *reading* a fact, not finding it. Retrieval is measured apart, as
  recall@k (:func:`retrieval_recall`).
* **Template.** :data:`DEFAULT_TEMPLATE` puts ``"\\n\\n"`` between document and query; on Gemma 3 270M that
  is one token (id 108). A dense KV memory of the same document reads ``BOS + document + query`` with no
  separator, so the default RAG prompt is one token longer. Measured on 30 known DEV facts
  (``sample_known_facts``), each with its own document, efficacy / paraphrase / neighbourhood success:
  default RAG 1.00 / 0.68 / 0.91; RAG with ``template="{context}{query}"`` 0.93 / 0.65 / 0.90, the same as
  the dense memory, which gives the same logits to 3.2e-5. On these facts the separator accounts for all
  of the gap between RAG and the dense memory.
* **Store operations.** :class:`DocumentStore` offers Mem0's ADD / UPDATE / DELETE as explicit calls;
  Mem0 decides which one to apply with an LLM, which is not done here.
"""

from __future__ import annotations

from .context import ContextArtifact, ContextHandle
from .prompt import DEFAULT_TEMPLATE, assemble_prompt, build_fact_store, fact_documents
from .retrieve import BM25Retriever, DenseRetriever, Hit, Retriever, get_retriever, retrieval_recall, tokenize
from .store import FORMAT_VERSION, Document, DocumentNotFoundError, DocumentStore, StoreFormatError

__all__ = ["ContextArtifact", "ContextHandle", "DEFAULT_TEMPLATE", "assemble_prompt", "build_fact_store", "fact_documents", "BM25Retriever",
           "DenseRetriever", "Hit", "Retriever", "get_retriever", "retrieval_recall", "tokenize", "FORMAT_VERSION",
           "Document", "DocumentNotFoundError", "DocumentStore", "StoreFormatError"]
