"""Ray executor: the suite's loops on a cluster of model-holding actors (Ray, https://docs.ray.io).

Each worker is a Ray actor that loads the model **once**, from the same load spec as the driver's model
(:attr:`LensModel.spec`: name, dtype, seed, cache directory), checks that its weight hash equals the
driver's, and keeps it for every chunk it is sent. Where the cluster has GPUs each actor takes one
(``num_gpus=1``); otherwise each is a CPU actor with ``threads`` torch threads (``num_cpus=threads``).

Scheduling: the items are cut into chunks; each actor is sent one chunk at a time and gets the next when
it returns (so a slow actor takes fewer). Results are put back in item order.

Faults:

* an exception inside an item comes back as a value and is raised in the driver as the same exception
  class (``LensMemoryError`` subclasses and builtins; anything else as :class:`ParallelError`) with the
  worker's message, not a wall of Ray tracebacks; the worker's traceback is logged at DEBUG;
* a worker that dies (killed, out of memory, segfault) is restarted by Ray, which reloads the model, and
  its chunk is sent again (``max_task_retries``), up to ``retries`` times per chunk; a chunk that still
  kills its worker raises :class:`ParallelError`;
* a worker that cannot load the model fails :meth:`RayExecutor.start` with the worker's error.

Ray is an optional dependency: ``pip install lens_memory[ray]``.
"""

from __future__ import annotations

import builtins
import collections
import logging
import math
import os
import traceback
from typing import Any, Callable, Sequence

from .executor import Executor, ItemFunction, ParallelError, chunked

__all__ = ["RayExecutor", "ModelWorker", "require_ray"]

