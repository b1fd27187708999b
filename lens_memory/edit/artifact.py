"""Edits as artifacts: weight deltas that apply reversibly, bit for bit.

An :class:`Edit` holds, per edited layer, the change of the MLP output projection as low-rank
factors ``ΔW = U Vᵀ`` (ROME: rank 1; MEMIT: rank = number of facts while that is small) or a
dense matrix, together with the requests, the config, the model identity and a SHA-256 of each
weight it was computed on. Nothing changes the model until it is applied::

    edit = rome(model, fact)
    with edit.apply(model):          # weights changed here ...
        model.next_token_probs(...)
    # ... and restored bit for bit here, also after an exception

    handle = edit.apply(model)       # or keep it applied
    handle.remove()

Applying checks that the model and the current weights are the ones the edit was computed on
(a different model, or weights changed by another edit, are refused). Restoring copies the
saved original tensors back, so removal is exact whatever the floating-point arithmetic.
Edits stack: compute a second edit while the first is applied (sequential editing) and
remove them in reverse order. ``save``/``load`` use :mod:`lens_memory.artifacts.persist`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts import Handle, applied, check_identity, load_artifact, require, save_artifact
from ..errors import ArtifactMismatchError, LensMemoryError
from .weights import proj_weight, tensor_sha256, to_stored

__all__ = ["Edit", "EditHandle", "applied", "WeightPatch"]

log = logging.getLogger(__name__)

KIND = "edit"


class WeightPatch:
    """Adds deltas to MLP output projections in place and restores the saved originals on ``restore()``."""

    def __init__(self, lm: Any, deltas: dict[int, torch.Tensor]):
        self.lm = lm
        self.originals: dict[int, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for layer, d in deltas.items():
                    w = proj_weight(lm, layer)
                    self.originals[layer] = w.detach().clone()
                    stored = to_stored(lm, layer, d)
                    if stored.shape != w.shape:
                        raise ArtifactMismatchError(
                            f"delta for layer {layer} has shape {tuple(stored.shape)}, weight has {tuple(w.shape)}")
                    w.add_(stored.to(dtype=w.dtype, device=w.device))
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        with torch.no_grad():
            for layer, orig in self.originals.items():
                proj_weight(self.lm, layer).copy_(orig)
        self.originals = {}


@dataclass
class Edit:
    """A weight edit of the MLP output projections at ``layers``.

    Attributes:
        method: ``"rome"`` or ``"memit"``.
        factors: per layer ``(U, V)`` with ``ΔW = U Vᵀ`` (linear orientation ``[d_model, d_mlp]``),
            or ``(ΔW, None)`` when dense.
        requests: the edited facts (as dicts).
        config: the method's config (as a dict).
        model: identity of the model the edit was computed on.
        base_hashes: SHA-256 of each edited weight before the edit.
        info: optimisation and statistics provenance (losses, target probabilities, tokens, seconds).
    """

    method: str
    factors: dict[int, tuple[torch.Tensor, torch.Tensor | None]]
    requests: list[dict[str, Any]]
    config: dict[str, Any]
    model: dict[str, Any]
    base_hashes: dict[int, str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.factors)

    @property
    def edit_id(self) -> str:
        h = hashlib.sha256(self.method.encode())
        for layer in self.layers:
            u, v = self.factors[layer]
            h.update(f"{layer}:{self.base_hashes[layer]}".encode())
            h.update(tensor_sha256(u).encode())
            if v is not None:
                h.update(tensor_sha256(v).encode())
        return h.hexdigest()

    def delta(self, layer: int) -> torch.Tensor:
        """``ΔW`` of ``layer`` in linear orientation ``[d_model, d_mlp]`` (float64)."""
        u, v = self.factors[layer]
        return u.double() if v is None else u.double() @ v.double().T

    def nbytes(self) -> int:
        """Bytes of the stored factors (``U``, ``V``; or the dense ``ΔW``)."""
        return int(sum(u.nbytes + (0 if v is None else v.nbytes) for u, v in self.factors.values()))

    def rank(self, layer: int) -> int:
        u, v = self.factors[layer]
        return int(torch.linalg.matrix_rank(u.double())) if v is None else u.shape[1]

    def __repr__(self) -> str:
        return (f"Edit({self.method}, {len(self.requests)} fact(s), layers={self.layers}, "
                f"model={self.model.get('name')!r})")

    # -- application -----------------------------------------------------------------------
    def check(self, lm: Any) -> None:
        """Raise :class:`ArtifactMismatchError` unless ``lm`` has exactly the weights this edit was computed on."""
        check_identity(self.model, lm, "edit")
        for layer in self.layers:
            if layer >= lm.n_layers:
                raise ArtifactMismatchError(f"edit touches layer {layer}; {lm.name} has {lm.n_layers} layers")
            now = tensor_sha256(proj_weight(lm, layer))
            if now != self.base_hashes[layer]:
                raise ArtifactMismatchError(
                    f"layer {layer}'s MLP output weights differ from those the edit was computed on "
                    f"({now[:12]} != {self.base_hashes[layer][:12]}); apply the edits it was computed after first")

    def apply(self, lm: Any) -> "EditHandle":
        """Apply to ``lm``; use as a context manager or call ``.remove()``."""
        self.check(lm)
        patch = WeightPatch(lm, {layer: self.delta(layer) for layer in self.layers})
        return EditHandle(self, lm, patch)._activate()

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the edit (``edit.json`` + ``edit.safetensors``) into directory ``path`` atomically."""
        return save_artifact(path, KIND, self.to_meta(), self.to_tensors())

    def to_meta(self) -> dict[str, Any]:
        """The JSON part of :meth:`save` (also stored per edit inside an edit sequence)."""
        return {"method": self.method, "layers": self.layers, "edit_id": self.edit_id, "requests": self.requests,
                "config": self.config, "model": self.model,
                "base_hashes": {str(k): v for k, v in self.base_hashes.items()}, "info": self.info}

    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The factors as named tensors (``{prefix}layer{j}.U`` / ``.V``)."""
        tensors = {}
        for layer, (u, v) in self.factors.items():
            tensors[f"{prefix}layer{layer}.U"] = u
            if v is not None:
                tensors[f"{prefix}layer{layer}.V"] = v
        return tensors

    @classmethod
    def load(cls, path: str | Path) -> "Edit":
        meta, t = load_artifact(path, KIND)
        return cls.from_parts(meta, t, path)

    @classmethod
    def from_parts(cls, meta: dict[str, Any], t: dict[str, torch.Tensor], path: Any, prefix: str = "") -> "Edit":
        """Rebuild from :meth:`to_meta` and :meth:`to_tensors`, checking the recorded edit id."""
        require(meta, ("method", "layers", "requests", "config", "model", "base_hashes"), path)
        try:
            factors = {int(layer): (t[f"{prefix}layer{layer}.U"], t.get(f"{prefix}layer{layer}.V"))
                       for layer in meta["layers"]}
        except KeyError as exc:
            raise ArtifactMismatchError(f"{path}: tensor {exc.args[0]!r} is missing") from None
        edit = cls(method=meta["method"], factors=factors, requests=meta["requests"], config=meta["config"],
                   model=meta["model"], base_hashes={int(k): v for k, v in meta["base_hashes"].items()},
                   info=meta.get("info", {}))
        if edit.edit_id != meta.get("edit_id"):
            raise ArtifactMismatchError(f"{path}: deltas do not match the recorded edit id (file corrupt or altered)")
        return edit


class EditHandle(Handle):
    """An applied edit. ``remove()`` (or leaving the ``with`` block) restores the weights bit for bit.

    Edits stack: they must be removed in reverse order of application.
    """

    kind = "edit"

    def __init__(self, edit: Edit, lm: Any, patch: WeightPatch):
        super().__init__(edit, lm)
        self.edit, self._patch = edit, patch

    @property
    def layers(self) -> list[int]:
        return self.edit.layers

    @property
    def edit_id(self) -> str:
        return self.edit.edit_id

    def _undo(self) -> None:
        stack = self.lm.applied_edits
        if stack and stack[-1] is not self:
            raise LensMemoryError("edits must be removed in reverse order of application "
                                  f"(last applied: {stack[-1].edit!r})")
        self._patch.restore()
