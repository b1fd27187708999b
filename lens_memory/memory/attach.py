"""Attaching key-value memories to self-attention, reversibly (the mechanics behind ``MemoryBank.apply``).

A memory is a set of keys and values per layer and key-value head, computed once from reference
texts (:mod:`.bank`). Attached, a layer's attention runs over ``[memory ; context]``: the memory
keys and values are prepended to the layer's own (after its KV-cache update), and the 4-D
attention mask gets matching columns. Everything goes through standard torch forward pre-hooks
on the TransformerLens attention hook points (``blocks.L.attn``), so it acts in every entry point
-- the bridge, Hugging Face ``generate`` with its KV cache, :class:`~lens_memory.stack.DecoderStack`
-- and ``blocks.L.attn.hook_pattern`` sees the memory columns first. No weight or buffer is
touched, so detaching restores the model bit-exactly.

Positions (recorded in the bank's config). A reference is encoded as ``BOS + text``; its BOS
state is the same in every reference and every query (position 0 sees nothing), so the memory
keeps one BOS and the query keeps its own BOS row. In memory-carrying layers the query tokens
attend the memory's BOS instead of the query's own BOS column (identical keys and values up to
position), and the query's BOS row does not see the memory (it precedes it). The layout is then

    [BOS] [memory tokens] [query tokens]      true positions 0 .. L_mem-1, L_mem .. L_mem+n-2

* ``"stacked"``: references one after another, as if concatenated after one BOS (each was
  still encoded on its own, so references do not attend to each other). With one dense
  reference at every layer this is exactly the reference given as a text prefix.
* ``"parallel"``: every reference keeps the positions it was encoded at (they overlap) and the
  query follows the longest; the memory then costs the context no more positions than its
  longest reference.

Rotary families (Llama layout, GPT-NeoX, GPT-J): the query is run at its ordinary positions
0..n-1; instead, memory keys are re-rotated once at attach time so that every query-memory
distance equals the true one (rotary attention depends only on distances). Only the rotary part
of a head turns (partial rotary: GPT-NeoX 25%, GPT-J ``rotary_dim`` in interleaved pairs).
Absolute-position families (GPT-2): a position is baked into the residual stream, so keys cannot
be moved; the query's tokens after BOS are moved instead (a pre-hook on the position embedding
adds ``L_mem - 1``) and each memory key keeps the position it was encoded at. With one reference
(or ``"parallel"``) that is exact; ``"stacked"`` with several references then places each
reference's keys at its encoded positions, not after the previous reference -- a documented
deviation on GPT-2 only. Sliding-window layers drop memory tokens farther than the window.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..artifacts import Handle
from ..errors import InputTooLongError, LensMemoryError

__all__ = ["MemoryHandle", "rotate_keys"]

log = logging.getLogger(__name__)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def _interleaved_cos_sin(lm: Any, layer: int, delta: torch.Tensor, d_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT-J's sin/cos table (``create_sinusoidal_positions``) at arbitrary, also negative, positions."""
    attn = lm.stack.family.attention(lm.hf, layer)
    attn = getattr(attn, "original_component", attn)
    dim = getattr(attn, "rotary_dim", None) or d_head
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.int64) / dim))
    ang = delta.to("cpu", torch.float32)[..., None] * inv_freq.float()  # [kv_head n dim/2]
    return (torch.repeat_interleave(ang.cos(), 2, dim=-1), torch.repeat_interleave(ang.sin(), 2, dim=-1))


