"""How an SAE is trained: :class:`SAETrainConfig` (validated on construction) and hook names.

The config is a frozen dataclass whose every field is checked in ``__post_init__``; a bad value
raises :class:`SAEConfigError` naming the field and the value. :meth:`SAETrainConfig.key` hashes
the config for the cache of trained SAEs (:mod:`lens_memory.sae.training`).

Hooks are TransformerLens names; an SAE reads one inside a block, by default the residual stream
after it (:func:`resid_post_hook`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ..hooks import hook_name
from ..errors import LensMemoryError

__all__ = ["SAEConfigError", "SAETrainConfig", "resid_post_hook"]

_ARCHITECTURES = ("topk", "standard")
_HOOK_LAYER = re.compile(r"^blocks\.(\d+)\.")


class SAEConfigError(LensMemoryError, ValueError):
    """An SAE training config has a bad value (the message names it)."""



def resid_post_hook(layer: int) -> str:
    """``blocks.{layer}.hook_resid_post``: the residual stream after block ``layer``."""
    return hook_name(layer, "resid_post")


def _hook_layer(hook: str) -> int:
    m = _HOOK_LAYER.match(hook)
    if m is None:
        raise SAEConfigError(f"hook {hook!r} is not inside a block (expected 'blocks.L.…', e.g. 'blocks.6.hook_resid_post')")
    return int(m.group(1))



@dataclass(frozen=True)
class SAETrainConfig:
    """How an SAE is trained by :func:`train_sae` (validated on construction).

    Defaults are for Gemma 3 270M (``d_model`` 640) at layer 6 on 2 CPU cores; the tiny test
    model needs far smaller values. Measured once (layer 6, offline corpus, CPU shared with other
    jobs): 297,688 training activations, 290 steps; held-out (8,192 tokens) explained variance
    0.94, L0 32, 49% of features silent on those tokens (36% dead in the last 50 training steps):
    the dead fraction is the weak point of so short a run. Loss recovered was not measured yet.

    Attributes:
        layer: block whose output the SAE reads (checked against the model at training time).
        hook: TransformerLens hook name inside block ``layer``; default ``blocks.{layer}.hook_resid_post``.
        d_sae: number of features.
        architecture: ``"topk"`` (keep the ``k`` largest pre-activations; Gao et al. 2024) or
            ``"standard"`` (ReLU with an L1 penalty weighted by ``l1_coefficient``).
        k: active features per token for ``"topk"``.
        l1_coefficient: sparsity penalty of ``"standard"`` (on inputs scaled to norm ``sqrt(d_in)``).
        corpus: corpus spec (:func:`~lens_memory.corpus.resolve_corpus`), when none is passed.
        n_tokens: token positions forwarded for training (BOS included; BOS activations dropped).
        seq_len: tokens per row (BOS + ``seq_len - 1`` corpus tokens).
        batch_size: activations per optimiser step.
        lm_batch_size: rows per forward pass of the model.
        epochs: passes over the collected activations (reshuffled each time).
        lr, lr_warm_up_frac, lr_decay_frac: Adam learning rate, with linear warm-up over the first
            and linear decay to 0 over the last fraction of the steps.
        dead_feature_window: steps without firing after which a feature counts as dead during
            training (TopK's auxiliary loss then trains it on the residual error).
        aux_loss_coefficient: weight of that auxiliary loss.
        normalize: scale inputs to mean norm ``sqrt(d_in)`` while training (folded in afterwards).
        b_dec_init: ``"mean"`` (activation mean) or ``"zeros"``.
        eval_tokens: held-out token positions (after the training rows) for the quality metrics.
        ce_tokens: of those, how many next-token predictions score the loss recovered (0: skip).
        seed: initialisation and shuffling seed.
    """

    layer: int
    hook: str | None = None
    d_sae: int = 4096
    architecture: str = "topk"
    k: int = 32
    l1_coefficient: float = 5.0
    corpus: str = "offline"
    n_tokens: int = 300_000
    seq_len: int = 128
    batch_size: int = 1024
    lm_batch_size: int = 16
    epochs: int = 1
    lr: float = 1e-3
    lr_warm_up_frac: float = 0.05
    lr_decay_frac: float = 0.2
    dead_feature_window: int = 50
    aux_loss_coefficient: float = 1.0 / 32
    normalize: bool = True
    b_dec_init: str = "mean"
    eval_tokens: int = 8192
    ce_tokens: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, what: str) -> SAEConfigError:
            return SAEConfigError(f"SAETrainConfig.{name} must be {what}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.layer) or self.layer < 0:
            raise bad("layer", "a non-negative integer")
        if self.hook is None:
            object.__setattr__(self, "hook", resid_post_hook(self.layer))
        if not isinstance(self.hook, str) or not self.hook.startswith(f"blocks.{self.layer}."):
            raise bad("hook", f"a hook name inside block {self.layer} (e.g. {resid_post_hook(self.layer)!r})")
        for name, lo in (("d_sae", 1), ("k", 1), ("n_tokens", 1), ("seq_len", 3), ("batch_size", 1),
                         ("lm_batch_size", 1), ("epochs", 1), ("dead_feature_window", 1), ("eval_tokens", 1),
                         ("ce_tokens", 0)):
            v = getattr(self, name)
            if not is_int(v) or v < lo:
                raise bad(name, f"an integer >= {lo}")
        if not is_int(self.seed):
            raise bad("seed", "an integer")
        if self.architecture not in _ARCHITECTURES:
            raise bad("architecture", f"one of {', '.join(map(repr, _ARCHITECTURES))}")
        if self.architecture == "topk" and self.k > self.d_sae:
            raise bad("k", f"at most d_sae ({self.d_sae})")
        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("lr", "l1_coefficient"):
            if not number(getattr(self, name)) or getattr(self, name) <= 0:
                raise bad(name, "a positive finite number")
        for name in ("lr_warm_up_frac", "lr_decay_frac"):
            if not number(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                raise bad(name, "a number in [0, 1)")
        if not number(self.aux_loss_coefficient) or self.aux_loss_coefficient < 0:
            raise bad("aux_loss_coefficient", "a non-negative finite number")
        if self.lr_warm_up_frac + self.lr_decay_frac >= 1:
            raise SAEConfigError(f"SAETrainConfig.lr_warm_up_frac + lr_decay_frac must be < 1, got "
                                 f"{self.lr_warm_up_frac!r} + {self.lr_decay_frac!r}")
        if not isinstance(self.normalize, bool):
            raise bad("normalize", "True or False")
        if self.b_dec_init not in ("mean", "zeros"):
            raise bad("b_dec_init", "'mean' or 'zeros'")
        if not isinstance(self.corpus, str) or not self.corpus:
            raise bad("corpus", "a non-empty corpus spec string")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAETrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SAEConfigError(f"unknown SAETrainConfig field(s) {unknown}")
        return cls(**d)

    def key(self) -> str:
        """SHA-256 of the config (a cache key)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

