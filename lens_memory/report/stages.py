"""Cached, resumable stages for long jobs (the report runs a dozen of them).

A stage is a named function that writes its outputs into a directory and returns a JSON-able
summary. :class:`StageRunner` runs it into ``ROOT/NAME.partial-<pid>``, writes ``stage.json``
(name, config key, summary, seconds) last, and only then renames the directory to
``ROOT/NAME``. So:

* a finished stage is reused when its config key matches (the run is resumable: an interrupted
  job continues at the first unfinished stage);
* a half-written stage is never reused -- it has no ``stage.json`` or is still ``.partial``, and
  is deleted before the stage runs again;
* a stage whose config changed is rerun (the old directory is replaced only once the new one is
  complete).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import LensMemoryError
from ..io import read_json, to_jsonable, write_json

__all__ = ["StageRunner", "StageRecord", "config_key"]

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
FORMAT = "lens_memory.stage/1"


def config_key(config: Any) -> str:
    """A stable hash of a JSON-able config (dict keys sorted)."""
    blob = json.dumps(to_jsonable(config), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StageRecord:
    name: str
    key: str
    summary: dict[str, Any]
    seconds: float
    reused: bool = False
    path: Path = field(default_factory=Path)


class StageRunner:
    """Runs stages under ``root``; finished ones with the same config key are loaded, not rerun."""

    def __init__(self, root: str | Path, *, force: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.force = force
        self.records: dict[str, StageRecord] = {}

    def path(self, name: str) -> Path:
        return self.root / name

    def done(self, name: str, config: Any) -> StageRecord | None:
        """The finished record of ``name`` if it exists with the same config key, else ``None``."""
        p = self.path(name) / STAGE_FILE
        if not p.exists():
            return None
        try:
            meta = read_json(p)
        except Exception:  # unreadable: treat as unfinished
            return None
        if meta.get("format") != FORMAT or meta.get("key") != config_key(config):
            return None
        return StageRecord(name, meta["key"], meta["summary"], meta["seconds"], True, self.path(name))

    def run(self, name: str, config: Any, fn: Callable[[Path], dict[str, Any]]) -> StageRecord:
        """Run ``fn(tmp_dir) -> summary`` unless ``name`` is already done with this ``config``."""
        if "/" in name or name.startswith(".") or not name:
            raise LensMemoryError(f"invalid stage name {name!r}")
        if not self.force:
            rec = self.done(name, config)
            if rec is not None:
                log.info("stage %s: reused (%.1f s when it ran)", name, rec.seconds)
                self.records[name] = rec
                return rec
        for stale in self.root.glob(f"{name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / f"{name}.partial-{os.getpid()}"
        tmp.mkdir(parents=True)
        log.info("stage %s: running", name)
        t0 = time.time()
        summary = fn(tmp)
        seconds = time.time() - t0
        key = config_key(config)
        write_json(tmp / STAGE_FILE, {"format": FORMAT, "name": name, "key": key, "config": to_jsonable(config),
                                      "summary": summary, "seconds": seconds})
        final = self.path(name)
        if final.exists():
            old = self.root / f"{name}.old-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        rec = StageRecord(name, key, read_json(final / STAGE_FILE)["summary"], seconds, False, final)
        self.records[name] = rec
        log.info("stage %s: done in %.1f s", name, seconds)
        return rec

    def seconds(self) -> dict[str, float]:
        return {n: round(r.seconds, 1) for n, r in self.records.items()}
