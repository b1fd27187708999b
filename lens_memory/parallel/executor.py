"""The execution seam: how the suite's long loops run, in this process or on a cluster.

Every long loop of lens_memory (facts in tracing, facts in ROME fitting and in edit evaluations,
strengths in steering evaluations, layers in CAA and memory sweeps, corpus shards in key statistics)
is written as *items* and one module-level *item function* ``fn(model, item, shared) -> result``,
handed to an :class:`Executor`::

    results = executor_for(lm, executor).map(lm, trace_item, facts, shared=(cfg, scale, metric))

The method's code does not know where the items run. Two executors exist:

* :class:`InProcess` (the default, what the suite always did): the items run one after the other
  on ``lm`` itself, in order;
* :class:`~lens_memory.parallel.ray_executor.RayExecutor`: the items run in chunks on Ray actors
  that each load the same model once (same load spec, weight hash checked) and keep it.

Results come back in item order, so a result object built from them is the same whichever
executor ran them (bit-identical where each item's computation is independent of the others).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator, Sequence

from ..errors import LensMemoryError, ParallelError

__all__ = ["Executor", "InProcess", "IN_PROCESS", "ItemFunction", "executor_for", "using_executor", "ParallelError",
           "chunked"]

log = logging.getLogger(__name__)

#: ``fn(model, item, shared) -> result``: a module-level function (workers import it by name)
ItemFunction = Callable[[Any, Any, Any], Any]


class Executor:
    """Runs ``fn(model, item, shared)`` for every item and returns the results in item order.

    Attributes:
        workers: how many items can run at once (1 in process); shard plans use it as their default.
        name: ``"in-process"`` or ``"ray"``, recorded in provenance.
    """

    workers: int = 1
    name: str = "executor"

    def map(self, lm: Any, fn: ItemFunction, items: Sequence[Any], *, shared: Any = None, desc: str = "",
            progress: bool = True, on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Results of ``fn(lm, item, shared)`` in item order; ``on_result(index, result)`` as each finishes."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What ran the items, for provenance (never part of a result's numbers)."""
        return {"executor": self.name, "workers": self.workers}


class InProcess(Executor):
    """The items one after the other on the model itself (today's behaviour, the default)."""

    name = "in-process"

    def map(self, lm: Any, fn: ItemFunction, items: Sequence[Any], *, shared: Any = None, desc: str = "",
            progress: bool = True, on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        from tqdm.auto import tqdm

        out = []
        for i, item in enumerate(tqdm(list(items), desc=desc or fn.__name__, disable=not progress or not items)):
            r = fn(lm, item, shared)
            if on_result is not None:
                on_result(i, r)
            out.append(r)
        return out


IN_PROCESS = InProcess()


def executor_for(lm: Any, executor: Executor | None = None) -> Executor:
    """The executor to use: the one passed, else the one ``lm.parallel(...)`` opened, else :class:`InProcess`.

    An executor that runs the items elsewhere cannot see artifacts applied to ``lm`` in this process
    (its workers load the unedited weights), so while ``lm`` has any applied, the items run in process.
    """
    chosen = executor if executor is not None else getattr(lm, "executor", None)
    if chosen is None or isinstance(chosen, InProcess):
        return IN_PROCESS
    handles = list(getattr(lm, "handles", []))
    if handles:
        log.info("%s has %d artifact(s) applied (%s); the workers hold the unedited model, so these items run "
                    "in this process", getattr(lm, "name", "model"), len(handles),
                    ", ".join(sorted({h.kind for h in handles})))
        return IN_PROCESS
    return chosen


@contextlib.contextmanager
def using_executor(lm: Any, executor: Executor) -> Iterator[Executor]:
    """Within the block, the suite's loops on ``lm`` run through ``executor`` (restored on exit)."""
    before = getattr(lm, "executor", None)
    lm.executor = executor
    try:
        yield executor
    finally:
        lm.executor = before


def chunked(n: int, size: int) -> list[range]:
    """Index ranges ``[0, size), [size, 2 size), ...`` covering ``range(n)``."""
    if size < 1:
        raise LensMemoryError(f"chunk size must be a positive integer, got {size!r}")
    return [range(a, min(a + size, n)) for a in range(0, n, size)]
