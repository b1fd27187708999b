"""Benchmark: the execution seam on Ray vs in process (default: the embedded Gemma, this machine's CPUs).

Two measurements, each serial (in this process, ``--threads`` torch threads, the default 2) against
``--workers`` Ray workers with ``--threads // --workers`` thread(s) each (a local Ray instance):

1. causal tracing of ``--facts`` known built-in facts (default 8; all three kinds, default settings);
2. key statistics of one layer (``--stats-tokens`` tokens): one shard in process vs one shard per worker.

Definitions (all wall-clock seconds):

* ``serial_s``: ``trace_facts`` in process;
* ``startup_s``: ``ray.init`` plus every worker loading the model and reporting ready;
* ``map_s``: ``trace_facts`` through the Ray executor once the workers are up;
* ``speedup`` = ``serial_s / (startup_s + map_s)`` (what a user waits for), ``speedup_steady`` = ``serial_s / map_s``;
* ``overhead_s`` = ``startup_s + transfer_s``, where ``transfer_s = map_s - sum(per-fact trace seconds on the
  workers) / workers`` (scheduling, serialisation and the gap while a worker waits for its next chunk);
* ``identical``: the Ray traces equal, bit for bit, a serial run with the workers' thread count on the first
  ``--check`` facts (default 2); ``max_abs_diff_vs_serial`` compares them with the multi-threaded serial run
  (torch's CPU kernels split some reductions by thread count);
* key statistics: ``stats_speedup`` and ``stats_max_rel_diff`` (max |C_sharded - C_serial| / max |C_serial|).

On a 2-core machine the best possible speedup is about 1x: two 1-thread workers do what one 2-thread process does.

    python analyses/bench_scale_out.py [--facts 8] [--workers 2] [--threads 2] [--stats-tokens 20000] [--model M]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch


def _trace_diff(a, b) -> float:
    return max(float((x.scores[k] - y.scores[k]).abs().max()) for x, y in zip(a.traces, b.traces) for k in x.scores)


def _bitwise(a, b) -> bool:
    return all(torch.equal(x.scores[k], y.scores[k]) and x.high == y.high and x.low == y.low
               for x, y in zip(a.traces, b.traces) for k in x.scores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--facts", type=int, default=8)
    ap.add_argument("--check", type=int, default=2, help="facts traced again serially with the workers' threads")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the serial run (workers share them)")
    ap.add_argument("--stats-tokens", type=int, default=20000)
    ap.add_argument("--model", default="gemma-3-270m")
    args = ap.parse_args()

    import ray

    from lens_memory.edit import StatsConfig, key_statistics
    from lens_memory.edit.rome import default_layer
    from lens_memory.facts import builtin_facts, check_knowledge
    from lens_memory.models import load_model
    from lens_memory.parallel import InProcess, RayExecutor
    from lens_memory.trace import TraceConfig, trace_facts

    torch.set_num_threads(args.threads)
    per_worker = max(1, args.threads // args.workers)
    lm = load_model(args.model)
    facts = check_knowledge(lm, builtin_facts()[:80]).known_facts()[:args.facts]
    cfg = TraceConfig()
    t0 = time.perf_counter()
    serial = trace_facts(lm, facts, cfg, only_known=False, progress=False, executor=InProcess())
    serial_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    ex = RayExecutor(workers=args.workers, threads=per_worker)
    ex.start(lm)
    startup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fanned = trace_facts(lm, facts, cfg, only_known=False, progress=False, executor=ex)
    map_s = time.perf_counter() - t0
    transfer_s = map_s - sum(t.seconds for t in fanned.traces) / args.workers
    diff = _trace_diff(serial, fanned)

    layer = default_layer(lm)
    scfg = StatsConfig(n_tokens=args.stats_tokens)
    t0 = time.perf_counter()
    st_serial = key_statistics(lm, layer, scfg, use_cache=False, executor=InProcess())[layer]
    stats_serial_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    st_sharded = key_statistics(lm, layer, scfg, use_cache=False, executor=ex)[layer]
    stats_sharded_s = time.perf_counter() - t0
    ex.close()
    ray.shutdown()
    rel = float((st_sharded.mom2 - st_serial.mom2).abs().max() / st_serial.mom2.abs().max())

    torch.set_num_threads(per_worker)  # the workers' thread count: per-item results must be bit-identical
    fixed = dataclasses.replace(cfg, noise=serial.provenance["noise_scale"])  # the scale measured over all facts
    check = trace_facts(lm, facts[:args.check], fixed, only_known=False, progress=False, executor=InProcess())
    fanned.traces = fanned.traces[:args.check]
    identical = _bitwise(check, fanned)

    print(f"{'what':<34} {'serial s':>9} {'ray s':>9} {'speedup':>8}")
    print(f"{'trace ' + str(len(facts)) + ' facts (with start-up)':<34} {serial_s:>9.1f} {startup_s + map_s:>9.1f} "
          f"{serial_s / (startup_s + map_s):>8.2f}")
    print(f"{'trace, workers already up':<34} {serial_s:>9.1f} {map_s:>9.1f} {serial_s / map_s:>8.2f}")
    print(f"{'key statistics L' + str(layer) + ', ' + str(st_serial.n_tokens) + ' tok':<34} {stats_serial_s:>9.1f} "
          f"{stats_sharded_s:>9.1f} {stats_serial_s / stats_sharded_s:>8.2f}")
    print(f"start-up {startup_s:.1f} s, transfer/scheduling {transfer_s:.1f} s; bit-identical to a {per_worker}-thread "
          f"serial run on {args.check} facts: {identical}; sharded C max rel diff {rel:.2e}")
    print(json.dumps({
        "model": args.model, "n_facts": len(facts), "workers": args.workers, "threads_per_worker": per_worker,
        "serial_threads": args.threads, "kinds": list(cfg.kinds), "n_samples": cfg.n_samples,
        "serial_s": round(serial_s, 1), "startup_s": round(startup_s, 1), "map_s": round(map_s, 1),
        "speedup": round(serial_s / (startup_s + map_s), 2), "speedup_steady": round(serial_s / map_s, 2),
        "overhead_s": round(startup_s + transfer_s, 1), "transfer_s": round(transfer_s, 1),
        "identical": identical, "identical_checked_facts": args.check,
        "max_abs_diff_vs_serial": diff,
        "stats_layer": layer, "stats_tokens": st_serial.n_tokens, "stats_serial_s": round(stats_serial_s, 1),
        "stats_sharded_s": round(stats_sharded_s, 1), "stats_speedup": round(stats_serial_s / stats_sharded_s, 2),
        "stats_max_rel_diff": rel, "stats_shard_plan": st_sharded.meta["shard_plan"],
    }))


if __name__ == "__main__":
    main()
