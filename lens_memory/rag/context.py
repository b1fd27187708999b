"""Retrieved text in the prompt as an artifact: the context-side counterpart of an edit or a KV memory.

:class:`ContextArtifact` holds documents; ``with ctx.apply(model): ...`` makes every prompt the
model encodes through :meth:`LensModel.encode` (all of lens_memory's scoring, generation and
tracing) read ``template(documents, prompt)`` instead of ``prompt`` -- so the same evaluation
that measures a ROME edit or an attached KV memory measures RAG, without knowing which it is.
Token offsets stay relative to the original prompt (subject positions still resolve; context
tokens get negative offsets). Nothing else changes and leaving the block restores the model's
encoder exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts import Handle, load_artifact, require, save_artifact
from ..errors import LensMemoryError
from .prompt import DEFAULT_TEMPLATE, assemble_prompt

__all__ = ["ContextArtifact", "ContextHandle"]

KIND = "context"


@dataclass
class ContextArtifact:
    """Documents placed before every prompt (RAG).

    Attributes:
        documents: texts, in the order they appear in context.
        template: with ``{context}`` and ``{query}`` (see :func:`~lens_memory.rag.prompt.assemble_prompt`).
        ids: document ids (provenance).
    """

    documents: list[str]
    template: str = DEFAULT_TEMPLATE
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.documents:
            raise LensMemoryError("a context artifact needs at least one document")
        assemble_prompt("x", self.documents, self.template)  # validates documents and template

    def prompt(self, query: str) -> str:
        """The prompt the model reads for ``query``."""
        return assemble_prompt(query, self.documents, self.template)

    def n_tokens(self, lm: Any, query: str = "") -> int:
        """Context tokens the documents (and separator) add in front of ``query``."""
        q = query or "x"
        return len(lm.tokenizer(self.prompt(q), add_special_tokens=False)["input_ids"]) - \
            len(lm.tokenizer(q, add_special_tokens=False)["input_ids"])

    def nbytes(self) -> int:
        """Bytes of the stored documents (UTF-8). Their cost in the KV cache is :meth:`n_tokens` tokens."""
        return sum(len(d.encode("utf-8")) for d in self.documents)

    def apply(self, lm: Any) -> "ContextHandle":
        """Put the documents before every prompt ``lm`` encodes; a :class:`~lens_memory.artifacts.Handle`."""
        return ContextHandle(lm, self)

    def save(self, path: str | Path) -> Path:
        """Write ``context.json`` into directory ``path`` atomically."""
        return save_artifact(path, KIND, {"documents": self.documents, "template": self.template, "ids": self.ids})

    @classmethod
    def load(cls, path: str | Path) -> "ContextArtifact":
        meta, _ = load_artifact(path, KIND)
        require(meta, ("documents", "template"), path)
        return cls(list(meta["documents"]), meta["template"], list(meta.get("ids", [])))


class ContextHandle(Handle):
    """An applied :class:`ContextArtifact`; ``remove()`` or leaving ``with`` restores ``lm``'s encoder."""

    kind = "context"

    def __init__(self, lm: Any, ctx: ContextArtifact):
        if "_encode_with_offsets" in vars(lm):
            raise LensMemoryError("a context artifact is already applied to this model; remove it first")
        super().__init__(ctx, lm)
        self.ctx = ctx
        original = lm._encode_with_offsets  # the bound method of the class

        def encode_with_context(prompt: str) -> tuple[torch.Tensor, list[tuple[int, int]]]:
            full = ctx.prompt(prompt)
            shift = full.rindex(prompt)
            ids, offsets = original(full)
            return ids, [(a - shift, b - shift) if b > a else (a, b) for a, b in offsets]

        lm._encode_with_offsets = encode_with_context
        self._activate()

    def _undo(self) -> None:
        del self.lm._encode_with_offsets
