"""Model families: where each decoder keeps its embedding, blocks, final norm and attention.

Everything in lens_memory that runs part of a model itself -- partial forward passes
(:mod:`lens_memory.stack`), KV memories (:mod:`lens_memory.memory.attach`) -- asks this table
instead of assuming one layout. A family is described by data, not code:

* ``base`` / ``layers`` / ``embed`` / ``norm``: attribute paths of the decoder, its blocks, the
  token embedding and the final norm (``model.layers``, ``transformer.h``, ``gpt_neox.layers``);
* ``attn``: the attention module inside a block, and ``cache_kwarg``: the name under which its
  forward takes the KV cache (``past_key_values``; GPT-J and GPT-NeoX say ``layer_past``);
* ``positions``: how the family encodes positions --
  ``"rotary"`` (a rotary module at ``base.rotary_emb`` hands ``(cos, sin)`` to every block;
  rotate-half layout, possibly *partial*: GPT-NeoX/Pythia rotate 25% of each head, Phi may too),
  ``"rotary_interleaved"`` (GPT-J: each attention computes its own sin/cos table and rotates
  *pairs* of dimensions ``(2i, 2i+1)`` of the first ``rotary_dim``), or
  ``"absolute"`` (GPT-2: a learned position embedding ``pos_embed`` is added to the token
  embedding; attention itself never sees positions).

Adding a family is one entry in :data:`FAMILIES` (or none: any model whose decoder has
``model.{embed_tokens, layers, norm, rotary_emb}`` -- the Llama layout shared by Mistral, Qwen 2/3,
Gemma 2/3, Phi-3, OLMo, OLMo 2 and most recent decoders -- is recognised without one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import LensMemoryError

__all__ = ["Family", "FAMILIES", "LLAMA_LAYOUT", "family_of", "UnsupportedArchitectureError"]


class UnsupportedArchitectureError(LensMemoryError):
    """The partial-forward engine does not know how to drive this architecture's blocks."""


@dataclass(frozen=True)
class Family:
    """Attribute paths and conventions of one decoder layout (see the module docstring)."""

    name: str
    base: str
    layers: str
    embed: str
    norm: str
    attn: str
    cache_kwarg: str
    positions: str  # "rotary" | "rotary_interleaved" | "absolute"
    pos_embed: str | None = None

    def __post_init__(self):
        if self.positions not in ("rotary", "rotary_interleaved", "absolute"):
            raise ValueError(f"Family.positions must be rotary, rotary_interleaved or absolute, got {self.positions!r}")
        if (self.positions == "absolute") != (self.pos_embed is not None):
            raise ValueError(f"family {self.name!r}: pos_embed is needed exactly when positions are absolute")

    def decoder(self, hf: Any) -> Any:
        """The decoder module (``hf.model``, ``hf.transformer``, ``hf.gpt_neox``)."""
        return getattr(hf, self.base)

    def blocks(self, hf: Any) -> Any:
        return getattr(self.decoder(hf), self.layers)

    def attention(self, hf: Any, layer: int) -> Any:
        """Block ``layer``'s attention module (the bridge's wrapper, so TL hooks fire)."""
        return getattr(self.blocks(hf)[layer], self.attn)

    def token_embedding(self, hf: Any) -> Any:
        return getattr(self.decoder(hf), self.embed)

    def position_embedding(self, hf: Any) -> Any | None:
        return getattr(self.decoder(hf), self.pos_embed) if self.pos_embed else None

    def rotary(self, hf: Any) -> Any | None:
        return getattr(self.decoder(hf), "rotary_emb") if self.positions == "rotary" else None


#: the Llama layout: Llama, Mistral, Mixtral, Qwen 2/3, Gemma 1/2/3, Phi-3, OLMo, OLMo 2, SmolLM ...
LLAMA_LAYOUT = Family("llama-layout", base="model", layers="layers", embed="embed_tokens", norm="norm",
                      attn="self_attn", cache_kwarg="past_key_values", positions="rotary")

#: families whose layout differs from the Llama one, keyed by ``config.model_type``
FAMILIES: dict[str, Family] = {
    "gpt2": Family("gpt2", base="transformer", layers="h", embed="wte", norm="ln_f", attn="attn",
                   cache_kwarg="past_key_values", positions="absolute", pos_embed="wpe"),
    "gptj": Family("gptj", base="transformer", layers="h", embed="wte", norm="ln_f", attn="attn",
                   cache_kwarg="layer_past", positions="rotary_interleaved"),
    "gpt_neox": Family("gpt_neox", base="gpt_neox", layers="layers", embed="embed_in", norm="final_layer_norm",
                       attn="attention", cache_kwarg="layer_past", positions="rotary"),
}


def family_of(hf: Any) -> Family:
    """The :class:`Family` of a Hugging Face causal LM, or :class:`UnsupportedArchitectureError`."""
    model_type = getattr(hf.config, "model_type", None)
    fam = FAMILIES.get(model_type)
    if fam is None:
        base = getattr(hf, "model", None)
        if base is not None and all(hasattr(base, a) for a in ("layers", "rotary_emb", "norm", "embed_tokens")):
            fam = LLAMA_LAYOUT
    if fam is None or not hasattr(hf, fam.base):
        known = ", ".join(sorted(FAMILIES))
        raise UnsupportedArchitectureError(
            f"lens_memory does not know the decoder layout of {type(hf).__name__} (model_type {model_type!r}); "
            f"known: the Llama layout (model.layers + model.rotary_emb) and {known} -- add an entry to "
            f"lens_memory.families.FAMILIES")
    return fam
