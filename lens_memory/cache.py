"""Content-keyed on-disk caches: keys over contents, output manifests, per-entry locks.

One small toolkit for every "compute once, reuse while valid" directory in lens_memory (the
report's stages use it; key statistics, SAEs and corpus samples can move onto it). A cache
entry is a directory ``PATH`` holding the outputs plus one metadata file (``META``, default
``cache.json``) that is written last and records:

* ``key`` -- :func:`content_key` of everything the outputs depend on. Callers put *contents*
  in the key (a file's SHA-256, a model's weight hash), not names or paths, so editing an input
  in place invalidates the entry;
* ``files`` -- a manifest (:func:`make_manifest`): every output file's size and SHA-256. Files of
  :data:`HASH_LIMIT` bytes (50 MiB) or more record their size only (hashing gigabytes on every
  reuse would cost more than it protects); smaller ones are hashed.

An entry is reused only if its key matches *and* :func:`verify_manifest` finds every listed file
with its recorded size (and hash): outputs deleted, truncated or altered after the fact make it
recompute (recompute-if-corrupt), never silently reused.

Writers build the entry in ``PATH.partial-<pid>`` and rename it onto ``PATH`` only once complete
(:func:`publish_dir`); the previous entry is replaced only then. Concurrency: a writer holds an
exclusive ``flock`` on ``PATH.lock`` (:func:`file_lock`) from the reuse check to the publish, so
a second process waits and then reuses the first one's result. Leftover partial directories are
swept (:func:`sweep_partials`) only by the lock holder, and only those whose writer pid is dead
(or is the sweeper itself) -- a live process's directory is never deleted, even by a writer that
could not lock (no ``fcntl``: non-POSIX systems; some network filesystems ignore ``flock``).
A pid reused by an unrelated process keeps its stale directory until that process ends (a leak,
not a wrong result).

:func:`cached` puts the pieces together: lock, key, verify, else compute, save and publish.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from .errors import LensMemoryError
from .io import pid_alive, read_json, remove_if_orphaned, sha256_file, swap_dir, to_jsonable, write_json

try:  # POSIX only; elsewhere entries are still atomic and live partials still spared (pid check)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["HASH_LIMIT", "CacheLockTimeout", "content_key", "make_manifest", "verify_manifest",
           "pid_alive", "file_lock", "sweep_partials", "read_entry", "publish_dir", "store_entry", "cached"]

log = logging.getLogger(__name__)

#: files of at least this many bytes are checked by size only (see the module docstring)
HASH_LIMIT = 50 * 1024 * 1024
META = "cache.json"

T = TypeVar("T")


class CacheLockTimeout(LensMemoryError):
    """Another process held a cache entry's lock for longer than the caller would wait."""


