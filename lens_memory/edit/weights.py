"""The MLP as a linear key-value memory: where ROME and MEMIT read keys and write values.

Geva et al. (2021) and Meng et al. (2022) view an MLP's output projection ``W_out`` as a
linear associative memory: the *key* ``k`` is the projection's input (``act(W_in x)`` or, for
gated MLPs, ``act(W_gate x) * W_up x``) and the *value* ``v = W_out k (+ b)`` its output.
Editing a fact means changing ``W_out`` so that the subject's key maps to a new value.

This module finds that projection in any architecture through the TransformerLens bridge:
its input is the hook ``blocks.L.mlp.out.hook_in``, its output ``blocks.L.mlp.out.hook_out``,
and the weight is the wrapped ``nn.Linear`` (Gemma, Llama, GPT-J) or ``Conv1D`` (GPT-2, stored
transposed). Deltas are always expressed in the linear orientation ``[d_model, d_mlp]``.

Gemma 2/3 and OLMo 2 put an RMSNorm *after* the MLP (``post_feedforward_layernorm``), so the residual stream receives
``norm(W_out k)``, not ``W_out k``. :func:`post_norm` exposes it so that callers can optimise
values through it (ROME) or map a residual-stream change back to the projection's output
(MEMIT, :func:`residual_to_value`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from jaxtyping import Float

from ..hooks import hook_name

__all__ = ["key_hook", "value_hook", "out_proj", "proj_weight", "to_stored", "linear_weight", "post_norm",
           "residual_to_value", "tensor_sha256"]


def key_hook(layer: int) -> str:
    """TL hook name of the MLP key (input of the output projection) at ``layer``."""
    return hook_name(layer, "mlp_key")


def value_hook(layer: int) -> str:
    """TL hook name of the MLP value (output of the output projection, before any post-norm)."""
    return hook_name(layer, "mlp_value")


def out_proj(lm: Any, layer: int) -> torch.nn.Module:
    """The wrapped output-projection module (``nn.Linear`` or GPT-2's ``Conv1D``) of ``layer``."""
    lm.check_layer(layer)
    bridge_linear = lm.bridge.blocks[layer].mlp.out
    return getattr(bridge_linear, "original_component", bridge_linear)


def _is_conv1d(mod: torch.nn.Module) -> bool:
    return type(mod).__name__ == "Conv1D"


def proj_weight(lm: Any, layer: int) -> torch.nn.Parameter:
    """The projection's weight parameter as stored (``[d_mlp, d_model]`` for Conv1D)."""
    return out_proj(lm, layer).weight


def to_stored(lm: Any, layer: int, delta: Float[torch.Tensor, "d_model d_mlp"]) -> torch.Tensor:
    """``delta`` (linear orientation) in the stored orientation of the layer's weight."""
    return delta.T if _is_conv1d(out_proj(lm, layer)) else delta


def linear_weight(lm: Any, layer: int) -> Float[torch.Tensor, "d_model d_mlp"]:
    """The projection's weight in linear orientation (a view; do not modify)."""
    w = proj_weight(lm, layer)
    return w.T if _is_conv1d(out_proj(lm, layer)) else w


def post_norm(lm: Any, layer: int) -> torch.nn.Module | None:
    """The norm applied to the MLP output before it joins the residual stream, else ``None``.

    Gemma 2/3 and OLMo 2 call it ``post_feedforward_layernorm`` (OLMo 2 has no pre-MLP norm at
    all); the TransformerLens bridge exposes Gemma's as ``ln2_post`` but not OLMo 2's, so the
    Hugging Face block is asked first.
    """
    block = lm.bridge.blocks[layer]
    hf_block = getattr(block, "original_component", None)
    norm = getattr(hf_block, "post_feedforward_layernorm", None) if hf_block is not None else None
    if norm is None:
        norm = getattr(block, "ln2_post", None)
    return None if norm is None else getattr(norm, "original_component", norm)


def residual_to_value(lm: Any, layer: int, value: Float[torch.Tensor, "batch d_model"],
                      residual_change: Float[torch.Tensor, "batch d_model"]) -> Float[torch.Tensor, "batch d_model"]:
    """Change of the projection output that moves the MLP's residual contribution by ``residual_change``.

    Without a post-norm this is ``residual_change`` itself and exact. With an RMSNorm
    ``n(y) = g * y / rms(y)`` after the MLP (Gemma 2/3, OLMo 2) the reachable contributions are only
    ``{m : rms(m / g) = 1}``: the norm fixes their size, so the wanted ``m' = n(value) + residual_change``
    is in general *not* reachable at one layer. We take the reachable ``m`` closest to ``m'``
    (:func:`_closest_normed`) and the pre-norm ``y' = s m / g`` closest to ``value`` (``s > 0``;
    ``n`` is scale-invariant). MEMIT spreads the rest over the later layers, which see the
    remaining residual. The single-layer miss is measured in the tests and the README.
    Gains are clamped away from zero (``|g| >= 1e-3 max|g|``) to keep the inverse finite.
    """
    norm = post_norm(lm, layer)
    if norm is None:
        return residual_change
    with torch.no_grad():
        ones = torch.ones(1, value.shape[-1], dtype=value.dtype, device=value.device)
        eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 0.0)) or 0.0)
        g = norm(ones)[0] * (1.0 + eps) ** 0.5  # the effective per-channel gain
        floor = 1e-3 * g.abs().max()
        g = torch.where(g.abs() < floor, torch.where(g < 0, -floor, floor), g)
        x = _closest_normed((norm(value) + residual_change) / g, g)
        s = (x * value).sum(-1, keepdim=True) / (x * x).sum(-1, keepdim=True)
        s_rms = value.pow(2).mean(-1, keepdim=True).sqrt() / x.pow(2).mean(-1, keepdim=True).sqrt()
        s = torch.where(s > 0, s, s_rms)
        return s * x - value


def _closest_normed(a: Float[torch.Tensor, "batch d_model"], g: Float[torch.Tensor, "d_model"],
                    iters: int = 200) -> Float[torch.Tensor, "batch d_model"]:
    """``argmin_x Σ g²(x - a)²`` subject to ``mean(x²) = 1``: ``x = g² a / (g² + μ)``, ``μ`` by bisection."""
    g2 = (g * g).double()
    a = a.double()
    d = a.shape[-1]

    def msq(mu: torch.Tensor) -> torch.Tensor:
        return ((g2 * a / (g2 + mu[:, None])) ** 2).sum(-1) / d

    lo = torch.full(a.shape[:1], -float(g2.min()) * (1 - 1e-12), dtype=torch.float64)
    hi = torch.full(a.shape[:1], 1.0, dtype=torch.float64)
    while bool((msq(hi) > 1).any()):  # grow the bracket until mean(x²) <= 1 at hi
        hi = torch.where(msq(hi) > 1, hi * 4, hi)
    for _ in range(iters):
        mid = (lo + hi) / 2
        big = msq(mid) > 1
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    return (g2 * a / (g2 + hi[:, None])).to(a.dtype)


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    t = t.detach().to("cpu").clone(memory_format=torch.contiguous_format)  # standard strides, also for [d, 1]
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
