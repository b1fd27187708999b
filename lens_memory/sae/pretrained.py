"""Pretrained SAEs (online): sae-lens releases, Gemma Scope 2 for the embedded Gemma 3 270M.

:func:`load_pretrained_sae` wraps ``SAE.from_pretrained``; for the embedded Gemma 3 270M the
release is ``gemma-scope-2-270m-pt-res`` (:data:`GEMMA_SCOPE_RELEASE`: residual stream after
layers 5, 9, 12 and 15; widths 16k to 1M). Gemma Scope (Lieberum et al. 2024) and Gemma Scope 2
publish JumpReLU SAEs for every layer of the Gemma models. Those SAEs were trained on the bf16
model, not on the embedded Q4_K_M-dequantized weights: measure them with
:func:`~lens_memory.sae.sae_quality` before trusting them. Release and id names are checked
offline, against sae-lens's bundled directory, before any download.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from ..errors import LensMemoryError, ModelUnavailableError
from .features import check_sae

if TYPE_CHECKING:  # sae_lens is imported when first used (it pulls in wandb and datasets)
    from sae_lens import SAE

__all__ = ["GEMMA_SCOPE_RELEASE", "load_pretrained_sae", "pretrained_sae_ids"]

#: sae-lens release of the Gemma Scope 2 residual-stream SAEs of Gemma 3 270M (pretrained)
GEMMA_SCOPE_RELEASE = "gemma-scope-2-270m-pt-res"


def pretrained_sae_ids(release: str = GEMMA_SCOPE_RELEASE) -> list[str]:
    """The SAE ids of a sae-lens release (from sae-lens's bundled directory; no network)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=3)
        raise LensMemoryError(f"unknown sae-lens release {release!r}" + (f" (did you mean {close}?)" if close else ""))
    return list(directory[release].saes_map)


def load_pretrained_sae(release: str = GEMMA_SCOPE_RELEASE, sae_id: str = "layer_9_width_16k_l0_medium",
                        lm: Any = None, *, device: str | None = None) -> "SAE":
    """``SAE.from_pretrained(release, sae_id)`` (needs the network), checked against ``lm`` if given.

    For the embedded model: ``release="gemma-scope-2-270m-pt-res"``, ids like
    ``layer_{5,9,12,15}_width_{16k,65k,262k,1m}_l0_{small,medium,big}`` (:func:`pretrained_sae_ids`).

    Raises:
        LensMemoryError: unknown release or id (checked offline, before any download).
        ModelUnavailableError: the weights cannot be downloaded (offline, no access ...).
        SAEMismatchError: the SAE does not fit ``lm`` (:func:`check_sae`).
    """
    from sae_lens import SAE

    ids = pretrained_sae_ids(release)
    if sae_id not in ids:
        close = difflib.get_close_matches(sae_id, ids, n=3) or ids[:3]
        raise LensMemoryError(f"unknown SAE id {sae_id!r} in release {release!r} (e.g. {close})")
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device or (str(lm.device) if lm is not None else "cpu"))
    except Exception as exc:  # noqa: BLE001 -- HF hub / connection / file errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelUnavailableError(
            f"cannot download SAE {sae_id!r} of release {release!r} ({type(exc).__name__}: {first[:200]}); "
            "it needs the network -- offline, train one with lens_memory.sae.train_sae"
        ) from None
    if lm is not None:
        check_sae(lm, sae, sae.cfg.metadata.hook_name)
    return sae
