"""An SAE at a hook of a model: does it fit (:func:`check_sae`), and what do its features read.

:func:`check_sae` refuses an SAE whose input width, hook or model does not match, naming the
value. :func:`feature_acts` encodes the activations at the hook, from a forward pass that stops
at the hook's block (:class:`~lens_memory.stack.DecoderStack`: no later block, no logits).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from ..errors import ArtifactMismatchError
from ..hooks import capture, check_hook_names
from .config import _hook_layer, resid_post_hook

if TYPE_CHECKING:  # sae_lens is imported when first used (it pulls in wandb and datasets)
    from sae_lens import SAE

__all__ = ["SAEMismatchError", "check_sae", "feature_acts"]

log = logging.getLogger(__name__)

_D_MODEL_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out", "hook_attn_out",
                  "hook_in", "hook_out")


class SAEMismatchError(ArtifactMismatchError, ValueError):
    """An SAE does not fit the model or hook it is used with (width, hook or model)."""



def _norm_model_name(name: str) -> str:
    return name.strip().split("/")[-1].lower()


def _act_width(act: torch.Tensor, sae: Any = None) -> int:
    if act.ndim >= 4 and sae is not None and getattr(sae.cfg, "reshape_activations", "none") == "hook_z":
        return int(act.shape[-2] * act.shape[-1])
    return int(act.shape[-1])


def _hook_width(lm: Any, hook: str, sae: Any = None) -> int:
    if hook.rsplit(".", 1)[-1] in _D_MODEL_HOOKS and hook.count(".") == 2:
        return lm.d_model
    bos = lm.tokenizer.bos_token_id
    ids = torch.tensor([[bos if bos is not None else 0, 0]], dtype=torch.long)
    return _act_width(capture(lm, ids, [hook], early_stop=True)[hook], sae)


def check_sae(lm: Any, sae: "SAE", hook: str | None = None) -> str:
    """Refuse an SAE that does not fit ``lm`` at ``hook``; return the hook name.

    Checked: the hook exists on the model; the SAE's recorded hook (``sae.cfg.metadata.hook_name``)
    is ``hook``; its recorded model (``metadata.model_name``, organisation prefix and case
    ignored, so ``google/gemma-3-270m`` fits ``gemma-3-270m``) is ``lm``'s; its input width
    ``sae.cfg.d_in`` is the activation width at the hook. Unrecorded metadata is not checked. An
    SAE trained on other weights of the same model (e.g. before an edit) is accepted with a warning.

    Raises:
        SAEMismatchError: naming the offending value and the expected one.
    """
    meta = sae.cfg.metadata
    recorded = meta.hook_name if meta is not None else None
    hook = hook or recorded
    if not hook:
        raise SAEMismatchError("the SAE records no hook name (cfg.metadata.hook_name); pass hook=... explicitly")
    try:
        check_hook_names(lm, [hook])
    except KeyError as exc:
        raise SAEMismatchError(exc.args[0]) from None
    if recorded and recorded != hook:
        raise SAEMismatchError(f"SAE was trained at hook {recorded!r}, not at {hook!r}")
    model = meta.model_name if meta is not None else None
    if model and _norm_model_name(str(model)) != _norm_model_name(lm.name):
        raise SAEMismatchError(f"SAE was trained on model {model!r}, not on {lm.name!r}")
    width = _hook_width(lm, hook, sae)
    if int(sae.cfg.d_in) != width:
        raise SAEMismatchError(f"SAE input width d_in={sae.cfg.d_in} does not match the width {width} of "
                               f"{hook!r} on {lm.name}")
    state = meta.get("lens_memory_state_key") if meta is not None else None
    if state and state != lm.state_key():
        log.warning("SAE at %s was trained on other weights of %s (state %s…, now %s…)", hook, lm.name,
                    str(state)[:12], lm.state_key()[:12])
    return hook


def _stack_or_none(lm: Any) -> Any:
    from ..stack import UnsupportedArchitectureError

    try:
        return lm.stack
    except UnsupportedArchitectureError:
        return None


@torch.no_grad()
def _activations(lm: Any, hook: str, ids: torch.Tensor) -> torch.Tensor:
    """Activations at ``hook`` for ``ids`` ``[batch pos]``, from a pass that stops at the hook's block."""
    ids = ids.to(lm.device)
    stack = _stack_or_none(lm)
    layer = _hook_layer(hook)
    if stack is not None and hook == resid_post_hook(layer):
        return stack.run(stack.embed(ids), 0, layer + 1)
    return capture(lm, ids, [hook], early_stop=True)[hook]


@torch.no_grad()
def feature_acts(lm: Any, sae: "SAE", ids: Int[torch.Tensor, "batch pos"],
                 hook: str | None = None) -> Float[torch.Tensor, "batch pos d_sae"]:
    """SAE feature activations at every position of ``ids`` (forward pass stops at the hook's block).

    Position 0 is BOS when ids come from :meth:`LensModel.encode` or :func:`token_blocks`; SAEs
    trained here never saw it, so its features are not meaningful.
    """
    hook = check_sae(lm, sae, hook)
    if ids.ndim == 1:
        ids = ids[None]
    return sae.encode(_activations(lm, hook, ids).to(sae.device, sae.dtype))

