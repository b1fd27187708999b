"""Fast causal-tracing engine: the reference engine's scores at a fraction of the cost.

Three exact savings, each valid because the model is causal and deterministic:

1. **Reuse the corrupted run.** One clean and one corrupted pass record every layer's residual
   stream, MLP and attention outputs and attention keys/values. Restoring a cell whose first
   patched layer is ``s`` starts from the corrupted residual at ``s``: layers below ``s`` are
   never recomputed.
2. **Recompute only positions from the restored token on.** Positions before token ``t`` cannot
   see it, so their keys and values are the corrupted run's; they are passed as a per-layer
   prefix and only positions ``t..T-1`` are run.
3. **Logits at the last position only**, and only once per cell -- on Gemma's 262k vocabulary
   the unembedding is the most expensive part of a full pass.

Cells are batched: for one (kind, token) all layers' cells run together, each joining the batch
at the layer where its restoration starts. Restored tokens before the first subject token are
identical in the clean and corrupted runs, so their score is the corrupted score without a pass.
Patching happens through the same TransformerLens hook points as the reference engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from ..hooks import hook_name
from .config import TraceConfig, window_layers
from .corrupt import PreparedFact
from .metrics import Metric, resolve_metric

__all__ = ["fast_scores", "record_run", "RecordedRun"]

_OUT_SITE = {"mlp": "mlp_out", "attn": "attn_out"}
_SEVER = {"hidden_sever_mlp": "mlp", "hidden_sever_attn": "attn"}


@dataclass
class RecordedRun:
    """One recorded pass: residual stream per layer, sublayer outputs, attention keys/values."""

    resid: list[torch.Tensor]  # resid[j] = input of block j; resid[L] = final residual   [batch pos d_model]
    outs: dict[str, list[torch.Tensor]]  # "mlp"/"attn" -> per layer [batch pos d_model]
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]]


def record_run(lm: Any, ids: torch.Tensor, prep: PreparedFact | None, outs_needed: set[str]) -> RecordedRun:
    st = lm.stack
    h = st.embed(ids)
    if prep is not None:
        s0, s1 = prep.subject_range
        h = h.clone()
        h[:, s0:s1] += prep.noise
    outs: dict[str, list] = {k: [None] * lm.n_layers for k in outs_needed}
    hooks = []
    for k in outs_needed:
        for j in range(lm.n_layers):
            def cap(x, hook, k=k, j=j):
                outs[k][j] = x.detach().clone()
            hooks.append((hook_name(j, _OUT_SITE[k]), cap))
    resid, kv = [], {}
    with lm.bridge.hooks(fwd_hooks=hooks):
        for j in range(lm.n_layers):
            resid.append(h)
            h = st.layer(j, h, record=kv)
    resid.append(h)
    return RecordedRun(resid, outs, kv)


def _score(st: Any, resid: torch.Tensor, prep: PreparedFact, metric: Metric, chunk: int = 512) -> torch.Tensor:
    """``metric`` of each row's logits (float32 whatever the weight dtype), in row chunks."""
    out = []
    for i in range(0, resid.shape[0], chunk):
        out.append(metric(st.logits(resid[i:i + chunk]).float(), prep))
    return torch.cat(out)


def _start(kind: str, layer: int, cfg: TraceConfig, L: int) -> int:
    return layer + 1 if kind.startswith("hidden") else window_layers(kind, layer, cfg.window_for(L), L)[0]


