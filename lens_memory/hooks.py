"""Small helpers over TransformerLens hook points, and the one builder of hook names.

:func:`hook_name` is the only place that spells a hook name: ``hook_name(6, "resid_post")`` is
``"blocks.6.hook_resid_post"``. The sites (:data:`SITES`) are TransformerLens' names on the
TransformerBridge: the residual stream before/after a block, the attention and MLP outputs, the
attention pattern, and the input (ROME's key ``k``) and output (value ``v``) of an MLP's output
projection.

:func:`capture` records activations by TL hook name and stops the forward pass as soon as
every requested activation has been seen -- a forward pass "to the layer", with no later
block, final norm or unembedding computed. It works for every architecture the bridge wraps,
because it only relies on hooks firing in order.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["capture", "check_hook_names", "hook_name", "hook_template", "SITES"]

#: site -> the hook's name inside block ``L`` (``blocks.L.<site name>``)
SITES: dict[str, str] = {
    "resid_pre": "hook_resid_pre",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "pattern": "attn.hook_pattern",
    "mlp_key": "mlp.out.hook_in",     # input of the MLP output projection: ROME's key k
    "mlp_value": "mlp.out.hook_out",  # output of the MLP output projection: ROME's value v
}


def hook_name(layer: int, site: str = "resid_post") -> str:
    """The TransformerLens hook name of ``site`` in block ``layer``, e.g. ``"blocks.6.hook_resid_post"``."""
    if site not in SITES:
        raise ValueError(f"unknown hook site {site!r}; known: {sorted(SITES)}")
    return f"blocks.{int(layer)}.{SITES[site]}"


def hook_template(site: str = "resid_post") -> str:
    """``hook_name`` with a ``{layer}`` placeholder (for artifacts that act at several layers)."""
    if site not in SITES:
        raise ValueError(f"unknown hook site {site!r}; known: {sorted(SITES)}")
    return "blocks.{layer}." + SITES[site]


class _Done(Exception):
    """Raised inside a hook to end a forward pass early."""


def check_hook_names(lm: Any, names: Sequence[str]) -> None:
    """Raise ``KeyError`` naming the first hook name the model does not have."""
    known = lm.bridge.hook_dict
    for n in names:
        if n not in known:
            raise KeyError(f"hook {n!r} does not exist on {lm.name} (e.g. 'blocks.0.hook_resid_post')")


@torch.no_grad()
def capture(lm: Any, ids: torch.Tensor, names: Sequence[str], *,
            index: tuple[torch.Tensor, torch.Tensor] | None = None, early_stop: bool = True) -> dict[str, torch.Tensor]:
    """Activations at ``names`` for the token batch ``ids`` ``[batch pos]``.

    Args:
        index: ``(rows, positions)`` to keep only those entries (result ``[n, d]``); else the
            whole ``[batch pos d]`` activation is returned.
        early_stop: end the pass once every name has fired (default).

    Returns CPU tensors whatever the model's device: statistics over captured activations are
    computed on the CPU (float64 where it matters); appliers move what they add back to the model.
    """
    names = list(dict.fromkeys(names))
    check_hook_names(lm, names)
    got: dict[str, torch.Tensor] = {}

    def grab(x: torch.Tensor, hook: Any, name: str) -> None:
        t = (x[index[0], index[1]] if index is not None else x).detach()
        got[name] = t.clone() if t.device.type == "cpu" else t.cpu()  # analyses work on CPU copies
        if early_stop and len(got) == len(names):
            raise _Done

    with lm.bridge.hooks(fwd_hooks=[(n, lambda x, hook, n=n: grab(x, hook, n)) for n in names]):
        try:
            lm.hf.base_model(input_ids=ids.to(lm.device))
        except _Done:
            pass
    missing = [n for n in names if n not in got]
    if missing:
        raise KeyError(f"hooks {missing} did not fire during the forward pass of {lm.name}")
    return got
