"""Attribution patching: every causal-tracing cell estimated from gradients, in a few passes.

Exact causal tracing (:mod:`.fast`, :mod:`.reference`) runs the model once per cell. Attribution
patching (AtP; Nanda 2023, "Attribution Patching: Activation Patching At Industrial Scale"; Syed, Rager &
Conmy 2023; Kramár, Lieberum, Shah & Nanda 2024, "AtP*: An efficient and scalable method for localizing
LLM behaviour to components") replaces each patched run by its first-order Taylor expansion around the
run being patched. For causal tracing the patched run is the *corrupted* one and the patch *restores* a
clean activation ``a_clean`` at node ``n`` (a hidden state, MLP output or attention output at one token),
so for each noise sample ``s`` (Kramár et al. linearise around the clean run and patch noise in; tracing
patches the other way, so the expansion is around the corrupted run -- the same estimator, denoising)::

    M(corrupted_s | do(n <- a_clean)) - M(corrupted_s)  ~=  (a_clean - a_corr,s) . dM/da |corrupted_s

One clean pass, one corrupted pass and one backward pass (all noise samples in one batch: each row's
metric depends on its own row only) give every node's gradient at once. A cell's estimated score is the
corrupted score plus the mean over samples of that estimate, so the result is a
:class:`~lens_memory.trace.TraceResult` like exact tracing's and every plot, AIE and layer suggestion
works unchanged; ``provenance["estimator"]`` says which estimator made it. The estimate is the signed
mean over samples, the quantity tracing averages (the AIE); Kramár et al. rank nodes by ``E|I(n)|``, which AtP*'s
GradDrop estimates (:mod:`.atp_star`). Each is validated against the exact value of what it estimates: the signed mean,
or ``E|exact effect|`` (:func:`lens_memory.localize.validate.exact_magnitude_trace`).
Tokens before the subject are identical in both runs, so their estimated effect is exactly 0, as the exact
engines' is.

**Windows (a deviation).** An MLP / attention cell restores a window of layers at once. AtP's nodes are
single layers, and the estimate of a window cell here is the *sum of its layers' single-node estimates*.
That is not the first-order expansion of the joint patch: layer ``j+1``'s output at the token is clamped
to its clean value in the joint patch, so the part of its change that layer ``j``'s restoration causes is
counted twice. The exact expansion needs a gradient with a different clamp per (window, token), i.e. a
backward pass per cell, which is what AtP avoids. With ``window=1`` every kind is first-order exact: on the tiny
float64 model the largest error relative to the largest effect falls from 3-17% at noise scale 0.1 to
0.3-1.4% at 0.01, linearly in the scale as a first-order estimate's must (tested); :class:`~lens_memory.localize.AtPValidation`
measures how far the windowed sums are from exact tracing on a real model.

AtP* (Kramár et al. 2024) adds two corrections, applied when ``TraceConfig(engine="atp*")``:

* **QK fix** (:mod:`.atp_star`): attention softmaxes saturate, so their linearisation misses effects
  that go through a change of the attention pattern. For the restored token's query and key in the attention
  layer that reads the restored state, the pattern change is computed exactly (softmax of the patched
  attention scores) and multiplied by the gradient with respect to the pattern, in place of the linear term.
* **GradDrop** (:mod:`.atp_star`): gradients of different paths can cancel; the estimate is recomputed
  with the gradient through each layer's residual contribution dropped in turn.

Only the three restoration kinds (``hidden``, ``mlp``, ``attn``) are estimated; severed paths need a
second patch, which a first-order estimate of one patch does not express, and raise an error naming the
exact engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from ..hooks import hook_name
from .config import TraceConfig, window_layers
from .corrupt import PreparedFact
from .fast import record_run
from .metrics import Metric, resolve_metric

__all__ = ["atp_scores", "GradRun", "corrupted_gradients", "node_estimates", "noised_embedding", "ATP_KINDS"]

#: restorations attribution patching estimates
ATP_KINDS = ("hidden", "mlp", "attn")
_OUT_SITE = {"mlp": "mlp_out", "attn": "attn_out"}


@dataclass
class GradRun:
    """The corrupted batch's activations at every node and the metric's gradient there.

    ``acts[kind][layer]`` / ``grads[kind][layer]`` are ``[n_samples pos d_model]`` (``hidden`` = the block's
    output, ``hook_resid_post``); ``scores`` the metric per noise sample.
    """

    acts: dict[str, list[torch.Tensor]]
    grads: dict[str, list[torch.Tensor]]
    scores: torch.Tensor


def noised_embedding(lm: Any, prep: PreparedFact) -> Float[torch.Tensor, "n_samples pos d_model"]:
    """The corrupted run's input: the embeddings of ``prep``'s prompt, one row per noise sample, with that
    sample's noise added over the subject tokens; a leaf that requires grad (call inside ``enable_grad``)."""
    n, T = prep.noise.shape[0], prep.n_tokens
    s0, s1 = prep.subject_range
    h = lm.stack.embed(prep.ids[None].to(lm.device).expand(n, T)).clone()
    h[:, s0:s1] = h[:, s0:s1] + prep.noise
    return h.requires_grad_(True)


