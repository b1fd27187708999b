"""A trained SAE as an artifact: :class:`TrainedSAE` wraps a sae-lens ``SAE``; save and load it.

A saved SAE is a directory written by the project's persistence layer
(:func:`~lens_memory.artifacts.save_artifact`, kind ``trained_sae``)::

    DIR/trained_sae.json          hook, layer, config, quality, provenance + a manifest of every
                                  file's SHA-256 ("format": "lens_memory.trained_sae/1")
    DIR/cfg.json                  sae-lens's own files, so ``sae_lens.SAE.load_from_disk(DIR)``
    DIR/sae_weights.safetensors   loads the directory too

The directory is swapped in atomically, and a directory that is not a saved SAE is never
replaced. Loading verifies every file against the manifest, so a truncated or altered weights
file is refused rather than loaded.

Old layout. Before the persistence layer, ``trained_sae.json`` held ``"kind":
"lens_memory.TrainedSAE"`` and a ``"files"`` map of SHA-256s, and no manifest. SAEs cached that
way (``~/.cache/lens_memory/sae/...``) cost minutes to retrain, so :meth:`TrainedSAE.load` still
reads them (hashes verified as before), and :meth:`TrainedSAE.save` replaces such a directory
(only when it holds nothing but the files its metadata lists) with one in the new layout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from jaxtyping import Float, Int

from ..artifacts import is_artifact, load_artifact, require, save_artifact
from ..errors import ArtifactMismatchError
from ..io import read_json, sha256_file
from .config import SAETrainConfig
from .features import check_sae, feature_acts
from .quality import SAEQuality

if TYPE_CHECKING:  # sae_lens is imported when first used (it pulls in wandb and datasets)
    from sae_lens import SAE

__all__ = ["TrainedSAE"]

#: artifact kind of :func:`~lens_memory.artifacts.save_artifact`; the metadata file is ``trained_sae.json``
KIND = "trained_sae"
_META_FILE = f"{KIND}.json"  # the same name in the old layout
_LEGACY_KIND = "lens_memory.TrainedSAE"
_META_KEYS = ("hook", "layer", "config", "quality")


@dataclass
class TrainedSAE:
    """A sae-lens inference ``SAE`` trained by :func:`.train_sae`, with its config, quality and provenance.

    ``provenance`` records the model identity and weight state, the corpus, token counts, the
    seconds and tokens/s of activation collection (a plain forward to the layer) and of training,
    a subsampled loss curve and sae-lens's own end-of-training sparsity statistics.
    """

    sae: "SAE"
    hook: str
    layer: int
    config: SAETrainConfig
    quality: SAEQuality
    provenance: dict[str, Any] = field(default_factory=dict)

    def encode(self, x: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        with torch.no_grad():
            return self.sae.encode(x.to(self.sae.device, self.sae.dtype))

    def decode(self, f: Float[torch.Tensor, "... d_sae"]) -> Float[torch.Tensor, "... d_in"]:
        with torch.no_grad():
            return self.sae.decode(f.to(self.sae.device, self.sae.dtype))

    def feature_acts(self, lm: Any, ids: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos d_sae"]:
        """Feature activations on a token batch (see :func:`feature_acts`)."""
        return feature_acts(lm, self.sae, ids, self.hook)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: quality, sizes and timings."""
        p = self.provenance
        keys = ("n_train_activations", "collect_seconds", "collect_tokens_per_s", "train_seconds",
                "train_activations_per_s", "tokens_per_s", "total_seconds")
        return {"hook": self.hook, "d_sae": self.config.d_sae, "architecture": self.config.architecture,
                **self.quality.to_dict(), **{k: p.get(k) for k in keys}}

    def _meta(self) -> dict[str, Any]:
        return {"hook": self.hook, "layer": self.layer, "config": self.config.to_dict(),
                "quality": self.quality.to_dict(), "provenance": self.provenance}

    def save(self, path: str | Path) -> Path:
        """Write the directory ``path`` (see the module docstring): sae-lens's ``cfg.json`` +
        ``sae_weights.safetensors``, and ``trained_sae.json`` (config, quality, provenance, a manifest
        of file hashes). Atomic: a complete new directory replaces the old one. Refuses to replace a
        non-empty directory that is not a saved SAE; one saved in the old layout is replaced.
        """
        path = Path(path)
        try:
            with _legacy_aside(path):
                save_artifact(path, KIND, self._meta(), extra=self.sae.save_model)
        except ArtifactMismatchError as exc:
            raise ArtifactMismatchError(f"refusing to overwrite {str(path)!r} with a TrainedSAE: {exc}") from None
        return path

    @classmethod
    def load(cls, path: str | Path, lm: Any = None, *, device: str | None = None) -> "TrainedSAE":
        """Load a saved SAE (either layout); file hashes are verified. With ``lm``, :func:`check_sae` is applied."""
        from sae_lens import SAE

        path = Path(path)
        meta = _read_meta(path)
        sae = SAE.load_from_disk(path, device=device or (str(lm.device) if lm is not None else "cpu"))
        out = cls(sae=sae, hook=meta["hook"], layer=int(meta["layer"]), config=SAETrainConfig.from_dict(meta["config"]),
                  quality=SAEQuality.from_dict(meta["quality"]), provenance=meta.get("provenance", {}))
        if lm is not None:
            check_sae(lm, sae, out.hook)
        return out

    def __repr__(self) -> str:
        return (f"TrainedSAE({self.hook!r}, {self.config.architecture}, d_sae={self.config.d_sae}, "
                f"{self.quality})")


