"""Safe persistence: atomic writes, JSON with dataclasses, tensors as safetensors.

Results are saved as a directory (or file pair) of ``*.json`` metadata plus ``*.safetensors``
tensors -- never pickle. Every write goes to a temporary file in the same directory and is
renamed into place, so an interrupted run never leaves a half-written result behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch

__all__ = [
    "atomic_path",
    "pid_alive",
    "readable_mode",
    "sweep_orphans",
    "remove_if_orphaned",
    "swap_dir",
    "write_json",
    "write_bytes",
    "read_json",
    "read_checkpoint",
    "save_tensors",
    "load_tensors",
    "sha256_file",
    "to_jsonable",
]


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy and torch scalars, paths and tuples to JSON-able values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def readable_mode(path: Path, *, directory: bool = False) -> None:
    """Give a freshly created temporary file (mode 0600) or directory (0700) the usual umask mode."""
    path.chmod((0o777 if directory else 0o666) & ~_umask())


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists on this machine (``os.kill(pid, 0)``).

    On Windows ``os.kill`` would terminate the process, so every pid counts as alive there.
    """
    if os.name == "nt":  # pragma: no cover
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:  # e.g. an out-of-range pid
        return False
    return True


def swap_dir(new: Path, path: Path, old: Path) -> None:
    """Put directory ``new`` at ``path``: the previous ``path`` is renamed to ``old`` first and deleted last.

    A kill between the two renames leaves the previous directory at ``old`` (never lost).
    """
    if path.exists():
        path.rename(old)
    new.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def remove_if_orphaned(p: Path, pid: str, *, own: bool = False) -> bool:
    """Delete leftover ``p`` (file or directory) if its writer ``pid`` is gone; return whether it was.

    ``own=True`` also deletes this process's own leftover (callers holding a lock, whose earlier
    attempt failed); otherwise it is kept, as another thread of this process may be writing it.
    """
    if not pid.isdigit() or (int(pid) == os.getpid() and not own):
        return False
    if int(pid) != os.getpid() and pid_alive(int(pid)):
        return False
    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return True


def sweep_orphans(parent: Path, prefix: str) -> int:
    """Delete ``parent/prefix<pid>-*`` leftovers whose writing process is gone (a kill mid-write).

    Temporary names carry the writer's pid, so a live writer's file is never touched.
    """
    return sum(remove_if_orphaned(p, p.name[len(prefix):].split("-", 1)[0])
               for p in parent.glob(f"{glob.escape(prefix)}*"))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The temporary file is ``.NAME.<pid>-<random>.part``; leftovers of killed writers are swept
    on the next write to the same name. The result gets the umask's mode (not mkstemp's 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    sweep_orphans(path.parent, prefix)
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            readable_mode(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write ``data`` (dataclasses allowed) as indented JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write raw bytes (an HTML page, a figure) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def read_json(path: str | Path) -> Any:
    """Read a JSON file, with an error naming the file if it is corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        from .errors import ArtifactMismatchError

        raise ArtifactMismatchError(f"{path} is not valid JSON ({exc})") from exc


T = TypeVar("T")
log = logging.getLogger(__name__)


def read_checkpoint(path: str | Path, load: Callable[[Any], T | None], what: str) -> T | None:
    """One item's checkpoint: ``load(json of path)``, or ``None`` when it is absent, ``load`` refuses it (another
    item's) or it cannot be read -- then the item is computed again: a corrupt checkpoint never blocks a rerun."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return load(read_json(path))
    except Exception as exc:
        log.warning("ignoring unreadable %s checkpoint %s (%s); computing it again", what, path, exc)
        return None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Atomically write tensors (made contiguous, on CPU) to a safetensors file."""
    from safetensors.torch import save_file

    # clone: .contiguous() keeps a [d, 1] view's stride (1, d), which byte views and some readers refuse
    clean = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)
    return Path(path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file onto the CPU."""
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
