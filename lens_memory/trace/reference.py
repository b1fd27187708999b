"""Reference causal-tracing engine: what ROME's code does, one cell at a time.

For every (layer, token) cell it runs one full forward pass of the batch
``[clean, noised x n_samples]`` through the TransformerLens bridge with logits at every
position, adds the noise at ``hook_embed``, copies the clean row's activation into the noised
rows at the restored hook(s), and scores the mean probability of the answer at the last
position over the noised rows. Severed-path cells take two passes: the first records the
corrupted MLP (or attention) outputs, the second restores the hidden state and freezes those
outputs at the restored token in every layer. Slow by design: it is the ground truth the fast
engine is tested and benchmarked against.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float

from ..hooks import hook_name
from .metrics import Metric, resolve_metric
from .config import TraceConfig, restore_hook, window_layers
from .corrupt import PreparedFact

__all__ = ["reference_scores", "restored_score"]


def _batch(lm: Any, prep: PreparedFact, n: int) -> torch.Tensor:
    return prep.ids[None].repeat(n + 1, 1).to(lm.device)


def _noise_hook(prep: PreparedFact):
    s0, s1 = prep.subject_range

    def add_noise(x, hook):
        x = x.clone()
        x[1:, s0:s1] += prep.noise
        return x

    return ("hook_embed", add_noise)


@torch.no_grad()
def restored_score(lm: Any, prep: PreparedFact, restore: list[tuple[str, int]] = (),
                   freeze: list[tuple[str, int]] = (), metric: Metric | None = None) -> tuple[float, float]:
    """Mean answer probability over the noised rows when the clean activation is copied into them
    at each ``(hook_name, token)`` of ``restore``, and the activations at ``freeze`` are held at
    their corrupted values (first pass). Returns ``(score, clean_score)``."""
    n = prep.noise.shape[0]
    batch = _batch(lm, prep, n)
    noise = _noise_hook(prep)
    hooks = []
    by_hook: dict[str, list[int]] = {}
    for name, t in restore:
        by_hook.setdefault(name, []).append(t)
    for name, toks in by_hook.items():
        def patch(x, hook, toks=toks):
            x = x.clone()
            x[1:, toks] = x[0, toks]
            return x
        hooks.append((name, patch))
    if freeze:
        first: dict[str, torch.Tensor] = {}

        def keep(x, hook):
            first[hook.name] = x.clone()

        lm.bridge.run_with_hooks(batch, fwd_hooks=[noise] + [(name, keep) for name in {nm for nm, _ in freeze}])
        fz: dict[str, list[int]] = {}
        for name, t in freeze:
            fz.setdefault(name, []).append(t)
        for name, toks in fz.items():
            def unpatch(x, hook, toks=toks):
                x = x.clone()
                x[1:, toks] = first[hook.name][1:, toks]
                return x
            hooks.append((name, unpatch))
    logits = lm.bridge.run_with_hooks(batch, fwd_hooks=[noise, *hooks])
    scores = resolve_metric(metric)(logits[:, -1].float(), prep)  # float32 whatever the weight dtype
    return float(scores[1:].mean()), float(scores[0])


@torch.no_grad()
def reference_scores(lm: Any, prep: PreparedFact, cfg: TraceConfig, kinds: tuple[str, ...],
                     metric: Metric | None = None) -> tuple[dict[str, Float[torch.Tensor, "layer pos"]], float, float]:
    """Scores per kind (``[layer, pos]``), the clean (high) and the corrupted (low) score."""
    T, L = prep.n_tokens, lm.n_layers
    w = cfg.window_for(L)
    low, high = restored_score(lm, prep, metric=metric)
    out: dict[str, torch.Tensor] = {}
    for kind in kinds:
        scores = torch.zeros(L, T)
        sever = {"hidden_sever_mlp": "mlp_out", "hidden_sever_attn": "attn_out"}.get(kind)
        for layer in range(L):
            for t in range(T):
                restore = [(restore_hook(kind, j), t) for j in window_layers(kind, layer, w, L)]
                freeze = [(hook_name(j, sever), t) for j in range(L)] if sever else []
                scores[layer, t] = restored_score(lm, prep, restore, freeze, metric)[0]
        out[kind] = scores
    return out, high, low
