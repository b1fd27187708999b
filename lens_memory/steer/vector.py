"""Steering vectors as artifacts: directions added to the residual stream, reversibly.

A :class:`SteeringVector` holds one direction per layer (``blocks.L.hook_resid_post`` by
default), how it was fitted (method, behaviour, positions, config) and the model it was fitted
on. Nothing changes the model until it is applied::

    vec = caa(model, behavior, CAAConfig(layers=(6,)))
    with vec.apply(model, strength=4.0):            # x <- x + 4 * v at the hook
        generate(model, prompts)
    # hooks removed here, also after an exception: outputs are bit-identical to before

Applying registers a forward hook on the TransformerLens hook point, so it acts in every
entry point (bridge, Hugging Face ``generate``, :class:`~lens_memory.stack.DecoderStack`).
No weight is touched, so removing the hook restores the model exactly.

Positions (``positions=``):

* ``"after_prompt"`` (default) -- the prompt's last token and every generated token: in a
  multi-token forward pass (a prompt, or a prefill) only the last position is steered; in a
  one-token step of cached generation that token is. This is CAA's "positions after the
  instruction" for completion prompts, and makes next-token probabilities at the prompt's end
  respond to the vector.
* ``"all"`` -- every position (ActAdd-style), used e.g. for side effects on neutral text.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float

from ..hooks import hook_template
from ..artifacts import Handle, active_handles, check_identity, load_artifact, require, save_artifact
from ..errors import ArtifactMismatchError, LensMemoryError

__all__ = ["SteeringVector", "SteeringHandle", "HookAddition", "SteeringNaNError", "POSITION_MODES", "refuse_twice"]

log = logging.getLogger(__name__)

POSITION_MODES = ("after_prompt", "all")
KIND = "steering_vector"


class SteeringNaNError(LensMemoryError, FloatingPointError):
    """A steered activation became NaN or infinite (the strength is too large)."""


class HookAddition:
    """Forward hooks that add ``strength * v`` at TL hook points; ``remove()`` detaches them all."""

    def __init__(self, lm: Any, additions: dict[str, torch.Tensor], strength: float, positions: str):
        if positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, got {positions!r}")
        if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not torch.isfinite(
                torch.tensor(float(strength))):
            raise ValueError(f"strength must be a finite number, got {strength!r}")
        self.strength, self.positions = float(strength), positions
        self._handles = []
        hook_dict = lm.bridge.hook_dict
        for name in additions:
            if name not in hook_dict:
                raise KeyError(f"hook {name!r} does not exist on {lm.name}")
        for name, v in additions.items():
            vec = (self.strength * v.double()).to(dtype=lm.hf.dtype if hasattr(lm.hf, "dtype") else torch.float32,
                                                  device=lm.device)
            self._handles.append(hook_dict[name].register_forward_hook(self._make(name, vec)))

    def _make(self, name: str, vec: torch.Tensor):
        strength, positions = self.strength, self.positions

        def hook(module: Any, inputs: Any, out: torch.Tensor) -> torch.Tensor:
            if positions == "all" or out.shape[1] == 1:
                res = out + vec.to(out.dtype)
            else:
                res = out.clone()
                res[:, -1] = res[:, -1] + vec.to(out.dtype)
            if not torch.isfinite(res).all():
                raise SteeringNaNError(f"steering at {name!r} with strength {strength!r} produced NaN/inf activations")
            return res

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@dataclass
class SteeringVector:
    """Per-layer directions to add to the residual stream.

    Attributes:
        method: ``"caa"`` or ``"sta"`` (or any user label).
        vectors: layer -> direction ``[d_model]`` (float32; the unit of ``strength``).
        behavior: the behaviour it was fitted on.
        hook_template: TL hook name with ``{layer}``.
        config: the fitting config (as a dict).
        model: identity of the model it was fitted on.
        info: provenance (pairs, positions, seconds, norms, selected features ...).
        default_positions: where :meth:`apply` adds the vector unless told (see the module docstring).
    """

    method: str
    vectors: dict[int, Float[torch.Tensor, "d_model"]]
    behavior: str
    hook_template: str = field(default_factory=lambda: hook_template("resid_post"))
    config: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    default_positions: str = "after_prompt"

    def __post_init__(self) -> None:
        if self.default_positions not in POSITION_MODES:
            raise ValueError(f"default_positions must be one of {POSITION_MODES}, got {self.default_positions!r}")

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def nbytes(self) -> int:
        """Bytes of the stored directions."""
        return int(sum(v.nbytes for v in self.vectors.values()))

    def hook_name(self, layer: int) -> str:
        return self.hook_template.format(layer=layer)

    def norm(self, layer: int | None = None) -> float:
        layer = self.layers[0] if layer is None else layer
        return float(self.vectors[layer].double().norm())

    def __repr__(self) -> str:
        norms = ", ".join(f"L{l}: |v|={self.norm(l):.3g}" for l in self.layers)
        return f"SteeringVector({self.method}, {self.behavior!r}, {norms})"

    @property
    def vector_id(self) -> str:
        """SHA-256 of the directions and where they act (two equal vectors have equal ids)."""
        from ..edit.weights import tensor_sha256

        h = hashlib.sha256(self.hook_template.encode())
        for layer in self.layers:
            h.update(f"{layer}:{tensor_sha256(self.vectors[layer].float())}".encode())
        return h.hexdigest()

    def check(self, lm: Any) -> None:
        """Refuse a model other than the one this vector was fitted on (by weight hash)."""
        check_identity(self.model, lm, "steering vector")
        for layer, v in self.vectors.items():
            lm.check_layer(layer)
            if v.shape != (lm.d_model,):
                raise ArtifactMismatchError(f"layer {layer} vector has shape {tuple(v.shape)}, model d_model is {lm.d_model}")

    def apply(self, lm: Any, strength: float = 1.0, positions: str | None = None) -> "SteeringHandle":
        """Add ``strength * v`` at each layer's hook; a context manager, or call ``.remove()``.

        Applying a vector that is already applied to ``lm`` is refused (it would silently double):
        use one application with ``strength`` summed instead. Different vectors at the same hook add up.
        """
        self.check(lm)
        refuse_twice(lm, self, self.vector_id)
        positions = self.default_positions if positions is None else positions
        add = HookAddition(lm, {self.hook_name(l): v for l, v in self.vectors.items()}, strength, positions)
        return SteeringHandle(self, lm, add, strength=add.strength)

    def scaled(self, factor: float) -> "SteeringVector":
        return SteeringVector(self.method, {l: v * factor for l, v in self.vectors.items()}, self.behavior,
                              self.hook_template, dict(self.config), dict(self.model), dict(self.info),
                              self.default_positions)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``steering_vector.json`` + ``steering_vector.safetensors`` into ``path`` atomically."""
        return save_artifact(path, KIND, {
            "method": self.method, "behavior": self.behavior, "layers": self.layers,
            "hook_template": self.hook_template, "config": self.config, "model": self.model, "info": self.info,
            "default_positions": self.default_positions}, {f"layer{l}": v for l, v in self.vectors.items()})

    @classmethod
    def load(cls, path: str | Path) -> "SteeringVector":
        meta, t = load_artifact(path, KIND)
        require(meta, ("method", "behavior", "layers", "hook_template"), path)
        return cls(meta["method"], {int(l): t[f"layer{l}"] for l in meta["layers"]}, meta["behavior"],
                   meta["hook_template"], meta.get("config", {}), meta.get("model", {}), meta.get("info", {}),
                   meta.get("default_positions", "after_prompt"))


def refuse_twice(lm: Any, artifact: Any, artifact_id: str) -> None:
    """Raise if an artifact with ``artifact_id`` is already applied to ``lm`` as steering."""
    for h in active_handles(lm, "steering"):
        if getattr(h, "artifact_id", None) == artifact_id:
            raise LensMemoryError(f"{artifact!r} is already applied to {lm.name} (strength {h.strength}); applying "
                                  f"it again would silently double it -- remove it first, or apply it once with "
                                  f"the summed strength")


class SteeringHandle(Handle):
    """An applied steering vector or LM-Steer map; ``remove()`` (or leaving ``with``) detaches its hooks."""

    kind = "steering"

    def __init__(self, vector: Any, lm: Any, addition: Any, artifact_id: str | None = None,
                 strength: float | None = None):
        super().__init__(vector, lm, addition.remove)
        self.vector = vector
        self.strength = strength if strength is not None else addition.strength
        self.artifact_id = artifact_id if artifact_id is not None else getattr(vector, "vector_id", None)
        self._activate()
