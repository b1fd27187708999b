"""Where attention goes when knowledge is in context, in a KV memory, or nowhere.

For the same query under several *conditions* -- ``"none"`` (the query alone), ``"rag"`` (the
reference as text before the query), ``"dense"`` and ``"sparse"`` (the reference as an attached
KV memory, :mod:`.bank`) -- the attention pattern ``blocks.L.attn.hook_pattern`` of every layer
and head is split, for each query token after BOS, into three masses that sum to one:

* ``reference``: on the reference's tokens (RAG text tokens, or memory tokens other than BOS);
* ``sink``: on the first token (the query's BOS, or the memory's shared BOS that replaces it);
* ``query``: on the query's own tokens.

Also per layer and head: the attention entropy (nats) of those rows, and the Jensen-Shannon
divergence (nats, in [0, ln 2]) between the condition's and the ``"none"`` condition's rows over
the common bins ``[sink, reference (one bin), query tokens ...]`` -- how much knowledge in
context or memory reshapes the query's own attention. Which reference tokens receive attention
(averaged over layers and heads, from the query's last token) is kept per condition.

:func:`attention_profile` measures one query; :func:`compare_attention` averages many queries
into an :class:`AttentionComparison` (``to_dataframe``, ``plot``, ``save``/``load``).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..hooks import hook_name, hook_template
from ..artifacts import load_artifact, require, save_artifact
from ..errors import LensMemoryError

__all__ = ["AttentionProfile", "AttentionComparison", "attention_profile", "compare_attention", "METRICS"]

METRICS = ("reference", "sink", "query", "entropy", "js_vs_none")


@dataclass
class AttentionProfile:
    """One query under one condition. Arrays are ``[layer head_index]`` means over the query's non-BOS rows.

    ``rows``: ``[layer head_index q bins]`` distributions over ``[sink, reference, query tokens 1..]``
    (kept for the divergence); ``reference_tokens``: per reference token, the attention it gets
    from the query's last token, averaged over layers and heads.
    """

    condition: str
    reference: np.ndarray
    sink: np.ndarray
    query: np.ndarray
    entropy: np.ndarray
    rows: np.ndarray
    reference_tokens: list[tuple[str, float]] = field(default_factory=list)


def _grab(x: torch.Tensor, hook: Any, store: dict, layer: int) -> None:
    store[layer] = x.detach()[0].double()  # [head q k]


@torch.no_grad()
def _patterns(lm: Any, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    store: dict[int, torch.Tensor] = {}
    hooks = [(hook_name(l, "pattern"), functools.partial(_grab, store=store, layer=l)) for l in range(lm.n_layers)]
    st = lm.stack
    with lm.bridge.hooks(fwd_hooks=hooks):
        st.run(st.embed(ids[None].to(lm.device)))
    return store


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def _layout(lm: Any, query: str, condition: str, reference: str | None, memory: Any, template: str):
    """Token ids, reference columns and the query's offset for ``condition``; and the context to run in."""
    q_ids = lm.encode(query)
    n_q = len(q_ids)
    if condition == "none":
        return q_ids, [], 0, contextlib.nullcontext()
    if condition == "rag":
        if not reference:
            raise LensMemoryError("condition 'rag' needs a reference text")
        ids = lm.encode(template.format(context=reference.strip(), query=query))
        # the query's n_q - 1 tokens after BOS are the prompt's last ones; everything between BOS and
        # them (reference text and separator) counts as reference
        return ids, list(range(1, len(ids) - (n_q - 1))), len(ids) - (n_q - 1) - 1, contextlib.nullcontext()
    if memory is None:
        raise LensMemoryError(f"condition {condition!r} needs a memory bank")
    return q_ids, None, 0, memory.apply(lm)


def _memory_token_mass(qrows: torch.Tensor, M: int, memory: Any, l: int, mem_mass: dict) -> None:
    """Add the last query token's attention to each kept memory token (keyed by reference and position)."""
    n_heads, n_kv = qrows.shape[0], memory.keys[l].shape[0]
    for h in range(n_heads):  # heads (and layers, when sparse) keep different tokens
        g = h // (n_heads // n_kv)
        for c, m in zip(range(1, M), qrows[h, -1, 1:M].tolist()):
            key = (int(memory.ref_index[l][g, c]), int(memory.enc_pos[l][g, c]))
            mem_mass[key] = mem_mass.get(key, 0.0) + m / n_heads


