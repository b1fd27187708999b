"""Past one machine: the suite's long loops on a Ray cluster, with results identical to a serial run.

Researchers outgrow one machine: ROME traced 1,000 facts per model, MEMIT evaluated 10,000 CounterFact
edits, and key statistics over 100k Wikipedia samples take tens of GPU-hours on 7B models. The loops
that take the time are written once, as items and an item function (:mod:`.executor`), and run through
an executor: in this process (the default) or on Ray actors that each hold the model (:mod:`.ray_executor`).

From a notebook::

    lm = load_model("gemma-3-270m")
    with lm.parallel(workers=4):              # local Ray; address="ray://head:10001" joins a cluster
        tr = trace_facts(lm, facts)           # facts fanned out, same TraceResult as a serial run
        st = key_statistics(lm, [5, 6])       # corpus shards summed, shard plan recorded

or with an explicit ``executor=RayExecutor(...)`` argument. From the CLI: ``--ray [ADDRESS] --workers N``
on ``trace``, ``edit``, ``steer``, ``memory`` and ``report``.

What is the same and what is not:

* per-item loops (tracing, ROME fitting, per-fact edit evaluation, steering strengths, CAA and memory
  layer sweeps) give **bit-identical** results: each item is computed by the same code on the same weights,
  and the results are put back in item order (tested against a serial run on a local Ray cluster);
* key statistics are sums over corpus shards; a plan with more shards adds the same products in another
  order, so it differs from the one-shard sum by float64 rounding only. The plan is recorded
  (``KeyStats.meta["shard_plan"]``) and ``key_statistics(..., shards=N)`` reproduces it exactly,
  in process or on any cluster.

Artifacts applied to the driver's model are not on the workers (they load the unedited weights), so while
any is applied the loops run in process (logged).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from .executor import (IN_PROCESS, Executor, InProcess, ItemFunction, ParallelError, chunked, executor_for,
                       using_executor)
from .ray_executor import RayExecutor, require_ray

__all__ = ["Executor", "InProcess", "IN_PROCESS", "RayExecutor", "ItemFunction", "ParallelError", "executor_for",
           "using_executor", "parallel", "require_ray", "chunked"]


@contextlib.contextmanager
def parallel(lm: Any, address: str | None = None, workers: int = 2, **options: Any) -> Iterator[RayExecutor]:
    """Within the block, ``lm``'s loops run on ``workers`` Ray actors (see :class:`RayExecutor` for ``options``).

    The actors are started on first use, keep the model for the whole block, and are stopped on exit
    (and Ray shut down if this call started it), also after an exception.
    """
    ex = RayExecutor(address, workers, **options)
    require_ray()
    try:
        with using_executor(lm, ex):
            yield ex
    finally:
        ex.close()
