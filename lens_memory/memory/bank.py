"""Memory3-style explicit memory: reference texts pre-encoded into per-layer keys and values.

Yang et al. (2024), "Memory3: Language Modeling with Explicit Memory" (arXiv:2407.01178), add a
third form of memory between weights and context: each reference is encoded *on its own* once,
its attention keys and values are stored (sparsified) on disk, and at inference they are
attached to the self-attention of chosen layers so the query attends over ``memory + context``
without re-reading the text. Memory3 attached memories to the first half of the layers and kept
about 8 tokens per head.

:func:`encode_memory` runs each reference (``BOS + text``) through the model with
:class:`~lens_memory.stack.DecoderStack`, records the keys (after rotary) and values at the chosen
layers, and the attention each reference token receives from the reference's own tokens
(``blocks.L.attn.hook_pattern``). Options (:class:`MemoryConfig`):

* ``layers``: ``"all"``, ``"first_half"`` (Memory3) or a list of layer indices;
* ``top_k``: sparsification. ``None`` keeps every token (dense). Otherwise, per layer and
  key-value head, the ``top_k`` reference tokens with the largest *importance* are kept, where
  importance of token ``t`` = the attention it receives, summed over the query heads sharing that
  key-value head and averaged over the reference positions that can attend to it (``r >= t``,
  so early tokens are not favoured for merely being visible to more rows). The BOS (attention
  sink) is always kept, once for the whole bank. Ties go to the earlier token.
* ``position``: ``"stacked"`` or ``"parallel"`` (see :mod:`.attach`).

A :class:`MemoryBank` is an artifact: ``with bank.apply(model): ...`` attaches it (exactly
reversible), ``bank.save(dir)`` writes safetensors + JSON, ``bank.nbytes()`` counts the stored
keys and values, ``bank.sparsify(k)`` re-sparsifies a dense bank without re-encoding, and
``bank.subset(ids)`` keeps some references (e.g. the retrieved ones).

Fidelity. Reference code: none was used; this follows the paper's description. Deviations, and why:

* **The model was not trained to read memories.** Memory3 is a 2.4B model pretrained, in two stages, to
  attend to explicit memories. Here memories are attached to an off-the-shelf model (Gemma 3 270M), so a
  memory can only work the way a text prefix's keys and values work. The defaults follow from that:
  ``layers="all"`` (not Memory3's first half) and dense storage. Measured on 30 known DEV facts
  (``sample_known_facts``), each scored with only its own counterfactual reference, efficacy / paraphrase /
  neighbourhood success: a dense memory at all layers gives 0.93 / 0.65 / 0.90; at the first half
  (layers 0-8) it gives 0.00 / 0.00 / 1.00, dense or top-8: no effect at all.
  :func:`~lens_memory.memory.evaluate.memory_layer_sweep` measures this for any layer sets.
* **Exactness instead of training.** One dense reference at every layer, ``position="stacked"``, gives the
  logits of ``BOS + reference + query`` as one token sequence (checked by
  :func:`~lens_memory.memory.evaluate.exactness_check` through the model's own Hugging Face forward; max
  |delta logit| 3.2e-5 over 10 of those facts). This is the reference point the other options deviate from.
* **Sparsification rule.** Memory3 keeps about 8 tokens per head, chosen by attention. Here ``top_k`` tokens
  per reference, layer and *key-value* head are kept by the importance defined above (attention received,
  summed over the query heads of the group, averaged over the rows that can see the token). The BOS is kept
  once. Memory3 also compresses the kept vectors (vector quantisation); here they are stored in the model's
  dtype. On the same 30 facts, references average 11.1 tokens after BOS, so top-8 keeps 8 of them. Top-8
  at all layers gives 0.80 / 0.55 / 0.90, against dense 0.93 / 0.65 / 0.90; it stores 8.9 MB against
  12.3 MB for the 30 references.
* **References.** Memory3's references are chunks of about 128 tokens. Here a reference is one short
  sentence per fact (:func:`~lens_memory.rag.fact_documents`), the same text the RAG baseline reads.
* **Positions** (:mod:`.attach`). ``stacked`` is what makes the exactness above hold; ``parallel`` gives
  every reference its encoded positions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int

from ..hooks import hook_name
from ..artifacts import check_identity, load_artifact, require, save_artifact
from ..errors import ArtifactMismatchError, LensMemoryError

__all__ = ["MemoryConfig", "MemoryBank", "encode_memory", "tokenizer_fingerprint", "kv_bytes_per_token",
           "EmptyReferenceError"]

log = logging.getLogger(__name__)

KIND = "memory"
_PARTS = ("keys", "values", "enc_pos", "ref_index", "importance")
POSITIONS = ("stacked", "parallel")


class EmptyReferenceError(LensMemoryError, ValueError):
    """A reference text is empty (nothing to encode)."""


@dataclass(frozen=True)
class MemoryConfig:
    """How references are turned into a memory bank.

    Attributes:
        layers: ``"all"``, ``"first_half"`` (Memory3's choice) or a tuple of layer indices.
        top_k: tokens kept per layer and key-value head (``None``: dense; Memory3 used about 8).
        position: ``"stacked"`` (references follow each other) or ``"parallel"`` (each keeps its own positions).
    """

    layers: str | tuple[int, ...] = "all"
    top_k: int | None = None
    position: str = "stacked"

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):
            if self.layers not in ("all", "first_half"):
                raise LensMemoryError(f"MemoryConfig.layers must be 'all', 'first_half' or a list of ints, got {self.layers!r}")
        else:
            layers = tuple(self.layers)
            if not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
                raise LensMemoryError(f"MemoryConfig.layers must be a non-empty list of ints, got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(sorted(set(layers))))
        if self.top_k is not None and (not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1):
            raise LensMemoryError(f"MemoryConfig.top_k must be a positive int or None, got {self.top_k!r}")
        if self.position not in POSITIONS:
            raise LensMemoryError(f"MemoryConfig.position must be one of {POSITIONS}, got {self.position!r}")

    def resolve_layers(self, lm: Any) -> list[int]:
        if self.layers == "all":
            return list(range(lm.n_layers))
        if self.layers == "first_half":
            return list(range(max(1, lm.n_layers // 2)))
        return [lm.check_layer(l) for l in self.layers]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = self.layers if isinstance(self.layers, str) else list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MemoryConfig":
        layers = d.get("layers", "all")
        return cls(layers if isinstance(layers, str) else tuple(layers), d.get("top_k"), d.get("position", "stacked"))


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of a tokenizer's vocabulary and special tokens (memories are token-specific)."""
    key = id(tokenizer)
    hit = _FP_CACHE.get(key)
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]).encode())
    fp = h.hexdigest()
    _FP_CACHE[key] = (tokenizer, fp)
    return fp


