"""Configuration of causal tracing (validated, recorded with every result)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["TraceConfig", "KINDS", "SEVERED_KINDS", "restore_hooks", "window_layers"]

#: Restorations: the clean hidden state (residual stream after the block), MLP output, attention output.
KINDS = ("hidden", "mlp", "attn")
#: Hidden-state restoration with the MLP (or attention) outputs at the restored token frozen at their
#: corrupted values in every layer -- the "severed path" of Meng et al. (2022), Fig. 3.
SEVERED_KINDS = ("hidden_sever_mlp", "hidden_sever_attn")

_HOOKS = {"hidden": "blocks.{}.hook_resid_post", "mlp": "blocks.{}.hook_mlp_out", "attn": "blocks.{}.hook_attn_out"}


def restore_hooks(kind: str) -> str:
    """TransformerLens hook-name template restored by ``kind`` (``{}`` = layer)."""
    return _HOOKS["hidden" if kind.startswith("hidden") else kind]


def window_layers(kind: str, layer: int, window: int, n_layers: int) -> list[int]:
    """Layers restored for a cell at ``layer``: itself for hidden states, else a window of ``window``
    consecutive layers centred on it, ``[layer - window//2, layer + ceil(window/2))`` clipped, as ROME."""
    if kind.startswith("hidden") or window <= 1:
        return [layer]
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


@dataclass(frozen=True)
class TraceConfig:
    """Causal tracing settings.

    Attributes:
        kinds: which restorations to run (``hidden``, ``mlp``, ``attn``, ``hidden_sever_mlp``,
            ``hidden_sever_attn``).
        n_samples: noise samples per corrupted run (the score is the mean probability over them).
        noise: ``"auto"`` (``noise_multiplier`` x the standard deviation of subject-token embeddings
            measured over the traced fact set, as in the paper) or a fixed scale.
        noise_multiplier: the multiplier for ``"auto"`` (paper: 3).
        window: layers restored together for MLP / attention cells (paper: 10).
        seed: seed of the Gaussian noise; the same noise is used for every cell of a fact.
        engine: ``"fast"`` (batched, partial recomputation, last-position logits) or ``"reference"``
            (one full forward with all logits per cell, as ROME's code).
    """

    kinds: tuple[str, ...] = KINDS
    n_samples: int = 10
    noise: float | str = "auto"
    noise_multiplier: float = 3.0
    window: int = 10
    seed: int = 1
    engine: str = "fast"

    def __post_init__(self) -> None:
        kinds = tuple(self.kinds.split(",")) if isinstance(self.kinds, str) else tuple(self.kinds)
        object.__setattr__(self, "kinds", kinds)
        allowed = KINDS + SEVERED_KINDS
        bad = [k for k in kinds if k not in allowed]
        if not kinds or bad:
            raise ValueError(f"kinds {list(kinds)!r}: unknown {bad!r}; choose from {list(allowed)}")
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"kinds {list(kinds)!r} has duplicates")
        if not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {self.n_samples!r}")
        if isinstance(self.noise, str):
            if self.noise != "auto":
                try:
                    object.__setattr__(self, "noise", float(self.noise))
                except ValueError:
                    raise ValueError(f"noise must be 'auto' or a number, got {self.noise!r}") from None
        if not isinstance(self.noise, str) and not (float(self.noise) >= 0):
            raise ValueError(f"noise scale must be >= 0, got {self.noise!r}")
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier!r}")
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be a positive integer, got {self.window!r}")
        if self.engine not in ("fast", "reference"):
            raise ValueError(f"engine must be 'fast' or 'reference', got {self.engine!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kinds"] = list(self.kinds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TraceConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "kinds" else v) for k, v in d.items() if k in names})