def rotate_keys(lm: Any, layer: int, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Move rotary keys ``[kv_head n d_head]`` by ``delta`` positions ``[kv_head n]`` (rotations compose).

    Only the rotary part of each head turns (GPT-NeoX/Pythia: the first 25%; GPT-J: the first
    ``rotary_dim``, in interleaved pairs); RoPE's ``attention_scaling`` (YaRN, LongRoPE) is applied
    once at encoding and divided out of the relative rotation. Absolute-position families (GPT-2)
    return the keys unchanged: their positions are in the residual stream, not the keys.
    """
    st = lm.stack
    positions = st.family.positions
    if positions == "absolute" or not bool((delta != 0).any()):
        return keys
    if positions == "rotary_interleaved":
        cos, sin = _interleaved_cos_sin(lm, layer, delta, keys.shape[-1])
        rotate = _rotate_every_two
    else:
        pos = delta.reshape(1, -1).to(keys.device)
        lt = st.layer_types[layer]
        kf = keys.float()  # tables in float32
        cos, sin = st.rotary(kf, pos, lt) if st._rotary_typed else st.rotary(kf, pos)
        rot = getattr(st.rotary, "original_component", None) or st.rotary
        scale = float(getattr(rot, "attention_scaling", 1.0) or 1.0)
        cos, sin = cos.reshape(*delta.shape, -1) / scale, sin.reshape(*delta.shape, -1) / scale
        rotate = _rotate_half
    r = cos.shape[-1]
    if r > keys.shape[-1]:
        raise LensMemoryError(f"{lm.name}: rotary width {r} exceeds the head size {keys.shape[-1]}")
    cos, sin = cos.to(keys.device, torch.float32), sin.to(keys.device, torch.float32)
    k_rot, k_pass = keys[..., :r].float(), keys[..., r:]  # rotated in float32, rounded once to the keys' dtype
    return torch.cat([(k_rot * cos + rotate(k_rot) * sin).to(keys.dtype), k_pass], dim=-1)


class _MemoryCache:
    """Duck-typed ``Cache`` handed to one attention call: real cache update, then memory prepended."""

    def __init__(self, inner: Any, keys: torch.Tensor, values: torch.Tensor):
        self.inner, self.keys, self.values = inner, keys, values

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.inner is not None:
            key_states, value_states = self.inner.update(key_states, value_states, layer_idx, *args, **kwargs)
        b = key_states.shape[0]
        mk = self.keys.to(key_states.dtype)[None].expand(b, -1, -1, -1)
        mv = self.values.to(value_states.dtype)[None].expand(b, -1, -1, -1)
        return torch.cat([mk, key_states], dim=2), torch.cat([mv, value_states], dim=2)

    def get_seq_length(self, layer_idx: int = 0) -> int:  # pragma: no cover - defensive
        return self.inner.get_seq_length(layer_idx) if self.inner is not None else 0


class MemoryHandle(Handle):
    """An attached :class:`~lens_memory.memory.bank.MemoryBank`; ``remove()`` or leaving ``with`` detaches it.

    Attributes:
        bank: the attached bank.
        n_positions: positions the memory occupies before the query (``L_mem - 1``, BOS shared).
    """

    kind = "memory"

    def __init__(self, lm: Any, bank: Any):
        super().__init__(bank, lm)
        self.bank = bank
        self._handles: list[Any] = []
        other = lm.attached_memory
        if other is not None:
            raise LensMemoryError(f"a memory bank is already attached to {lm.name} ({other.bank!r}); remove it first "
                                  f"-- two memories would both claim the positions after BOS (encode the references "
                                  f"into one bank to use them together)")
        L_mem = bank.n_positions()
        self.n_positions = L_mem - 1
        if L_mem >= lm.n_ctx:
            raise InputTooLongError(f"memory occupies {L_mem} positions, not less than the context of {lm.name} ({lm.n_ctx})")
        window = getattr(lm.hf.config, "sliding_window", None)
        self._layers: dict[int, dict[str, Any]] = {}
        device = lm.device
        dtype = next(lm.hf.parameters()).dtype
        target = bank.target_positions()
        for layer in bank.layers:
            t = target[layer]
            frame = t - (L_mem - 1)  # key position in the query's frame (query token i sits at true L_mem-1+i)
            keys = rotate_keys(lm, layer, bank.keys[layer].to(device=device, dtype=dtype),
                               (frame - bank.enc_pos[layer]).to(device))
            sliding = lm.stack.layer_types[layer] == "sliding_attention" and window
            self._layers[layer] = {"keys": keys, "values": bank.values[layer].to(device=device, dtype=dtype),
                                   "frame": frame.to(device), "window": int(window) if sliding else None,
                                   "n_heads": int(lm.hf.config.num_attention_heads)}
        fam = lm.stack.family
        try:
            for layer in bank.layers:
                self._handles.append(fam.attention(lm.hf, layer).register_forward_pre_hook(
                    self._pre_hook(layer, fam.cache_kwarg), with_kwargs=True))
            bos = lm.tokenizer.bos_token_id
            if bos is not None:
                self._handles.append(fam.token_embedding(lm.hf).register_forward_pre_hook(self._check_bos(bos)))
            if fam.positions == "absolute" and self.n_positions:
                self._handles.append(fam.position_embedding(lm.hf).register_forward_pre_hook(self._shift_positions()))
        except Exception:
            self._undo()
            raise
        self._activate()

    def _check_bos(self, bos: int):
        name = self.lm.name

        def hook(module: Any, args: Any) -> None:
            ids = args[0] if args else None
            if torch.is_tensor(ids) and ids.ndim == 2 and ids.shape[1] > 1 and not bool((ids == bos).any(1).all()):
                raise LensMemoryError(f"a KV memory is attached to {name}: every query must start with BOS "
                                      f"(use LensModel.encode); got a sequence without it")
        return hook

    def _shift_positions(self):
        """Absolute positions: every query token after BOS moves behind the memory (BOS stays at 0)."""
        shift = self.n_positions

        def hook(module: Any, args: Any):
            pos = args[0]
            return (torch.where(pos > 0, pos + shift, pos), *args[1:])
        return hook

    def _pre_hook(self, layer: int, cache_kwarg: str):
        mem = self._layers[layer]
        n_ctx, name = self.lm.n_ctx, self.lm.name
        L_mem = self.n_positions + 1

        def hook(module: Any, args: Any, kwargs: dict[str, Any]):
            h = kwargs.get("hidden_states", args[0] if args else None)
            mask, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
            b, q = h.shape[0], h.shape[1]
            if pos is None:
                raise LensMemoryError(f"layer {layer}: KV memory needs position_ids in the attention call")
            pos = pos.to(h.device).expand(b, q)
            if int(pos.max()) + L_mem - 1 >= n_ctx:
                raise InputTooLongError(f"query of {int(pos.max()) + 1} positions after a memory of {L_mem - 1} "
                                        f"positions exceeds the context of {name} ({n_ctx})")
            if mask is None:  # no mask given: a plain causal mask over the new positions
                kv = q
                allowed = torch.ones(q, q, dtype=torch.bool, device=h.device).tril()[None, None].expand(b, 1, q, q)
                mask = torch.zeros(b, 1, q, kv, dtype=h.dtype, device=h.device).masked_fill(~allowed, torch.finfo(h.dtype).min)
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=h.dtype, device=h.device).masked_fill(~mask, torch.finfo(h.dtype).min)
            mask = mask.to(h.dtype).expand(b, 1, q, mask.shape[-1]).clone()
            kv = mask.shape[-1]
            neg = torch.finfo(h.dtype).min
            # the query's own BOS column: slot of position 0 (left padding shifts it)
            bos_col = (kv - 1 - pos[:, -1]).clamp_min(0)  # [b]
            not_bos_row = pos > 0  # [b q]
            rows = torch.arange(b, device=h.device)
            col_mask = mask[rows, 0, :, bos_col]  # [b q]
            mask[rows, 0, :, bos_col] = torch.where(not_bos_row, torch.full_like(col_mask, neg), col_mask)
            frame = mem["frame"]  # [kv_head M]
            n_kv, M = frame.shape
            ok = not_bos_row[:, None, :, None].expand(b, 1, q, M)
            if mem["window"] is not None:
                per_head = n_kv > 1 and not bool((frame == frame[:1]).all())
                f = frame if per_head else frame[:1]
                ok = ok & ((pos[:, None, :, None] - f[None, :, None, :]) < mem["window"])  # [b kv|1 q M]
                if per_head:  # heads keep different tokens: one mask row per query head
                    groups = mem["n_heads"] // n_kv
                    ok = ok.repeat_interleave(groups, dim=1)
                    mask = mask.expand(b, ok.shape[1], q, kv)
            mem_mask = torch.zeros(ok.shape, dtype=h.dtype, device=h.device).masked_fill(~ok, neg)
            kwargs["attention_mask"] = torch.cat([mem_mask, mask], dim=-1)
            kwargs[cache_kwarg] = _MemoryCache(kwargs.get(cache_kwarg), mem["keys"], mem["values"])
            return args, kwargs

        return hook

    def _undo(self) -> None:
        for hd in self._handles:
            hd.remove()
        self._handles = []
