"""Cached, resumable stages for long jobs (the report runs a dozen of them).

A stage is a named function that writes its outputs into a directory and returns a JSON-able
summary. :class:`StageRunner` keeps each stage as a cache entry of :mod:`lens_memory.cache`:

* **Key.** ``stage.json`` records :func:`config_key` of the config the caller passes. Callers put
  *contents* in it -- the report passes the fact file's SHA-256 and the model's weight and
  tokenizer hashes (:func:`lens_memory.report.pipeline.stage_key_config`), not just a path and
  a name -- so a fact file or model directory edited in place reruns the stages that read it.
* **Manifest.** ``stage.json`` also lists every file the stage wrote with its size and SHA-256
  (size only for files of 50 MiB or more, :data:`lens_memory.cache.HASH_LIMIT`). A stage is
  reused only if the key matches *and* every listed file is there unchanged: a stage directory
  whose outputs were deleted or altered is rerun, never trusted because ``stage.json`` exists.
* **Atomicity.** The stage runs into ``ROOT/NAME.partial-<pid>``; ``stage.json`` is written last
  and the directory is then renamed onto ``ROOT/NAME`` (an older finished version is replaced
  only at that moment). An interrupted job resumes at the first unfinished stage; a failed
  stage's partial directory is removed and the finished one left untouched.
* **Concurrency.** While checking and running stage ``NAME`` the runner holds an exclusive
  ``flock`` on ``ROOT/NAME.lock``. A second run into the same directory waits for the first
  to finish that stage and then reuses it (same key) or reruns it (different key). Leftover
  ``NAME.partial-<pid>`` / ``NAME.old-<pid>`` directories are swept only under that lock and
  only if their pid is dead (or is this process): another live run's directory is never deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..cache import content_key, file_lock, publish_dir, read_entry, sweep_partials
from ..errors import LensMemoryError
from ..io import to_jsonable

__all__ = ["StageRunner", "StageRecord", "config_key"]

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
#: /2: ``stage.json`` carries the output manifest (``files``); /1 entries are rerun once
FORMAT = "lens_memory.stage/2"


def config_key(config: Any) -> str:
    """A stable hash of a JSON-able config (dict keys sorted); see :func:`lens_memory.cache.content_key`."""
    return content_key(config)


@dataclass
class StageRecord:
    """One finished stage: its summary, how long it ran, and whether this run reused it."""

    name: str
    key: str
    summary: dict[str, Any]
    seconds: float
    reused: bool = False
    path: Path = field(default_factory=Path)


class StageRunner:
    """Runs stages under ``root``; finished ones with the same key and intact outputs are loaded, not rerun.

    Args:
        root: the directory of the stage directories (created).
        force: rerun every stage asked for, even when a valid finished one exists.
        lock_timeout: seconds to wait for another process running the same stage (``None``:
            as long as it takes), then :class:`~lens_memory.cache.CacheLockTimeout`.
    """

    def __init__(self, root: str | Path, *, force: bool = False, lock_timeout: float | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.force = force
        self.lock_timeout = lock_timeout
        self.records: dict[str, StageRecord] = {}

    def path(self, name: str) -> Path:
        return self.root / name

    def lock(self, name: str):
        """Context manager holding stage ``name``'s lock (``ROOT/NAME.lock``)."""
        return file_lock(self.root / f"{name}.lock", timeout=self.lock_timeout)

    def done(self, name: str, config: Any) -> StageRecord | None:
        """The finished record of ``name`` if it has this config's key and its outputs verify, else ``None``."""
        meta = read_entry(self.path(name), config_key(config), meta=STAGE_FILE)
        if meta is None or meta.get("format") != FORMAT:
            return None
        return StageRecord(name, meta["key"], meta["summary"], meta["seconds"], True, self.path(name))

    def run(self, name: str, config: Any, fn: Callable[[Path], dict[str, Any]]) -> StageRecord:
        """Run ``fn(tmp_dir) -> summary`` unless ``name`` is already done with this ``config``.

        Holds the stage's lock throughout, so concurrent runs into the same root serialize per stage.
        """
        if "/" in name or name.startswith(".") or not name:
            raise LensMemoryError(f"invalid stage name {name!r}")
        with self.lock(name):
            rec = None if self.force else self.done(name, config)
            if rec is not None:
                log.info("stage %s: reused (%.1f s when it ran)", name, rec.seconds)
            else:
                rec = self._run_locked(name, config, fn)
        self.records[name] = rec
        return rec

    def _run_locked(self, name: str, config: Any, fn: Callable[[Path], dict[str, Any]]) -> StageRecord:
        sweep_partials(self.path(name))
        key = config_key(config)
        log.info("stage %s: running", name)

        def fill(tmp: Path) -> dict[str, Any]:
            t0 = time.time()
            summary = fn(tmp)
            return {"format": FORMAT, "name": name, "key": key, "config": to_jsonable(config),
                    "summary": to_jsonable(summary), "seconds": time.time() - t0}

        meta = publish_dir(self.path(name), fill, meta=STAGE_FILE)
        log.info("stage %s: done in %.1f s", name, meta["seconds"])
        return StageRecord(name, key, meta["summary"], meta["seconds"], False, self.path(name))

    def seconds(self) -> dict[str, float]:
        return {n: round(r.seconds, 1) for n, r in self.records.items()}