@torch.no_grad()
def fast_scores(lm: Any, prep: PreparedFact, cfg: TraceConfig, kinds: tuple[str, ...], metric: Metric | None = None
                ) -> tuple[dict[str, Float[torch.Tensor, "layer pos"]], float, float]:
    """Scores per kind (``[layer, pos]``), the clean (high) and the corrupted (low) score."""
    st = lm.stack
    n, T, L = cfg.n_samples, prep.n_tokens, lm.n_layers
    s0, _ = prep.subject_range
    metric = resolve_metric(metric)
    ids = prep.ids[None].to(lm.device)
    needed = {k if k in _OUT_SITE else _SEVER[k] for k in kinds if k != "hidden"}
    clean = record_run(lm, ids, None, needed)
    corr = record_run(lm, ids.expand(n, T), prep, needed)
    high = float(_score(st, clean.resid[L][:, -1], prep, metric)[0])
    low = float(_score(st, corr.resid[L][:, -1], prep, metric).mean())

    patches: dict[str, Any] = {}  # hook name -> patch for the layer being run (set per layer below)

    def dispatcher(name: str):  # keyed by the name we registered: TL may report an aliased hook.name
        def dispatch(x, hook):
            fn = patches.get(name)
            return x if fn is None else fn(x)
        return dispatch

    names = [hook_name(j, _OUT_SITE[k]) for k in needed for j in range(L)]
    finals, where = [], []
    with lm.bridge.hooks(fwd_hooks=[(name, dispatcher(name)) for name in names]):
        for kind in kinds:
            for t in range(s0, T):
                rows, layers = _token_cells(lm, kind, t, clean, corr, cfg, patches)
                finals.append(rows)
                where.append((kind, t, layers))
    probs = _score(st, torch.cat(finals), prep, metric) if finals else torch.empty(0)
    out = {kind: torch.full((L, T), low) for kind in kinds}
    i = 0
    for kind, t, layers in where:
        k = len(layers) * n
        out[kind][torch.tensor(layers), t] = probs[i:i + k].view(len(layers), n).mean(1).to("cpu", torch.float32)
        i += k
    return out, high, low


def _token_cells(lm: Any, kind: str, t: int, clean: RecordedRun, corr: RecordedRun, cfg: TraceConfig, patches: dict
                 ) -> tuple[Float[torch.Tensor, "batch d_model"], list[int]]:
    """Final last-position residuals of every layer's cell restoring token ``t`` for ``kind``, in one
    layer-batched pass. Rows are cell-major (``cell * n_samples + sample``); returns (rows, cell layers)."""
    st = lm.stack
    n, L = cfg.n_samples, lm.n_layers
    w = cfg.window_for(L)
    starts = {layer: _start(kind, layer, cfg, L) for layer in range(L)}
    restored = kind in _OUT_SITE
    sever = _SEVER.get(kind)
    active: list[int] = []
    h = None

    def join(new: list[int], j: int):
        x = corr.resid[j][:, t:].repeat(len(new), 1, 1)
        if kind.startswith("hidden"):
            for ci, layer in enumerate(new):
                x[ci * n:(ci + 1) * n, 0] = clean.resid[layer + 1][0, t]
        return x

    for j in range(min(starts.values()), L):
        new = [layer for layer in range(L) if starts[layer] == j]
        if new:
            x = join(new, j)
            h = x if h is None else torch.cat([h, x])
            active += new
        patches.clear()
        if restored:
            rows = [ci for ci, layer in enumerate(active) if j in window_layers(kind, layer, w, L)]
            if rows:
                idx = (torch.tensor(rows)[:, None] * n + torch.arange(n)[None]).flatten()
                value = clean.outs[kind][j][0, t]

                def patch(x, idx=idx, value=value):
                    x = x.clone()
                    x[idx, 0] = value
                    return x

                patches[hook_name(j, _OUT_SITE[kind])] = patch
        if sever is not None:
            frozen = corr.outs[sever][j][:, t].repeat(len(active), 1)

            def freeze(x, frozen=frozen):
                x = x.clone()
                x[:, 0] = frozen
                return x

            patches[hook_name(j, _OUT_SITE[sever])] = freeze
        prefix = None
        if t > 0:
            k, v = corr.kv[j]
            prefix = {j: (k[:, :, :t].repeat(len(active), 1, 1, 1), v[:, :, :t].repeat(len(active), 1, 1, 1))}
        h = st.layer(j, h, pos0=t, prefix=prefix)
    patches.clear()
    late = [layer for layer in range(L) if starts[layer] == L]
    if late:
        x = join(late, L)
        h = x if h is None else torch.cat([h, x])
        active += late
    return h[:, -1], active