def _layer_bins(a: torch.Tensor, L: int, offset: int, ref_cols: list[int] | None, in_context: bool):
    """Sink, reference and own-query masses of one layer's pattern ``[head q kv]`` (memory columns first)."""
    M = a.shape[-1] - L  # memory columns first (0 when none attached at this layer)
    qrows = a[:, offset + 1:, :]  # the query's tokens after BOS
    if in_context:
        sink = qrows[..., 0]
        ref = qrows[..., ref_cols].sum(-1) if ref_cols else torch.zeros_like(sink)
        return qrows, M, sink, ref, qrows[..., offset + 1:], (qrows[:, -1, ref_cols] if ref_cols else None)
    if M > 0:  # sink: the memory's BOS (first memory column); the query's BOS column is masked
        return qrows, M, qrows[..., 0], qrows[..., 1:M].sum(-1), qrows[..., M + 1:], None
    sink = qrows[..., M]
    return qrows, M, sink, torch.zeros_like(sink), qrows[..., M + 1:], None


def attention_profile(lm: Any, query: str, condition: str = "none", *, reference: str | None = None,
                      memory: Any = None, template: str = "{context}\n\n{query}") -> AttentionProfile:
    """Attention masses of ``query`` under ``condition`` (``none``, ``rag`` with ``reference``, or a memory bank).

    For ``rag`` the prompt is ``template`` filled with ``reference`` and ``query``; for a memory
    condition (any other name) ``memory`` is attached while the query runs.
    """
    ids, ref_cols, offset, ctx = _layout(lm, query, condition, reference, memory, template)
    with ctx:
        pats = _patterns(lm, ids)
    out = {k: [] for k in ("reference", "sink", "query", "entropy")}
    rows_all, last_ref = [], []
    mem_mass: dict[tuple[int, int], float] = {}
    n_mem_layers = 0
    for l in range(lm.n_layers):
        qrows, M, sink, ref, own, ref_last = _layer_bins(pats[l], len(ids), offset, ref_cols,
                                                         condition in ("none", "rag"))
        if condition not in ("none", "rag") and M > 0:
            n_mem_layers += 1
            _memory_token_mass(qrows, M, memory, l, mem_mass)
        rows_all.append(torch.cat([sink[..., None], ref[..., None], own], dim=-1))
        out["reference"].append(ref.mean(-1))
        out["sink"].append(sink.mean(-1))
        out["query"].append(own.sum(-1).mean(-1))
        out["entropy"].append(_entropy(qrows[..., :]).mean(-1))
        if ref_last is not None:
            last_ref.append(ref_last.mean(0))
    arr = {k: torch.stack(v).numpy() for k, v in out.items()}
    tokens: list[tuple[str, float]] = []
    if last_ref and condition == "rag":
        mass = torch.stack(last_ref).mean(0)
        tokens = [(lm.decode(int(ids[c])), float(m)) for c, m in zip(ref_cols, mass)]
    elif mem_mass:
        toks = [lm.encode(r["text"]) for r in memory.references]
        tokens = [(lm.decode(int(toks[r][p])), m / n_mem_layers) for (r, p), m in sorted(mem_mass.items())]
    return AttentionProfile(condition, arr["reference"], arr["sink"], arr["query"], arr["entropy"],
                            torch.stack(rows_all).numpy(), tokens)


