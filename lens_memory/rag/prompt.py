"""Putting retrieved documents in context, and counterfactual facts as documents.

RAG (Lewis et al. 2020, "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks")
conditions generation on retrieved passages. Here the model is a small *base* model, so there is
no chat template: :data:`DEFAULT_TEMPLATE` puts each retrieved text on its own line, then a blank
line, then the query, e.g.::

    Eiffel Tower is located in Rome.

    The Eiffel Tower is located in the city of

The blank line is one extra token (``"\\n\\n"``, id 108 on Gemma 3 270M) that a KV memory of the same
document does not read. ``template="{context}{query}"`` gives exactly the memory's token sequence;
:mod:`lens_memory.rag` records the measured effect of the separator.

:func:`fact_documents` writes counterfactual :class:`~lens_memory.facts.Fact` s as such reference
sentences (``template.format(subject) + " " + target_new + "."``), so that retrieval is the
in-context counterpart of editing the weights with ROME/MEMIT; :func:`build_fact_store` puts
them in a :class:`~lens_memory.rag.store.DocumentStore`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from ..errors import FactFormatError, LensMemoryError
from ..facts import Fact
from .retrieve import Hit
from .store import Document, DocumentStore

__all__ = ["DEFAULT_TEMPLATE", "assemble_prompt", "fact_documents", "build_fact_store"]

#: ``{context}`` is the retrieved texts joined by newlines; ``{query}`` is the query.
DEFAULT_TEMPLATE = "{context}\n\n{query}"


def assemble_prompt(query: str, hits_or_texts: Sequence[Hit | Document | str], template: str = DEFAULT_TEMPLATE) -> str:
    """``template`` filled with the retrieved texts (one per line, in the given order) and the query.

    With no documents the query is returned unchanged (the no-retrieval baseline).
    """
    if not isinstance(query, str) or not query.strip():
        raise LensMemoryError(f"query must be a non-empty string, got {query!r}")
    if "{context}" not in template or "{query}" not in template:
        raise LensMemoryError(f"prompt template must contain '{{context}}' and '{{query}}', got {template!r}")
    texts = []
    for h in hits_or_texts:
        t = h if isinstance(h, str) else getattr(h, "text", None)
        if not isinstance(t, str) or not t.strip():
            raise LensMemoryError(f"cannot put {h!r} in context: expected a Hit, Document or non-empty string")
        texts.append(t.strip())
    if not texts:
        return query
    try:
        return template.format(context="\n".join(texts), query=query)
    except (KeyError, IndexError, ValueError) as exc:
        raise LensMemoryError(f"bad prompt template {template!r}: {exc!r} "
                              "(write literal braces as '{{' and '}}')") from None


def fact_documents(facts: Iterable[Fact]) -> list[tuple[str, str]]:
    """``(id, text)`` per fact: id ``fact-<case_id>`` (or ``fact-<index>``), text states ``target_new``."""
    docs = []
    for index, fact in enumerate(facts):
        if fact.target_new is None:
            name = f"fact {fact.case_id!r}" if fact.case_id is not None else f"fact {index} about {fact.subject!r}"
            raise FactFormatError(f"{name} has no target_new, so it cannot be written as a counterfactual document")
        ident = fact.case_id if fact.case_id is not None else index
        docs.append((f"fact-{ident}", f"{fact.template.format(fact.subject)} {fact.target_new}."))
    return docs


def build_fact_store(facts: Sequence[Fact], path: str | Path | None = None) -> DocumentStore:
    """A store (at ``path``, or in memory) holding :func:`fact_documents`, with the fact fields as metadata.

    Added in one write; an id already in an existing store at ``path`` is refused.
    """
    facts = list(facts)
    docs = fact_documents(facts)
    store = DocumentStore(path)
    metas = [{"subject": f.subject, "relation_id": f.relation_id, "case_id": f.case_id,
              "target_true": f.target_true, "target_new": f.target_new, "prompt": f.prompt} for f in facts]
    store.add_many([t for _, t in docs], [i for i, _ in docs], metas)
    return store