_FP_CACHE: dict[int, tuple[Any, str]] = {}


def kv_bytes_per_token(lm: Any, layers: Sequence[int] | None = None) -> int:
    """Bytes of keys plus values one token occupies at ``layers`` (default all) in the model's dtype."""
    cfg = lm.hf.config
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    d_head = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    n = lm.n_layers if layers is None else len(layers)
    return 2 * n * n_kv * d_head * next(lm.hf.parameters()).element_size()


@dataclass
class MemoryBank:
    """Keys and values of encoded references, per layer and key-value head.

    Per layer ``l`` (``T`` tokens per head; the BOS first):

    * ``keys[l]``, ``values[l]``: ``[kv_head T d_head]``, keys after rotary at the encoded positions;
    * ``enc_pos[l]``: ``[kv_head T]`` the position each token was encoded at (0 = BOS);
    * ``ref_index[l]``: ``[kv_head T]`` which reference it came from (-1 for the shared BOS);
    * ``importance[l]``: ``[kv_head T]`` the sparsification score (see module docstring).
    """

    config: MemoryConfig
    layers: list[int]
    references: list[dict[str, Any]]
    keys: dict[int, Float[torch.Tensor, "kv_head tok d_head"]]
    values: dict[int, Float[torch.Tensor, "kv_head tok d_head"]]
    enc_pos: dict[int, Int[torch.Tensor, "kv_head tok"]]
    ref_index: dict[int, Int[torch.Tensor, "kv_head tok"]]
    importance: dict[int, Float[torch.Tensor, "kv_head tok"]]
    model: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    # -- shape facts -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.references)

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.references]

    def n_tokens(self) -> int:
        """Tokens kept per key-value head and layer (BOS included)."""
        return int(self.keys[self.layers[0]].shape[1])

    def nbytes(self) -> int:
        """Bytes of the stored keys and values (indices and scores not counted)."""
        return int(sum(self.keys[l].nbytes + self.values[l].nbytes for l in self.layers))

    def n_positions(self) -> int:
        """Positions the memory occupies before the query (BOS included): ``L_mem``."""
        lens = [r["n_tokens"] for r in self.references]  # BOS included
        if self.config.position == "stacked":
            return 1 + sum(n - 1 for n in lens)
        return max(lens)

    def target_positions(self) -> dict[int, Int[torch.Tensor, "kv_head tok"]]:
        """Each kept token's true position in the ``[BOS][memory][query]`` layout."""
        if self.config.position == "parallel":
            return {l: self.enc_pos[l].clone() for l in self.layers}
        offsets = torch.zeros(len(self.references) + 1, dtype=torch.long)
        offsets[1:] = torch.tensor([r["n_tokens"] - 1 for r in self.references]).cumsum(0)
        out = {}
        for l in self.layers:
            ri = self.ref_index[l]
            out[l] = torch.where(ri >= 0, offsets[ri.clamp_min(0)] + self.enc_pos[l], torch.zeros_like(ri))
        return out

    def __repr__(self) -> str:
        kind = "dense" if self.config.top_k is None else f"top-{self.config.top_k}"
        return (f"MemoryBank({len(self)} references, {kind}, layers {self.layers[0]}..{self.layers[-1]} "
                f"({len(self.layers)}), {self.n_tokens()} tokens/head, {self.nbytes() / 1024:.1f} KiB)")

    # -- use ---------------------------------------------------------------------------------
    def check(self, lm: Any) -> None:
        """Refuse a model or tokenizer other than the one the memory was encoded with."""
        check_identity(self.model, lm, "memory")
        if self.tokenizer and self.tokenizer != tokenizer_fingerprint(lm.tokenizer):
            raise ArtifactMismatchError(f"memory was encoded with another tokenizer than {lm.name!r}'s "
                                        f"(fingerprint {self.tokenizer[:12]})")
        for l in self.layers:
            lm.check_layer(l)

    def apply(self, lm: Any) -> Any:
        """Attach the memory to ``lm``'s attention; a context manager (``with bank.apply(lm): ...``)."""
        from .attach import MemoryHandle

        self.check(lm)
        return MemoryHandle(lm, self)

    def subset(self, ids: Sequence[str]) -> "MemoryBank":
        """A bank with only the references ``ids`` (in that order)."""
        index = {r["id"]: i for i, r in enumerate(self.references)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise LensMemoryError(f"references {missing[:5]} are not in this memory bank")
        if not ids:
            raise LensMemoryError("a memory bank needs at least one reference")
        old = [index[i] for i in ids]
        remap = torch.full((len(self.references),), -2, dtype=torch.long)
        remap[old] = torch.arange(len(old))
        out: dict[str, dict[int, torch.Tensor]] = {k: {} for k in ("keys", "values", "enc_pos", "ref_index", "importance")}
        for l in self.layers:
            ri = self.ref_index[l]
            new_ri = torch.where(ri >= 0, remap[ri.clamp_min(0)], ri)
            cols = []
            for h in range(ri.shape[0]):  # keep BOS, then the chosen references in the requested order
                order = [torch.nonzero(new_ri[h] == -1).flatten()]
                order += [torch.nonzero(new_ri[h] == j).flatten() for j in range(len(old))]
                cols.append(torch.cat(order))
            idx = torch.stack(cols)
            for name, src in (("keys", self.keys), ("values", self.values)):
                out[name][l] = torch.gather(src[l], 1, idx[..., None].expand(-1, -1, src[l].shape[-1]))
            out["enc_pos"][l] = torch.gather(self.enc_pos[l], 1, idx)
            out["ref_index"][l] = torch.gather(new_ri, 1, idx)
            out["importance"][l] = torch.gather(self.importance[l], 1, idx)
        return MemoryBank(self.config, list(self.layers), [self.references[i] for i in old], out["keys"],
                          out["values"], out["enc_pos"], out["ref_index"], out["importance"], dict(self.model),
                          self.tokenizer, dict(self.info))

    def sparsify(self, top_k: int) -> "MemoryBank":
        """Keep the ``top_k`` most important tokens per reference, layer and head (BOS kept)."""
        cfg = MemoryConfig(self.config.layers, top_k, self.config.position)
        out: dict[str, dict[int, torch.Tensor]] = {k: {} for k in ("keys", "values", "enc_pos", "ref_index", "importance")}
        for l in self.layers:
            ri, imp, pos = self.ref_index[l], self.importance[l], self.enc_pos[l]
            cols = []
            for h in range(ri.shape[0]):
                keep = [torch.nonzero(ri[h] == -1).flatten()]
                for j in range(len(self.references)):
                    cand = torch.nonzero(ri[h] == j).flatten()
                    if len(cand) > top_k:
                        # larger importance first; ties to the earlier position
                        order = sorted(cand.tolist(), key=lambda c: (-float(imp[h, c]), int(pos[h, c])))[:top_k]
                        cand = torch.tensor(sorted(order, key=lambda c: int(pos[h, c])), dtype=torch.long)
                    keep.append(cand)
                cols.append(torch.cat(keep))
            width = {len(c) for c in cols}
            if len(width) != 1:  # pragma: no cover - every head keeps min(k, n) per reference
                raise LensMemoryError("sparsified heads kept different numbers of tokens")
            idx = torch.stack(cols)
            for name, src in (("keys", self.keys), ("values", self.values)):
                out[name][l] = torch.gather(src[l], 1, idx[..., None].expand(-1, -1, src[l].shape[-1])).clone()
            for name, src in (("enc_pos", self.enc_pos), ("ref_index", self.ref_index), ("importance", self.importance)):
                out[name][l] = torch.gather(src[l], 1, idx).clone()
        return MemoryBank(cfg, list(self.layers), list(self.references), out["keys"], out["values"], out["enc_pos"],
                          out["ref_index"], out["importance"], dict(self.model), self.tokenizer, dict(self.info))

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``memory.json`` + ``memory.safetensors`` into directory ``path`` atomically."""
        tensors = {f"{name}.{l}": getattr(self, name)[l] for l in self.layers for name in _PARTS}
        return save_artifact(path, KIND, {"config": self.config.to_dict(), "layers": self.layers,
                                          "references": self.references, "model": self.model,
                                          "tokenizer": self.tokenizer, "info": self.info, "nbytes": self.nbytes()},
                             tensors)

    @classmethod
    def load(cls, path: str | Path) -> "MemoryBank":
        meta, t = load_artifact(path, KIND)
        require(meta, ("config", "layers", "references"), path)
        layers = [int(l) for l in meta["layers"]]
        parts = {name: {l: t[f"{name}.{l}"] for l in layers} for name in _PARTS}
        return cls(MemoryConfig.from_dict(meta["config"]), layers, meta["references"], parts["keys"], parts["values"],
                   parts["enc_pos"], parts["ref_index"], parts["importance"], meta.get("model", {}),
                   meta.get("tokenizer", ""), meta.get("info", {}))


@torch.no_grad()
def _encode_one(lm: Any, ids: torch.Tensor, layers: list[int]) -> tuple[dict, dict]:
    """Keys/values (``[kv_head n d_head]``) and per-token importance (``[kv_head n]``) of one reference."""
    st = lm.stack
    record: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    patterns: dict[int, torch.Tensor] = {}
    hooks = [(hook_name(l, "pattern"), functools.partial(_grab_pattern, store=patterns, layer=l)) for l in layers]
    with lm.bridge.hooks(fwd_hooks=hooks):
        st.run(st.embed(ids[None].to(lm.device)), 0, max(layers) + 1, record=record)
    kv, imp = {}, {}
    n = ids.shape[0]
    seen = torch.arange(n, 0, -1, dtype=torch.float64)  # rows r >= t that can see token t
    for l in layers:
        k, v = record[l]
        kv[l] = (k[0].detach().cpu().clone(), v[0].detach().cpu().clone())  # banks live on the CPU
        a = patterns[l][0].double().cpu()  # [head q k]
        n_kv = k.shape[1]
        received = a.sum(1).reshape(n_kv, -1, n).sum(1)  # [kv_head n]: summed over query heads of the group and rows
        imp[l] = (received / seen).float()
    return kv, imp


def _grab_pattern(x: torch.Tensor, hook: Any, store: dict, layer: int) -> None:
    store[layer] = x.detach()


def encode_memory(lm: Any, references: Sequence[str] | Sequence[tuple[str, str]], cfg: MemoryConfig | None = None,
                  *, progress: bool = False) -> MemoryBank:
    """Encode each reference on its own into a :class:`MemoryBank` (dense, then sparsified if ``cfg.top_k``).

    ``references``: texts, or ``(id, text)`` pairs (ids default to ``"ref-0"``, ``"ref-1"`` ...).
    """
    from tqdm.auto import tqdm

    cfg = cfg or MemoryConfig()
    if not references:
        raise EmptyReferenceError("no references to encode")
    attached = lm.attached_memory
    if attached is not None:
        raise LensMemoryError(f"a memory bank is attached to {lm.name} ({attached.bank!r}); references are encoded by "
                              f"the model without memory -- remove it first")
    pairs = [(r if isinstance(r, tuple) else (f"ref-{i}", r)) for i, r in enumerate(references)]
    ids_seen: set[str] = set()
    for rid, text in pairs:
        if not isinstance(text, str) or not text.strip():
            raise EmptyReferenceError(f"reference {rid!r} is empty: {text!r}")
        if rid in ids_seen:
            raise LensMemoryError(f"duplicate reference id {rid!r}")
        ids_seen.add(rid)
    layers = cfg.resolve_layers(lm)
    bos = lm.tokenizer.bos_token_id
    t0 = time.perf_counter()
    per_layer: dict[str, dict[int, list[torch.Tensor]]] = {k: {l: [] for l in layers} for k in
                                                            ("keys", "values", "enc_pos", "ref_index", "importance")}
    refs = []
    for j, (rid, text) in enumerate(tqdm(pairs, desc="encode memory", disable=not progress)):
        ids = lm.encode(text)
        if bos is None or int(ids[0]) != bos or len(ids) < 2:
            raise EmptyReferenceError(f"reference {rid!r} encodes to no token after BOS: {text!r}")
        kv, imp = _encode_one(lm, ids, layers)
        refs.append({"id": rid, "text": text, "n_tokens": int(len(ids))})
        for l in layers:
            k, v = kv[l]
            n_kv, n = k.shape[0], k.shape[1]
            start = 0 if j == 0 else 1  # one shared BOS: identical in every reference
            per_layer["keys"][l].append(k[:, start:])
            per_layer["values"][l].append(v[:, start:])
            pos = torch.arange(start, n).expand(n_kv, -1)
            per_layer["enc_pos"][l].append(pos)
            per_layer["ref_index"][l].append(torch.where(pos == 0, -1, j))
            per_layer["importance"][l].append(imp[l][:, start:])
    parts = {name: {l: torch.cat(v[l], dim=1) for l in layers} for name, v in per_layer.items()}
    bank = MemoryBank(MemoryConfig(cfg.layers, None, cfg.position), layers, refs, parts["keys"], parts["values"],
                      parts["enc_pos"], parts["ref_index"], parts["importance"], lm.identity.to_dict(),
                      tokenizer_fingerprint(lm.tokenizer), {"encode_seconds": time.perf_counter() - t0})
    if cfg.top_k is not None:
        bank = bank.sparsify(cfg.top_k)
    log.info("encoded %s", bank)
    return bank