log = logging.getLogger(__name__)


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`ParallelError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ParallelError("running on a Ray cluster needs Ray: pip install 'lens_memory[ray]' "
                            "(or pip install ray)") from None
    return ray


class ModelWorker:
    """A Ray actor's state: the model, loaded once from the driver's load spec (wrapped by ``ray.remote``)."""

    def __init__(self, spec: dict[str, Any], device: str, threads: int):
        import torch

        self.lm, self.error = None, None
        try:
            torch.set_num_threads(threads)
            from ..models import load_model

            self.lm = load_model(**{**spec, "device": device})
        except Exception as exc:  # reported by ready(): the worker's own error, not Ray's actor-died wall
            self.error = _failure(exc)

    def ready(self) -> dict[str, Any]:
        import socket

        import torch

        if self.error is not None:
            return {"error": self.error}
        return {"weight_hash": self.lm.identity.weight_hash, "threads": torch.get_num_threads(),
                "host": socket.gethostname(), "pid": os.getpid(), "device": str(self.lm.device)}

    def run(self, fn: ItemFunction, items: Sequence[Any], shared: Any) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for item in items:
            try:
                out.append(("ok", fn(self.lm, item, shared)))
            except Exception as exc:
                out.append(("error", _failure(exc)))
                break
        return out


def _failure(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc),
            "traceback": traceback.format_exc()}


def _reraise(f: dict[str, str], where: str) -> None:
    """Raise a worker's failure in the driver as its own class where that class is known here."""
    import importlib

    log.debug("traceback on %s:\n%s", where, f["traceback"])
    cls = None
    if f["module"] == "builtins":
        cls = getattr(builtins, f["type"], None)
    elif f["module"].split(".")[0] == "lens_memory":
        cls = getattr(importlib.import_module(f["module"]), f["type"], None)
    try:
        exc = cls(f"{f['message']} (on {where})") if isinstance(cls, type) and issubclass(cls, Exception) else None
    except Exception:  # a class whose constructor takes other arguments
        exc = None
    raise exc if exc is not None else ParallelError(f"{f['type']} on {where}: {f['message']}")


class RayExecutor(Executor):
    """Run the suite's item loops on Ray actors that each hold the model.

    Args:
        address: ``None`` starts (or joins) a local Ray instance; ``"auto"`` or ``"ray://host:10001"`` joins
            a running cluster (``ray start --head`` on one machine, ``ray start --address=...`` on the others).
        workers: actors to start (each loads the model once).
        threads: torch threads per CPU actor (``num_cpus`` it reserves); default 1.
        gpus: GPUs per actor: ``None`` takes 1 when the cluster has GPUs, else 0.
        chunk_size: items per task; default spreads the items as 4 chunks per worker.
        retries: times a chunk is sent again after its worker died (the worker is restarted each time).
        start_timeout: seconds to wait for the workers to load the model (a cluster without room for them
            would otherwise wait for ever).
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int = 2, *, threads: int = 1, gpus: float | None = None,
                 chunk_size: int | None = None, retries: int = 2, start_timeout: float = 300.0):
        for label, v in (("workers", workers), ("threads", threads)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ParallelError(f"{label} must be a positive integer, got {v!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ParallelError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ParallelError(f"retries must be a non-negative integer, got {retries!r}")
        self.address, self.workers, self.threads, self.gpus = address, workers, threads, gpus
        self.chunk_size, self.retries, self.start_timeout = chunk_size, retries, start_timeout
        self.actors: list[Any] = []
        self.info: list[dict[str, Any]] = []
        self._spec: dict[str, Any] | None = None
        self._started_ray = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, lm: Any) -> None:
        """Start the actors for ``lm`` (once): each loads the model and must report the driver's weight hash."""
        spec = getattr(lm, "spec", None)
        if spec is None:
            raise ParallelError(f"{getattr(lm, 'name', lm)!r} was not loaded by load_model, so workers cannot load "
                                "it again; load it with lens_memory.load_model(...) to run on a cluster")
        if self.actors and spec == self._spec:
            return
        self.stop_actors()
        ray = self._init_ray()
        gpus = self.gpus if self.gpus is not None else (1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0)
        device = "cuda" if gpus else "cpu"
        cls = ray.remote(num_cpus=self.threads, num_gpus=gpus, max_restarts=-1,
                         max_task_retries=self.retries)(ModelWorker)
        self.actors = [cls.remote(spec, device, self.threads) for _ in range(self.workers)]
        self._spec = spec
        try:
            self.info = ray.get([a.ready.remote() for a in self.actors], timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError:
            free = ray.available_resources()
            self.stop_actors()
            raise ParallelError(f"{self.workers} Ray workers ({self.threads} CPU, {gpus} GPU each) did not start within "
                                f"{self.start_timeout:g} s; the cluster has {free.get('CPU', 0):g} CPU and "
                                f"{free.get('GPU', 0):g} GPU free (fewer workers, or stop other actors)") from None
        for k, info in enumerate(self.info):
            if "error" in info:
                self.stop_actors()
                _reraise(info["error"], f"Ray worker {k} loading {spec['name']!r}")
            if info["weight_hash"] != lm.identity.weight_hash:
                self.stop_actors()
                raise ParallelError(f"Ray worker {k} loaded {spec['name']!r} with weights {info['weight_hash'][:12]}, "
                                    f"not the driver's {lm.identity.weight_hash[:12]}: the workers see other files")
        log.info("%d Ray workers hold %s (%s)", len(self.actors), spec["name"], device)

    def _init_ray(self) -> Any:
        ray = require_ray()
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address is None:
                kw["num_cpus"] = max(self.workers * self.threads, os.cpu_count() or 1)
            ray.init(address=self.address, **kw)
            self._started_ray = True
        return ray

    def stop_actors(self) -> None:
        if self.actors:
            ray = require_ray()
            for a in self.actors:
                ray.kill(a, no_restart=True)
        self.actors, self.info, self._spec = [], [], None

    def close(self) -> None:
        """Stop the actors, and Ray itself if this executor started it."""
        self.stop_actors()
        if self._started_ray:
            require_ray().shutdown()
            self._started_ray = False

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": self.workers, "threads_per_worker": self.threads,
                "address": self.address, "hosts": sorted({i.get("host", "?") for i in self.info})}

    # -- the seam ----------------------------------------------------------------------------
    def map(self, lm: Any, fn: ItemFunction, items: Sequence[Any], *, shared: Any = None, desc: str = "",
            progress: bool = True, on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        items = list(items)
        if not items:
            return []
        self.start(lm)
        ray = require_ray()
        size = self.chunk_size or max(1, math.ceil(len(items) / (4 * len(self.actors))))
        queue = collections.deque(chunked(len(items), size))
        shared_ref = ray.put(shared)
        results: list[Any] = [None] * len(items)
        return self._drain(ray, fn, items, shared_ref, queue, results, desc or fn.__name__, progress, on_result)

    def _drain(self, ray: Any, fn: ItemFunction, items: list, shared_ref: Any, queue: collections.deque,
               results: list, desc: str, progress: bool, on_result: Callable | None) -> list[Any]:
        from tqdm.auto import tqdm

        pending: dict[Any, tuple[int, range]] = {}

        def submit(k: int) -> None:
            if queue:
                chunk = queue.popleft()
                pending[self.actors[k].run.remote(fn, [items[i] for i in chunk], shared_ref)] = (k, chunk)

        for k in range(len(self.actors)):
            submit(k)
        with tqdm(total=len(items), desc=f"{desc} (ray x{len(self.actors)})", disable=not progress) as bar:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                k, chunk = pending.pop(ref)
                try:
                    got = ray.get(ref)
                except ray.exceptions.RayActorError as exc:  # Ray restarted the worker and resent the chunk already
                    raise ParallelError(f"Ray worker {k} died {self.retries + 1} times on items {chunk.start}.."
                                        f"{chunk.stop - 1} of {desc}: {str(exc).splitlines()[0]}") from None
                for i, (status, value) in zip(chunk, got):
                    if status == "error":
                        _reraise(value, f"Ray worker {k}, item {i} of {desc}")
                    results[i] = value
                    if on_result is not None:
                        on_result(i, value)
                bar.update(len(chunk))
                submit(k)
        return results
