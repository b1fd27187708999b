"""Model identity: what a result was computed on (:class:`ModelIdentity`), and :func:`state_dict_sha256`.

Every result records its model's identity as provenance; artifacts compare identities
(:meth:`ModelIdentity.same_model`: by weight hash) before they are applied to a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ModelIdentity", "state_dict_sha256"]


@dataclass(frozen=True)
class ModelIdentity:
    """What a result was computed on. Recorded in every result's provenance."""

    name: str
    source: str
    architecture: str
    revision: str
    weight_hash: str
    dtype: str
    quantization: str | None
    n_layers: int
    d_model: int
    d_vocab: int
    n_ctx: int
    prepend_bos: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelIdentity":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def same_model(self, other: "ModelIdentity") -> bool:
        """True when both identities describe the same weights (by hash: a renamed copy is the same model)."""
        return self.weight_hash == other.weight_hash


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes), in name order."""
    h = hashlib.sha256()
    seen: set[int] = set()
    for name, t in sorted(module.state_dict().items()):
        if t.data_ptr() in seen and t.numel() > 0:  # tied weights (embed / unembed) hashed once
            h.update(f"{name}:tied".encode())
            continue
        seen.add(t.data_ptr())
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