def _js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = 0.5 * (p + q)

    def kl(a, b):
        return np.where(a > 0, a * (np.log(np.clip(a, 1e-30, None)) - np.log(np.clip(b, 1e-30, None))), 0.0).sum(-1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


@dataclass
class AttentionComparison:
    """Attention metrics per condition, layer and head, averaged over queries.

    ``values[metric]``: ``[condition layer head_index]``; ``provenance``: model, conditions,
    queries, memory configs.
    """

    conditions: list[str]
    values: dict[str, np.ndarray]
    reference_tokens: dict[str, list[tuple[str, float]]]
    provenance: dict[str, Any]

    def layer_means(self, metric: str = "reference") -> dict[str, list[float]]:
        """Per condition, ``metric`` averaged over heads for each layer."""
        return {c: self.values[metric][i].mean(-1).tolist() for i, c in enumerate(self.conditions)}

    def summary(self) -> dict[str, Any]:
        return {m: {c: float(self.values[m][i].mean()) for i, c in enumerate(self.conditions)} for m in METRICS}

    def to_dataframe(self):
        import pandas as pd

        rows = []
        for i, c in enumerate(self.conditions):
            n_l, n_h = self.values["reference"][i].shape
            for l in range(n_l):
                for h in range(n_h):
                    rows.append({"condition": c, "layer": l, "head": h,
                                 **{m: float(self.values[m][i, l, h]) for m in METRICS}})
        return pd.DataFrame(rows)

    def plot(self, metric: str = "reference"):
        from .. import viz

        return viz.plot_attention_conditions(self, metric)

    def save(self, path: str | Path) -> Path:
        """Write ``attention.json`` + ``attention.safetensors`` into directory ``path`` atomically."""
        return save_artifact(path, "attention", {"conditions": self.conditions, "reference_tokens": self.reference_tokens,
                                                 "provenance": self.provenance},
                             {m: torch.from_numpy(np.ascontiguousarray(v)) for m, v in self.values.items()})

    @classmethod
    def load(cls, path: str | Path) -> "AttentionComparison":
        meta, t = load_artifact(path, "attention")
        require(meta, ("conditions", "reference_tokens", "provenance"), path)
        return cls(meta["conditions"], {m: t[m].numpy() for m in METRICS},
                   {k: [tuple(x) for x in v] for k, v in meta["reference_tokens"].items()}, meta["provenance"])

def compare_attention(lm: Any, queries: Sequence[str], references: Sequence[str],
                      memories: dict[str, Sequence[Any]] | None = None, *, progress: bool = False) -> AttentionComparison:
    """Average :func:`attention_profile` over ``queries`` (query ``i`` with reference ``i``).

    ``memories``: condition name -> one memory bank per query (e.g. ``{"dense": [...], "sparse": [...]}``).
    The conditions are ``none``, ``rag`` and the memories' names, in that order.
    """
    from tqdm.auto import tqdm

    if len(queries) != len(references) or not queries:
        raise LensMemoryError(f"compare_attention needs one reference per query: {len(queries)} queries, "
                              f"{len(references)} references")
    memories = dict(memories or {})
    for name, banks in memories.items():
        if len(banks) != len(queries):
            raise LensMemoryError(f"memory condition {name!r} has {len(banks)} banks for {len(queries)} queries")
    conditions = ["none", "rag", *memories]
    sums: dict[str, np.ndarray] = {}
    tokens: dict[str, list[tuple[str, float]]] = {}
    for qi, (q, r) in enumerate(tqdm(list(zip(queries, references)), desc="attention", disable=not progress)):
        profs = [attention_profile(lm, q, "none"), attention_profile(lm, q, "rag", reference=r)]
        profs += [attention_profile(lm, q, name, memory=banks[qi]) for name, banks in memories.items()]
        base = profs[0].rows
        for ci, p in enumerate(profs):
            js = _js(p.rows, base).mean(-1)
            for m, v in (("reference", p.reference), ("sink", p.sink), ("query", p.query), ("entropy", p.entropy),
                         ("js_vs_none", js)):
                if m not in sums:
                    sums[m] = np.zeros((len(conditions), *v.shape))
                sums[m][ci] += v
            if qi == 0 and p.reference_tokens:
                tokens[p.condition] = p.reference_tokens
    values = {m: sums[m] / len(queries) for m in METRICS}
    prov = {"model": lm.identity.to_dict(), "n_queries": len(queries), "conditions": conditions,
            "queries": list(queries)[:20], "hook": hook_template("pattern"),
            "memory_configs": {n: b[0].config.to_dict() for n, b in memories.items()}}
    return AttentionComparison(conditions, values, tokens, prov)
