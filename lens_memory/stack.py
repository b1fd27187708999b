"""Partial forward passes: run any slice of layers over any slice of positions.

TransformerLens' bridge delegates the layer loop to Hugging Face, so it cannot start at a
layer (``start_at_layer`` is not implemented there) and ``stop_at_layer`` still pays for the
whole model. Causal tracing, key statistics, SAE training and KV memories all need cheaper
passes, so :class:`DecoderStack` drives the model's (bridge-wrapped) decoder blocks itself:

* ``run(resid, start, stop)`` runs blocks ``start..stop-1`` only -- no embedding, no logits;
* positions can start at ``pos0 > 0`` with the keys and values of positions ``< pos0`` given
  as a per-layer prefix, which is exact in a causal model (earlier positions cannot see later
  ones) and is how a restored token is recomputed without recomputing the tokens before it;
* ``logits(resid)`` applies the final norm and unembedding only to the rows asked for -- on
  Gemma's 262k vocabulary the unembedding costs more than the 18 blocks.

Because the blocks are the bridge's wrappers, every TransformerLens hook (``blocks.L.hook_mlp_out``,
``blocks.L.attn.hook_pattern`` ...) fires exactly as in ``bridge.run_with_hooks``.
Every family in :mod:`lens_memory.families` is driven the same way; the family only says where
the pieces are and how positions enter: learned absolute positions are added to the embedding at
``pos0 ..`` (GPT-2), rotary ``(cos, sin)`` at ``pos0 ..`` are handed to the block (Llama layout,
GPT-NeoX -- partial rotary included), or the block's attention rotates itself from ``position_ids``
(GPT-J, interleaved). Parallel attention + MLP blocks (GPT-J, GPT-NeoX), pre- and post-norm blocks,
sliding and global layers, grouped KV heads and soft-capping live inside the blocks, which are run
unchanged. Unknown layouts raise :class:`UnsupportedArchitectureError`.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from jaxtyping import Float, Int

from .families import UnsupportedArchitectureError, family_of

__all__ = ["DecoderStack", "UnsupportedArchitectureError", "KV", "attention_layer_types"]

KV = tuple[torch.Tensor, torch.Tensor]  # (keys, values), each [batch kv_head pos d_head], keys post-rotary


def attention_layer_types(cfg: Any) -> list[str]:
    """Each layer's attention type exactly as Hugging Face masks it.

    Configs with ``layer_types`` (Gemma 2/3, Qwen 2/3, OLMo 2 ...) list them. Older sliding-window
    configs without it (Mistral v0.1, Phi-3-mini-4k, Starcoder2) make Hugging Face build one
    sliding-window mask for *every* layer whenever ``sliding_window`` is set, so every layer is
    ``"sliding_attention"`` there.
    """
    n = int(cfg.num_hidden_layers)
    types = getattr(cfg, "layer_types", None)
    if types:
        return list(types)
    if getattr(cfg, "sliding_window", None):
        return ["sliding_attention"] * n
    return ["full_attention"] * n


class _LayerKV:
    """Duck-typed stand-in for a Hugging Face ``Cache``: prepends a prefix and/or records K, V."""

    def __init__(self, prefix: dict[int, KV] | None, record: dict[int, KV] | None):
        self.prefix = prefix
        self.record = record

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        # as Hugging Face's DynamicCache, whose concatenation promotes values to the keys' dtype: OLMo's float32
        # rotary makes bf16 keys float32, and TransformerLens' attention then needs float32 values too
        value_states = value_states.to(torch.promote_types(key_states.dtype, value_states.dtype))
        if self.record is not None:
            self.record[layer_idx] = (key_states, value_states)
        if self.prefix is not None and layer_idx in self.prefix:
            pk, pv = self.prefix[layer_idx]
            if pk.shape[0] != key_states.shape[0]:
                pk = pk.expand(key_states.shape[0], *pk.shape[1:])
                pv = pv.expand(value_states.shape[0], *pv.shape[1:])
            return torch.cat([pk, key_states], dim=2), torch.cat([pv, value_states], dim=2)
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:  # pragma: no cover - defensive
        return 0


class DecoderStack:
    """Layer-by-layer access to a :class:`~lens_memory.models.LensModel`'s decoder."""

    def __init__(self, lm: Any):
        hf = lm.hf
        fam = family_of(hf)
        cfg = hf.config
        self.lm = lm
        self.family = fam
        self.layers = fam.blocks(hf)
        self.norm = getattr(fam.decoder(hf), fam.norm)
        self.embed_tokens = fam.token_embedding(hf)
        self.pos_embed = fam.position_embedding(hf)
        self.rotary = fam.rotary(hf)
        self.n_layers = int(cfg.num_hidden_layers)
        self.layer_types = attention_layer_types(cfg)
        self.window = getattr(cfg, "sliding_window", None)
        rot = getattr(self.rotary, "original_component", None) or self.rotary
        self._rotary_typed = rot is not None and "layer_type" in inspect.signature(rot.forward).parameters
        self._pe_cache: dict[tuple, Any] = {}
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    # -- pieces ------------------------------------------------------------------------------
    def token_embed(self, ids: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos d_model"]:
        """Token embeddings only (``hook_embed``; Gemma's sqrt(d_model) scale included, no positions)."""
        return self.embed_tokens(ids)

    def embed(self, ids: Int[torch.Tensor, "batch pos"], pos0: int = 0) -> Float[torch.Tensor, "batch pos d_model"]:
        """The residual stream entering block 0 for tokens at positions ``pos0 ..`` (token embedding,
        plus the learned position embedding on absolute-position families such as GPT-2)."""
        h = self.embed_tokens(ids)
        if self.pos_embed is not None:
            pos = torch.arange(pos0, pos0 + ids.shape[1], device=ids.device)[None]
            h = h + self.pos_embed(pos).to(h.device)
        return h

    def logits(self, resid: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_vocab"]:
        """Final norm, unembedding and (if configured) logit soft-capping of the given rows only."""
        return self.lm.unembed(self.norm(resid))

    def _position_embeddings(self, h: torch.Tensor, pos0: int, q: int, layer_type: str):
        key = (pos0, q, layer_type, h.dtype, h.device)
        pe = self._pe_cache.get(key)
        if pe is None:
            pos = torch.arange(pos0, pos0 + q, device=h.device)[None]
            pe = self.rotary(h, pos, layer_type) if self._rotary_typed else self.rotary(h, pos)
            if len(self._pe_cache) > 256:
                self._pe_cache.clear()
            self._pe_cache[key] = pe
        return pe

    def _mask(self, pos0: int, q: int, layer_type: str, dtype: torch.dtype, device) -> torch.Tensor:
        key = (pos0, q, layer_type, dtype, device)
        m = self._mask_cache.get(key)
        if m is None:
            qi = torch.arange(pos0, pos0 + q, device=device)[:, None]
            ki = torch.arange(pos0 + q, device=device)[None]
            allowed = ki <= qi
            if layer_type == "sliding_attention" and self.window:
                allowed &= ki > qi - self.window
            m = torch.zeros(allowed.shape, dtype=dtype, device=device)
            m.masked_fill_(~allowed, torch.finfo(dtype).min)
            m = m[None, None]
            if len(self._mask_cache) > 256:
                self._mask_cache.clear()
            self._mask_cache[key] = m
        return m

    # -- running -----------------------------------------------------------------------------
    def layer(self, j: int, h: Float[torch.Tensor, "batch pos d_model"], pos0: int = 0,
              prefix: dict[int, KV] | None = None, record: dict[int, KV] | None = None
              ) -> Float[torch.Tensor, "batch pos d_model"]:
        """Run block ``j`` on positions ``pos0 .. pos0+pos-1``; ``prefix[j]`` holds K, V of positions < pos0."""
        if pos0 > 0 and (prefix is None or j not in prefix):
            raise ValueError(f"layer {j}: positions start at {pos0} but no prefix keys/values were given")
        q = h.shape[1]
        lt = self.layer_types[j]
        pos = torch.arange(pos0, pos0 + q, device=h.device)[None]
        kv = _LayerKV(prefix, record)  # always a cache, as in HF's own forward (dtype handling above)
        kwargs: dict[str, Any] = {"attention_mask": self._mask(pos0, q, lt, h.dtype, h.device), "position_ids": pos}
        if self.rotary is not None:
            kwargs["position_embeddings"] = self._position_embeddings(h, pos0, q, lt)
        kwargs[self.family.cache_kwarg] = kv
        out = self.layers[j](h, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def run(self, h: Float[torch.Tensor, "batch pos d_model"], start: int = 0, stop: int | None = None,
            pos0: int = 0, prefix: dict[int, KV] | None = None, record: dict[int, KV] | None = None
            ) -> Float[torch.Tensor, "batch pos d_model"]:
        """Run blocks ``start .. stop-1`` (``stop`` defaults to all) and return the residual stream."""
        stop = self.n_layers if stop is None else stop
        for j in range(start, stop):
            h = self.layer(j, h, pos0, prefix, record)
        return h
