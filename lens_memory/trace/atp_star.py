"""AtP*'s two corrections to attribution patching (Kramár, Lieberum, Shah & Nanda 2024, arXiv 2403.00745).

**QK fix (attention saturation).** AtP linearises the whole network, softmaxes included. When a patch moves an
attention score across a saturated softmax, the gradient says almost nothing about the change of the
pattern, and large effects are estimated as ~0 (false negatives). AtP* computes the pattern change of a query
or key node exactly -- the softmax of the patched attention scores -- and multiplies it by the gradient of the
metric with respect to the pattern, ``sum (A' - A) . dM/dA``, in place of the linear term.

Adapted to causal-tracing cells: a restored hidden state (``hook_resid_post`` of layer ``l`` at token ``t``) is
the input of layer ``l+1``, so the query and key of token ``t`` there are exactly the clean run's. The fix
runs layer ``l+1`` on the corrupted input with row ``t`` restored and records the exact pattern ``A'`` (a
pattern depends on queries and keys only, so this patches the query and key of ``t`` together), and replaces
the cell's first-order term through that pattern (the gradient path through ``A`` of layer ``l+1``, a
vector-Jacobian product) by ``sum (A' - A) . dM/dA``::

    atp*(l, t) = atp(l, t) - (r_clean - r_corr)_t . J_A^T dM/dA  +  sum_{head, query, key} (A' - A) . dM/dA

Preconditions, so what the fix leaves alone: hidden cells of the last layer (no attention reads them), cells
before the subject (nothing restored) and MLP / attention output cells (their restored value is not the input
of any one attention layer: it reaches the next layer's queries and keys only after the sublayers that follow
it, so there is no exact query/key patch without a forward pass per cell, which is what AtP avoids). The
paper treats each head's query and key as separate nodes; patching a token's query and key together is the
deviation this adaptation needs (the cell moves both), and it is the exact joint effect on the pattern.

**The QK fix corrects the next layer's attention only.** A restored state at layer ``l`` also changes the queries
and keys of layers ``l+2 ..``, through every layer in between. Those pattern changes stay in the estimate to first
order, as in plain AtP. The paper's query or key node feeds one pattern directly, the one its fix makes exact
(what happens after that pattern stays linear in the paper too). A restored residual state feeds the queries and keys
of *every* later layer directly, through the residual stream, and only the first is corrected. Measured on the
4-layer tiny model at noise 1.0 (float64,
``tests/unit/test_atp.py::test_qk_fix_corrects_only_the_next_layers_attention``): the exact effect through the
patterns of layers ``l+2 ..`` is found by freezing them at the corrupted run's. Its nonlinear part (that effect minus
its first-order term) is an error the QK-fixed estimate keeps, and it reaches 22% of the largest hidden effect
(layers 0-1). The QK-fixed estimate's error there is 60% / 21% of that effect, against plain AtP's 72% / 23%. At
layer ``L-2``, where the next layer is the only attention downstream, the fix lowers the error from 63% to 57%; the
rest is the MLP and norm nonlinearity, which no QK fix addresses. Correcting every later layer's pattern would need a
forward pass per cell and layer, which is what AtP avoids.

**GradDrop (cancellation).** Effects along different paths can cancel in the gradient. For every layer
``ell`` the gradient is recomputed with ``ell``'s residual-stream contribution passing no gradient, and the
estimate is ``c(n) = 1/(L-1) sum_ell |I_ell(n)|`` per noise sample (the paper's ``1/(L-1)``: the node's own
layer contributes a zero term, so a node with only a direct effect keeps its ``|AtP|``; hidden-state nodes sit
between layers and have no such zero term, so they are averaged over all ``L`` layers). GradDrop estimates the
*magnitude* of an effect, as the paper's ``c(n) = E|I(n)|``: with it, cells score ``low + E|effect|``. It costs
``L`` more forward and backward passes. A magnitude is compared like for like with ``E|exact effect|``, the exact
effect per noise sample in absolute value, averaged (:func:`lens_memory.localize.validate.exact_magnitude_trace`).
Against the signed mean, even a perfect ``E|effect|`` estimate ranks poorly wherever the samples disagree in sign.

**Ablation.** ``TraceConfig(engine="atp*", atp_fixes=...)`` selects the fixes: ``("qk",)``, ``("graddrop",)`` or
both (the default). :func:`lens_memory.localize.validate.atp_star_ablation` traces the three, each compared with the
exact quantity it estimates: the QK fix alone with the signed mean, the GradDrop arms with ``E|exact|``.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float

from ..hooks import hook_name
from .atp import corrupted_gradients, node_estimates, noised_embedding
from .config import TraceConfig
from .corrupt import PreparedFact
from .metrics import Metric

__all__ = ["corrected_estimates", "qk_fix", "graddrop"]


def corrected_estimates(lm: Any, prep: PreparedFact, cfg: TraceConfig, clean: dict, run: Any,
                        est: dict[str, torch.Tensor], metric: Metric) -> dict[str, torch.Tensor]:
    """Per-node estimates ``{kind: [n_samples layer pos]}`` with the corrections ``cfg.atp_fixes`` asks for."""
    delta = {}
    if "qk" in cfg.atp_fixes and "hidden" in est:
        delta["hidden"] = qk_fix(lm, prep, clean["hidden"], run.acts["hidden"], metric)
    if "graddrop" in cfg.atp_fixes:
        return graddrop(lm, prep, clean, metric, delta)
    return {k: (e + delta[k].to(e.device) if k in delta else e) for k, e in est.items()}


def _pattern_run(lm: Any, prep: PreparedFact, metric: Metric) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                                       list[torch.Tensor], list[torch.Tensor]]:
    """Corrupted pass keeping the graph: per layer the block input, the pattern, ``dM/dA`` and the pattern path's
    gradient at the block input (``J_A^T dM/dA``)."""
    st, L = lm.stack, lm.n_layers
    with torch.enable_grad():
        h = noised_embedding(lm, prep)
        pats: list = [None] * L

        def grab(x, hook, j):
            pats[j] = x
        hooks = [(hook_name(j, "pattern"), lambda x, hook, j=j: grab(x, hook, j)) for j in range(L)]
        inputs = []
        with lm.bridge.hooks(fwd_hooks=hooks):
            for j in range(L):
                inputs.append(h)
                h = st.layer(j, h)
        total = metric(st.logits(h[:, -1]).float(), prep).sum()
        g_pat = torch.autograd.grad(total, pats, retain_graph=True, allow_unused=True)
        g_pat = [torch.zeros_like(p) if g is None else g for p, g in zip(pats, g_pat)]
        vjp = [torch.autograd.grad(pats[j], inputs[j], grad_outputs=g_pat[j], retain_graph=True, allow_unused=True)[0]
               for j in range(L)]
    vjp = [torch.zeros_like(inputs[j]) if v is None else v for j, v in enumerate(vjp)]
    return ([x.detach() for x in inputs], [p.detach() for p in pats], [g.detach() for g in g_pat],
            [v.detach() for v in vjp])


@torch.no_grad()
def _patched_patterns(lm: Any, j: int, corr_in: torch.Tensor, clean_row: torch.Tensor, tokens: list[int]
                      ) -> Float[torch.Tensor, "token batch head query key"]:
    """Layer ``j``'s exact attention pattern when the input row of each token in ``tokens`` is the clean one."""
    n, T, _ = corr_in.shape
    x = corr_in.repeat(len(tokens), 1, 1)
    for i, t in enumerate(tokens):
        x[i * n:(i + 1) * n, t] = clean_row[t]
    got: list[torch.Tensor] = []
    with lm.bridge.hooks(fwd_hooks=[(hook_name(j, "pattern"), lambda a, hook: got.append(a.detach()))]):
        lm.stack.layer(j, x)
    return got[0].view(len(tokens), n, *got[0].shape[1:])