def _is_legacy(meta: Any) -> bool:
    """``trained_sae.json`` in the old layout: no manifest and no format (the persistence layer writes both)."""
    return isinstance(meta, dict) and "manifest" not in meta and "format" not in meta


def _read_meta(path: Path) -> dict[str, Any]:
    """The metadata of the SAE saved at ``path``, in either layout, every listed file's hash verified."""
    if not (path / _META_FILE).exists() and not is_artifact(path, KIND):  # (is_artifact recovers a killed swap)
        raise ArtifactMismatchError(f"{str(path)!r} is not a saved TrainedSAE (no {_META_FILE})")
    meta = read_json(path / _META_FILE)
    if not _is_legacy(meta):
        meta, _ = load_artifact(path, KIND)
        require(meta, _META_KEYS, path)
        return meta
    # the old layout, read as before: a map file name -> SHA-256
    for name, digest in meta.get("files", {}).items():
        f = path / name
        if not f.exists() or sha256_file(f) != digest:
            raise ArtifactMismatchError(f"{f} is missing or corrupt (SHA-256 differs from {_META_FILE})")
    return meta


def _replaceable_legacy(path: Path) -> bool:
    """True if ``path`` is an SAE saved in the old layout holding only the files its metadata lists."""
    if not (path / _META_FILE).is_file():
        return False
    try:
        meta = read_json(path / _META_FILE)
    except ArtifactMismatchError:
        return False
    if not _is_legacy(meta) or meta.get("kind") != _LEGACY_KIND or not isinstance(meta.get("files"), dict):
        return False
    return {p.name for p in path.iterdir()} <= {_META_FILE, *meta["files"]}


@contextlib.contextmanager
def _legacy_aside(path: Path) -> Iterator[None]:
    """While saving, keep an old-layout SAE at ``path`` renamed aside (persistence layer's ``.NAME.<pid>-*.old``
    name, so a kill mid-save puts it back on the next load or save); delete it once the new one is in place."""
    if not _replaceable_legacy(path):
        yield
        return
    aside = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.old"
    path.rename(aside)
    try:
        yield
    except BaseException:
        if not path.exists():
            aside.rename(path)
        raise
    shutil.rmtree(aside, ignore_errors=True)
