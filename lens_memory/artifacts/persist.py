"""One persistence layer for every artifact and result: a manifest, safetensors, an atomic swap.

An artifact of kind ``K`` is a directory::

    DIR/K.json          {"format": "lens_memory.K/V", ...metadata..., "manifest": {...}}
    DIR/K.safetensors   the tensors (absent when there are none)
    DIR/...             any extra files the writer put there (e.g. an SAE's sae-lens files)

The manifest lists every file the writer put in ``DIR`` with its SHA-256 and size, so
:func:`load_artifact` detects a truncated, altered or mixed directory (two writes of which only
one finished) instead of loading it. Writing never touches ``DIR`` until the new content is
complete: it goes to ``.DIR.<pid>-<rand>.tmp`` beside it, then the old directory is renamed aside,
the new one renamed into place and the old one deleted. A kill between the two renames leaves
the old result beside ``DIR``; the next :func:`load_artifact` or :func:`save_artifact` renames it
back. An existing ``DIR`` is replaced only when it is empty or an artifact of the same kind whose
manifest accounts for every file in it -- user files are never deleted. Files get the umask's
mode, not a temporary file's 0600. Metadata is JSON (never pickle); tensors are safetensors.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..errors import ArtifactMismatchError
from ..cache import make_manifest, verify_manifest
from ..io import load_tensors, pid_alive, readable_mode, save_tensors, swap_dir, sweep_orphans, to_jsonable

__all__ = ["save_artifact", "load_artifact", "read_manifest", "is_artifact", "atomic_dir", "artifact_format"]

MANIFEST = "manifest"


def artifact_format(kind: str, version: int = 1) -> str:
    return f"lens_memory.{kind}/{version}"


def _json_name(kind: str) -> str:
    return f"{kind}.json"


def _recover(path: Path) -> None:
    """If a kill left ``path`` renamed aside (``.NAME.<pid>-*.old``), put it back."""
    if path.exists() or not path.parent.is_dir():
        return
    for old in sorted(path.parent.glob(f".{path.name}.*.old")):
        pid = old.name[len(path.name) + 2:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            old.rename(path)
            return


def _replaceable(path: Path, kind: str) -> str | None:
    """``None`` if ``path`` may be replaced by an artifact of ``kind``, else the reason it may not."""
    if not path.exists():
        return None
    if not path.is_dir():
        return "it is a file"
    names = {p.name for p in path.iterdir()}
    if not names:
        return None
    meta_p = path / _json_name(kind)
    if not meta_p.exists():
        return f"it is not a lens_memory {kind} (no {meta_p.name})"
    try:
        meta = json.loads(meta_p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{meta_p.name} is not valid JSON"
    fmt = str(meta.get("format", ""))
    if not fmt.startswith(f"lens_memory.{kind}/"):
        return f"{meta_p.name} has format {fmt!r}, not a lens_memory {kind}"
    listed = {name.split("/")[0] for name in meta.get(MANIFEST, {}).get("files", {})} | {meta_p.name}
    foreign = sorted(names - listed)
    if foreign:
        return f"it holds files the {kind} did not write ({', '.join(foreign[:5])})"
    return None


@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: str) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path`` in one rename.

    Refuses (:class:`ArtifactMismatchError`, nothing touched) a ``path`` that is not empty and
    not an artifact of ``kind``. On an exception the temporary directory is deleted and ``path``
    is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover(path)
    reason = _replaceable(path, kind)
    if reason:
        raise ArtifactMismatchError(f"refusing to replace {path}: {reason} (choose another directory)")
    sweep_orphans(path.parent, f".{path.name}.")
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = path.parent / f".{path.name}.{tag}.tmp"
    tmp.mkdir()
    readable_mode(tmp, directory=True)
    try:
        yield tmp
        swap_dir(tmp, path, path.parent / f".{path.name}.{tag}.old")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _manifest(d: Path, kind: str) -> dict[str, Any]:
    from .. import __version__

    return {"kind": kind, "files": make_manifest(d, exclude=(_json_name(kind),)), "lens_memory": __version__}


def save_artifact(path: str | Path, kind: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None,
                  *, version: int = 1, extra: Callable[[Path], None] | None = None) -> Path:
    """Write an artifact of ``kind`` to directory ``path`` atomically and return ``path``.

    Args:
        meta: JSON-able metadata (dataclasses allowed); stored at the top level of ``KIND.json``.
        tensors: name -> tensor, stored in ``KIND.safetensors`` (CPU, contiguous).
        extra: called with the temporary directory to write further files; they enter the manifest.
    """
    if MANIFEST in meta or "format" in meta:
        raise ValueError(f"artifact metadata may not use the reserved keys 'format' / {MANIFEST!r}")
    with atomic_dir(path, kind) as tmp:
        if tensors:
            save_tensors(tmp / f"{kind}.safetensors", tensors)
        if extra is not None:
            extra(tmp)
        doc = {"format": artifact_format(kind, version), **to_jsonable(meta), MANIFEST: _manifest(tmp, kind)}
        (tmp / _json_name(kind)).write_text(json.dumps(doc, indent=2) + "\n")
    return Path(path)


def read_manifest(path: str | Path, kind: str, *, version: int = 1) -> dict[str, Any]:
    """The metadata of the artifact at ``path`` (format checked, files not verified)."""
    path = Path(path)
    _recover(path)
    meta_p = path / _json_name(kind)
    if not meta_p.exists():
        raise ArtifactMismatchError(f"{path} is not a saved {kind} (no {meta_p.name})")
    try:
        meta = json.loads(meta_p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactMismatchError(f"{meta_p} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != artifact_format(kind, version):
        fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ArtifactMismatchError(f"{meta_p} has format {fmt!r}, not {artifact_format(kind, version)!r}")
    return meta


def load_artifact(path: str | Path, kind: str, *, version: int = 1,
                  verify: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read ``(metadata, tensors)`` of the artifact at ``path``, verifying every file's hash."""
    path = Path(path)
    meta = read_manifest(path, kind, version=version)
    files = meta.get(MANIFEST, {}).get("files", {})
    for name, rec in files.items() if verify else ():
        p = path / name
        if not p.is_file():
            raise ArtifactMismatchError(f"{path} is incomplete: {name} is missing")
        if not verify_manifest(path, {name: rec}):
            raise ArtifactMismatchError(f"{p} does not match the manifest's hash (file corrupt or altered)")
    tensors: dict[str, torch.Tensor] = {}
    t_p = path / f"{kind}.safetensors"
    if f"{kind}.safetensors" in files:
        try:
            tensors = load_tensors(t_p)
        except Exception as exc:
            raise ArtifactMismatchError(f"{t_p} is unreadable ({exc})") from None
    return meta, tensors


def is_artifact(path: str | Path, kind: str) -> bool:
    """True if ``path`` holds a readable artifact of ``kind`` (files not verified)."""
    try:
        read_manifest(path, kind)
    except ArtifactMismatchError:
        return False
    return True


def require(meta: dict[str, Any], keys: tuple[str, ...], where: str | Path) -> None:
    """Raise :class:`ArtifactMismatchError` naming the first of ``keys`` missing from ``meta``."""
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ArtifactMismatchError(f"{where}: metadata lacks {missing[0]!r} (file from another tool or version?)")