def qk_fix(lm: Any, prep: PreparedFact, clean_hidden: list[torch.Tensor], corr_hidden: list[torch.Tensor],
           metric: Metric) -> Float[torch.Tensor, "n_samples layer pos"]:
    """The QK fix's change to each hidden cell's per-sample estimate (zero where its preconditions fail)."""
    L, T, s0 = lm.n_layers, prep.n_tokens, prep.subject_range[0]
    n = prep.noise.shape[0]
    inputs, pats, g_pat, vjp = _pattern_run(lm, prep, metric)
    out = torch.zeros(n, L, T)
    tokens = list(range(s0, T))
    for layer in range(L - 1):
        j = layer + 1  # the attention that reads the restored state
        clean_row = clean_hidden[layer][0]
        exact = _patched_patterns(lm, j, inputs[j], clean_row, tokens)  # [tok n head q k]
        dA = (exact.float() - pats[j].float()[None]) * g_pat[j].float()[None]
        linear = ((clean_row.float()[None] - corr_hidden[layer].float()) * vjp[j].float()).sum(-1)  # [n pos]
        for i, t in enumerate(tokens):
            out[:, layer, t] = dA[i].flatten(1).sum(1).cpu() - linear[:, t].cpu()
    return out


def graddrop(lm: Any, prep: PreparedFact, clean: dict[str, list[torch.Tensor]], metric: Metric,
             qk_delta: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """GradDrop: per node and sample, the mean over dropped layers of ``|estimate with that layer's gradient
    dropped|`` (``1/(L-1)`` for sublayer nodes, whose own layer's term is 0; ``1/L`` for hidden states).

    ``qk_delta[kind]``: the QK fix's correction (computed with the full gradient), added to each dropped-layer
    estimate of a hidden cell except when the dropped layer is the one whose attention the fix corrects (then
    the cell has no gradient path through that pattern to correct).
    """
    L, kinds = lm.n_layers, tuple(clean)
    qk_delta = qk_delta or {}
    total = {k: 0.0 for k in kinds}
    for drop in range(L):
        run = corrupted_gradients(lm, prep, kinds, metric, drop_layer=drop)
        for k in kinds:
            e = node_estimates(clean[k], run, k).cpu()
            if k in qk_delta:
                d = qk_delta[k].clone()
                if drop >= 1:
                    d[:, drop - 1] = 0.0  # the cell at layer drop-1 is read by the dropped layer's attention
                e = e + d
            total[k] = total[k] + e.abs()
    return {k: total[k] / (L if k == "hidden" else max(L - 1, 1)) for k in kinds}
