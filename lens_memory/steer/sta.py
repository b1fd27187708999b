"""Steering Target Atoms (STA): a steering vector built from the SAE features that separate a behaviour.

Wang, Xu, Zhang et al. (2025), "Beyond Prompt Engineering: Robust Behavior Control in LLMs via
Steering Target Atoms" (ACL 2025). The residual activations on the answer tokens of the positive
and negative examples are encoded by a sparse autoencoder at the steering hook. Per feature ``j``:

* amplitude difference ``Δa_j = mean_pos a_j - mean_neg a_j`` (per-example means over answer tokens);
* frequency difference ``Δf_j = P_pos(a_j > 0) - P_neg(a_j > 0)`` over answer tokens.

Features whose ``Δa_j`` and ``Δf_j`` have the same sign are the consistent "target atoms";
``trim`` drops the smallest fraction of them by ``|Δa_j|`` (``trim = 0`` keeps them all). The kept
amplitude differences are decoded through the SAE decoder, ``v = Σ_j Δa_j W_dec[j]``, and ``v``
is rescaled to the norm of the CAA vector at the same hook, so that strengths are comparable
with CAA's. The result is an ordinary :class:`~lens_memory.steer.vector.SteeringVector`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float

from ..errors import LensMemoryError
from .activations import POSITIONS, ContrastActivations, contrast_activations
from .behaviors import Behavior, load_behavior
from .caa import resid_hook
from .vector import SteeringVector

__all__ = ["STAConfig", "sta", "sta_from_activations", "feature_differences", "FeatureDifferences"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class STAConfig:
    """STA settings.

    Attributes:
        trim: fraction of the sign-consistent features dropped, smallest ``|Δa|`` first (0 keeps all).
        sign_consistency: keep only features whose amplitude and frequency differences agree in sign.
        position: answer positions the activations are read at (as in :class:`~lens_memory.steer.caa.CAAConfig`).
        rescale_to_caa: rescale the decoded vector to the CAA vector's norm.
        n_pairs: use the first ``n_pairs`` training pairs (``None``: all).
        batch_size: sequences per forward pass.
    """

    trim: float = 0.5
    sign_consistency: bool = True
    position: str = "answer_mean"
    rescale_to_caa: bool = True
    n_pairs: int | None = None
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.trim, (int, float)) or isinstance(self.trim, bool) or not 0 <= self.trim < 1:
            raise LensMemoryError(f"STAConfig.trim must be in [0, 1), got {self.trim!r}")
        if self.position not in POSITIONS:
            raise LensMemoryError(f"STAConfig.position must be one of {POSITIONS}, got {self.position!r}")
        if self.n_pairs is not None and (not isinstance(self.n_pairs, int) or self.n_pairs < 1):
            raise LensMemoryError(f"STAConfig.n_pairs must be a positive int or None, got {self.n_pairs!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FeatureDifferences:
    """Per SAE feature: amplitude and activation-frequency differences between positive and negative answers."""

    amplitude: Float[torch.Tensor, "d_sae"]
    frequency: Float[torch.Tensor, "d_sae"]
    pos_mean: Float[torch.Tensor, "d_sae"]
    neg_mean: Float[torch.Tensor, "d_sae"]


@torch.no_grad()
def _encode(sae: Any, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    dt = sae.W_dec.dtype
    return torch.cat([sae.encode(x[i:i + batch].to(dt)).double() for i in range(0, len(x), batch)])


def feature_differences(sae: Any, acts: ContrastActivations) -> FeatureDifferences:
    """SAE amplitude and frequency differences on contrast activations (see the module docstring)."""
    sae = getattr(sae, "sae", sae)  # a TrainedSAE or a sae-lens SAE
    fp, fn = _encode(sae, acts.positive), _encode(sae, acts.negative)

    def per_example(f: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(acts.n_pairs, f.shape[1], dtype=torch.float64).index_add_(0, idx, f)
        return out / torch.bincount(idx, minlength=acts.n_pairs).clamp_min(1).double()[:, None]

    pm, nm = per_example(fp, acts.pos_index).mean(0), per_example(fn, acts.neg_index).mean(0)
    freq = (fp > 0).double().mean(0) - (fn > 0).double().mean(0)
    return FeatureDifferences(amplitude=pm - nm, frequency=freq, pos_mean=pm, neg_mean=nm)


def sta_from_activations(lm: Any, sae: Any, acts: ContrastActivations, layer: int, behavior: str,
                         cfg: STAConfig | None = None, info: dict[str, Any] | None = None) -> SteeringVector:
    """The STA vector from contrast activations already collected at ``layer``'s hook."""
    cfg = cfg or STAConfig()
    sae = getattr(sae, "sae", sae)
    d = feature_differences(sae, acts)
    keep = torch.ones_like(d.amplitude, dtype=torch.bool)
    if cfg.sign_consistency:
        keep &= torch.sign(d.amplitude) == torch.sign(d.frequency)
    keep &= d.amplitude != 0
    if cfg.trim > 0 and keep.any():
        mags = d.amplitude.abs()[keep]
        thr = torch.quantile(mags, cfg.trim)
        keep &= d.amplitude.abs() >= thr
    if not keep.any():
        raise LensMemoryError(f"STA kept no SAE feature for behaviour {behavior!r} (trim {cfg.trim}); lower trim")
    coef = torch.where(keep, d.amplitude, torch.zeros_like(d.amplitude))
    v = coef @ sae.W_dec.detach().double()
    caa_norm = float(acts.mean_difference().norm())
    if cfg.rescale_to_caa:
        v = v * (caa_norm / float(v.norm()))
    top = torch.argsort(coef.abs(), descending=True)[: min(20, int(keep.sum()))]
    return SteeringVector("sta", {layer: v.float()}, behavior, hook_template=acts.hook.replace(f".{layer}.", ".{layer}.", 1),
                          config=cfg.to_dict(), model=lm.identity.to_dict(),
                          info={"n_features": int(keep.sum()), "d_sae": int(coef.shape[0]), "caa_norm": caa_norm,
                                "top_features": top.tolist(), "top_amplitudes": coef[top].tolist(),
                                "n_pairs": acts.n_pairs, "position": acts.position, **(info or {})})


def sta(lm: Any, behavior: Behavior | str, sae: Any, layer: int, cfg: STAConfig | None = None, *,
        hook: str | None = None) -> SteeringVector:
    """Fit an STA steering vector at ``layer`` with ``sae`` (whose hook must be ``hook``, default resid_post)."""
    from .sae import check_sae

    cfg = cfg or STAConfig()
    b = load_behavior(behavior)
    lm.check_layer(layer)
    hook = hook or resid_hook(layer)
    check_sae(lm, getattr(sae, "sae", sae), hook)
    pairs = b.train[:cfg.n_pairs] if cfg.n_pairs else b.train
    t0 = time.perf_counter()
    acts = contrast_activations(lm, pairs, [hook], position=cfg.position, batch_size=cfg.batch_size)[hook]
    return sta_from_activations(lm, sae, acts, layer, b.name, cfg, {"seconds": time.perf_counter() - t0})