def corrupted_gradients(lm: Any, prep: PreparedFact, kinds: tuple[str, ...], metric: Metric,
                        drop_layer: int | None = None) -> GradRun:
    """One corrupted forward pass (all noise samples) and one backward pass of the summed metric.

    ``drop_layer``: GradDrop -- the block's contribution to the residual stream at that layer passes its value
    but no gradient (``h + stop_grad(block(h) - h)``), so every upstream gradient misses the paths through it.
    """
    st, L = lm.stack, lm.n_layers
    with torch.enable_grad():
        h = noised_embedding(lm, prep)
        acts: dict[str, list] = {k: [None] * L for k in kinds}
        hooks = []
        for k in kinds:
            if k in _OUT_SITE:
                for j in range(L):
                    def grab(x, hook, k=k, j=j):
                        acts[k][j] = x
                    hooks.append((hook_name(j, _OUT_SITE[k]), grab))
        with lm.bridge.hooks(fwd_hooks=hooks):
            for j in range(L):
                out = st.layer(j, h)
                h = out if j != drop_layer else h + (out - h).detach()
                if "hidden" in acts:
                    acts["hidden"][j] = h
        scores = metric(st.logits(h[:, -1]).float(), prep)
        flat = [(k, j) for k in kinds for j in range(L)]
        grads = torch.autograd.grad(scores.sum(), [acts[k][j] for k, j in flat], allow_unused=True)
    g: dict[str, list] = {k: [None] * L for k in kinds}
    for (k, j), gr in zip(flat, grads):
        g[k][j] = torch.zeros_like(acts[k][j]) if gr is None else gr.detach()
        acts[k][j] = acts[k][j].detach()
    return GradRun(acts=acts, grads=g, scores=scores.detach())


def node_estimates(clean_acts: list[torch.Tensor], run: GradRun, kind: str
                   ) -> Float[torch.Tensor, "n_samples layer pos"]:
    """Per noise sample, layer and token: ``(a_clean - a_corr) . dM/da`` at the node (first-order restoration)."""
    out = [((clean_acts[j].float() - run.acts[kind][j].float()) * run.grads[kind][j].float()).sum(-1)
           for j in range(len(clean_acts))]
    return torch.stack(out, dim=1)


def clean_activations(lm: Any, prep: PreparedFact, kinds: tuple[str, ...]
                      ) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor]:
    """The clean run's activation at every node of ``kinds`` (``[1 pos d_model]`` per layer) and its final
    residual at the last position ``[1 d_model]``."""
    run = record_run(lm, prep.ids[None].to(lm.device), None, {k for k in kinds if k in _OUT_SITE})
    out = {k: run.outs[k] for k in kinds if k in _OUT_SITE}
    if "hidden" in kinds:
        out["hidden"] = run.resid[1:]
    return out, run.resid[-1][:, -1]


def windowed(per_layer: Float[torch.Tensor, "n_samples layer pos"], kind: str, window: int
             ) -> Float[torch.Tensor, "n_samples layer pos"]:
    """Cell estimates from per-layer node estimates: an MLP / attention cell sums its window's layers."""
    L = per_layer.shape[1]
    if kind == "hidden":
        return per_layer
    return torch.stack([per_layer[:, window_layers(kind, layer, window, L)].sum(1) for layer in range(L)], dim=1)


@torch.no_grad()
def atp_scores(lm: Any, prep: PreparedFact, cfg: TraceConfig, kinds: tuple[str, ...], metric: Metric | None = None
               ) -> tuple[dict[str, Float[torch.Tensor, "layer pos"]], float, float]:
    """Estimated scores per kind (``[layer, pos]``), the clean (high) and the corrupted (low) score.

    Same contract as :func:`~lens_memory.trace.fast.fast_scores`; ``cfg.engine`` is ``"atp"`` or ``"atp*"``.
    """
    bad = [k for k in kinds if k not in ATP_KINDS]
    if bad:
        raise ValueError(f"attribution patching estimates the kinds {list(ATP_KINDS)}, not {bad}; trace severed "
                         f"paths with TraceConfig(engine='fast') or engine='reference'")
    metric = resolve_metric(metric)
    L, s0 = lm.n_layers, prep.subject_range[0]
    clean, final = clean_activations(lm, prep, kinds)
    high = float(metric(lm.stack.logits(final).float(), prep)[0])
    run = corrupted_gradients(lm, prep, kinds, metric)
    low = float(run.scores.mean())
    window = cfg.window_for(L)
    est = {kind: node_estimates(clean[kind], run, kind).cpu() for kind in kinds}
    if cfg.engine == "atp*":
        from .atp_star import corrected_estimates

        est = corrected_estimates(lm, prep, cfg, clean, run, est, metric)
    out = {}
    for kind in kinds:
        cell = windowed(est[kind], kind, window).mean(0)
        cell[:, :s0] = 0.0
        out[kind] = (low + cell).to("cpu", torch.float32)
    return out, high, low