def content_key(*parts: Any, length: int = 16) -> str:
    """Hex SHA-256 (first ``length`` digits) of JSON-able ``parts`` (dataclasses, paths, tuples allowed).

    Dict keys are sorted, so equal contents give equal keys whatever their insertion order.
    """
    blob = json.dumps(to_jsonable(list(parts)), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def make_manifest(directory: str | Path, *, exclude: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``{relative posix path: {"size": bytes, "sha256": hex or None}}`` of every file under ``directory``.

    ``sha256`` is ``None`` for files of :data:`HASH_LIMIT` bytes or more (checked by size only).
    Top-level names in ``exclude`` (e.g. the metadata file itself) are left out.
    """
    root = Path(directory)
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel in exclude:
            continue
        size = p.stat().st_size
        out[rel] = {"size": size, "sha256": sha256_file(p) if size < HASH_LIMIT else None}
    return out


def verify_manifest(directory: str | Path, manifest: Any) -> bool:
    """True if every file of ``manifest`` is under ``directory`` with its size (and hash, when recorded).

    A manifest that is not a dict (missing, or from an older format) does not verify. Files not
    in the manifest are ignored. The first mismatch is logged.
    """
    if not isinstance(manifest, dict):
        log.info("%s: no manifest of its outputs", directory)
        return False
    root = Path(directory)
    for rel, want in manifest.items():
        p = root / rel
        try:
            size = p.stat().st_size if p.is_file() else None
        except OSError:
            size = None
        if size is None or not isinstance(want, dict) or size != want.get("size"):
            log.warning("%s: output %s is missing or has the wrong size", directory, rel)
            return False
        if want.get("sha256") is not None and sha256_file(p) != want["sha256"]:
            log.warning("%s: output %s does not match its recorded SHA-256", directory, rel)
            return False
    return True


@contextlib.contextmanager
def file_lock(path: str | Path, *, timeout: float | None = None, poll: float = 0.1) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Waits for another holder (any process, or another open of the file in this one) to release
    it; ``timeout`` seconds (``None``: forever) then :class:`CacheLockTimeout`. The lock dies with
    its holder, so a killed process never leaves a stale lock. The lock file itself is kept (deleting
    it while another process waits on it would let two processes "hold" it). Without ``fcntl`` the
    block runs unlocked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        yield path
        return
    with open(path, "a+b") as fh:
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout is not None and time.monotonic() - start >= timeout:
                    raise CacheLockTimeout(f"{path} is held by another process (waited {timeout:g} s)") from None
                if not told:
                    log.info("waiting for %s (held by another process)", path)
                    told = True
                time.sleep(poll)
        try:
            yield path
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _partial(path: Path, pid: int | None = None) -> Path:
    return path.with_name(f"{path.name}.partial-{os.getpid() if pid is None else pid}")


def sweep_partials(path: str | Path) -> list[Path]:
    """Delete ``PATH.partial-<pid>`` and ``PATH.old-<pid>`` leftovers whose writer is gone; return them.

    A leftover is deleted when its pid is this process (an earlier failed attempt) or no longer
    alive; a live writer's directory is kept (and logged). Call it while holding ``PATH.lock``.
    """
    path = Path(path)
    removed = []
    for kind in ("partial", "old"):
        for p in path.parent.glob(f"{path.name}.{kind}-*"):
            if remove_if_orphaned(p, p.name.rsplit("-", 1)[1], own=True):
                removed.append(p)
            elif p.name.rsplit("-", 1)[1].isdigit():
                log.warning("keeping %s: the process that writes it is still running", p)
    return removed


def read_entry(path: str | Path, key: str, *, meta: str = META) -> dict[str, Any] | None:
    """The metadata of the entry at ``path`` if its key is ``key`` and its outputs verify, else ``None``."""
    p = Path(path) / meta
    if not p.is_file():
        return None
    try:
        data = read_json(p)
    except Exception:  # unreadable metadata: an unfinished or damaged entry  # noqa: BLE001
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    return data if verify_manifest(path, data.get("files")) else None


def publish_dir(path: str | Path, fill: Callable[[Path], dict[str, Any]], *, meta: str = META) -> dict[str, Any]:
    """Build an entry in ``PATH.partial-<pid>`` and rename it onto ``path``; return its metadata.

    ``fill(tmp_dir)`` writes the outputs and returns the metadata to record (it must include the
    ``key``); the manifest of what it wrote is added as ``files`` and the metadata file is written
    last. On an exception the partial directory is removed and ``path`` is left as it was. Hold
    ``PATH.lock`` and :func:`sweep_partials` first (our own leftover would block ``mkdir``).
    """
    path = Path(path)
    tmp = _partial(path)
    tmp.mkdir(parents=True)
    try:
        data = dict(fill(tmp))  # fill may replace tmp itself atomically (savers that swap a directory in)
        data["files"] = make_manifest(tmp, exclude=(meta,))
        write_json(tmp / meta, data)
        swap_dir(tmp, path, path.with_name(f"{path.name}.old-{os.getpid()}"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return data


def cached(path: str | Path, key: Any, compute: Callable[[], T], load: Callable[[Path], T],
           save: Callable[[T, Path], None], *, force: bool = False, lock_timeout: float | None = None) -> T:
    """Key -> verify -> reuse, else compute, save and publish: the whole cache protocol in one call.

    ``key`` is hashed with :func:`content_key` (pass contents: hashes of the inputs, not their
    paths). Under ``PATH.lock``: an entry with this key whose outputs verify is ``load`` ed; an
    entry whose ``load`` fails is treated as corrupt. Otherwise ``compute()`` runs, ``save(value,
    dir)`` writes it, and the entry is published atomically; the computed value is returned.
    """
    path = Path(path)
    k = content_key(key)
    with file_lock(path.with_name(path.name + ".lock"), timeout=lock_timeout):
        if not force and read_entry(path, k) is not None:
            try:
                return load(path)
            except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed, not fatal
                log.warning("%s: cached entry unreadable (%s); recomputing", path, exc)
        value = compute()
        _publish_entry(path, k, lambda d: save(value, d))
        return value


def _publish_entry(path: Path, key: str, write: Callable[[Path], Any]) -> dict[str, Any]:
    """Sweep dead writers' leftovers, then publish ``write(dir)``'s outputs under ``key`` (lock held)."""
    sweep_partials(path)
    return publish_dir(path, lambda d: (write(d), {"key": key})[1])


def store_entry(path: str | Path, key: str, write: Callable[[Path], Any], *,
                lock_timeout: float | None = None) -> dict[str, Any]:
    """Publish a cache entry whose (already hashed) ``key`` and outputs the caller computed, under ``PATH.lock``.

    For callers that compute several entries in one pass (key statistics of several layers) and so
    cannot use :func:`cached`'s compute-per-entry protocol.
    """
    path = Path(path)
    with file_lock(path.with_name(path.name + ".lock"), timeout=lock_timeout):
        return _publish_entry(path, key, write)
