"""The execution seam on a local Ray cluster (2 CPUs): every fanned-out loop equals the serial run.

Serial references run with one torch thread, as each CPU worker does: torch's CPU kernels split some
reductions by thread count, so a run with 2 threads differs from a 1-thread run at ~1e-10 (measured on
the tiny model); with equal thread counts the per-item results are bit-identical.
"""

import contextlib
import copy
import math
import os
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from lens_memory.edit import StatsConfig, key_statistics  # noqa: E402
from lens_memory.errors import LayerOutOfRangeError, ModelUnavailableError, ParallelError  # noqa: E402
from lens_memory.facts import Fact, builtin_facts, spread_facts  # noqa: E402
from lens_memory.parallel import InProcess, RayExecutor, executor_for, require_ray  # noqa: E402
from lens_memory.trace import TraceConfig, trace_facts  # noqa: E402

FACTS = [Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris", case_id=0),
         Fact(subject="Colosseum", template="The {} is located in the city of", target_true="Rome", case_id=1),
         Fact(subject="Danube", template="The {} flows through", target_true="Vienna", case_id=2)]
TRACE_CFG = TraceConfig(n_samples=2, window=2)


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():  # e.g. left by the conformance matrix's parallel column
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the test module
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ex(cluster, tiny):
    ex = RayExecutor(workers=2, threads=1)
    yield ex
    ex.close()


def _same_traces(a, b):
    assert len(a.traces) == len(b.traces)
    for x, y in zip(a.traces, b.traces):
        assert x.fact == y.fact and x.high == y.high and x.low == y.low
        for k in x.scores:
            assert torch.equal(x.scores[k], y.scores[k]), k


def _same_rows(a, b):
    assert len(a) == len(b)
    for r, s in zip(a, b):
        assert r.keys() == s.keys()
        for k in r:
            same = (r[k] == s[k]) or (isinstance(r[k], float) and math.isnan(r[k]) and math.isnan(s[k]))
            assert same, (k, r[k], s[k])


def test_tracing_on_ray_is_bit_identical_to_serial(ex, tiny, tmp_path):
    with one_thread():
        serial = trace_facts(tiny, FACTS, TRACE_CFG, only_known=False, progress=False)
    fanned = trace_facts(tiny, FACTS, TRACE_CFG, only_known=False, progress=False, executor=ex,
                         checkpoint_dir=tmp_path)
    _same_traces(serial, fanned)
    assert serial.provenance == fanned.provenance
    assert len(list(tmp_path.rglob("fact*.safetensors"))) == 3  # checkpointed in the driver as items finished
    import lens_memory.trace as tr  # a driver restart resumes from them: nothing is traced again

    real = tr.trace_fact
    tr.trace_fact = lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed"))
    try:
        again = trace_facts(tiny, FACTS, TRACE_CFG, only_known=False, progress=False, checkpoint_dir=tmp_path)
    finally:
        tr.trace_fact = real
    _same_traces(serial, again)


def test_rome_fit_and_per_fact_evaluation_on_ray_equal_serial(ex, tiny, tmp_path, monkeypatch):
    from lens_memory.harness import EvalConfig, evaluate_edits
    from lens_memory.workflows.edit import edit_config, fit_edits

    monkeypatch.setenv("LENS_MEMORY_CACHE", str(tmp_path))
    facts = [f for f in spread_facts(builtin_facts()) if f.target_new][:3]
    cfg = edit_config(tiny, "rome", [1], stats_tokens=1500)
    ecfg = EvalConfig(fluency_facts=2, gen_tokens=4)
    with one_thread():
        run = fit_edits(tiny, facts, "rome", [1], config=cfg, progress=False, executor=InProcess())
        serial = evaluate_edits(tiny, facts, run.edits, per_fact=True, config=ecfg)
    fanned_run = fit_edits(tiny, facts, "rome", [1], config=cfg, progress=False, executor=ex)  # stats from the cache
    assert [e.edit_id for e in fanned_run.edits] == [e.edit_id for e in run.edits]
    fanned = evaluate_edits(tiny, facts, fanned_run.edits, per_fact=True, config=ecfg, executor=ex)
    _same_rows(serial.rows, fanned.rows)
    assert serial.generation == fanned.generation and serial.summary() == fanned.summary()
    assert "post_generation" in fanned.rows[1] and "post_generation" not in fanned.rows[2]


def test_steering_sweeps_on_ray_equal_serial(ex, tiny):
    from lens_memory.steer.caa import CAAConfig, caa, caa_layer_sweep
    from lens_memory.steer.evaluate import SteerEvalConfig, evaluate_steering

    vec = caa(tiny, "sentiment", CAAConfig(layers=(1,), n_pairs=4))
    cfg = SteerEvalConfig(strengths=(-2.0, 2.0, 4.0), gen_tokens=4, n_prompts=3, n_neutral_tokens=32)
    with one_thread():
        serial = evaluate_steering(tiny, "sentiment", vec, cfg, progress=False)
        sweep = caa_layer_sweep(tiny, "sentiment", [0, 1, 2], cfg=CAAConfig(n_pairs=4), n_eval=3)
    fanned = evaluate_steering(tiny, "sentiment", vec, cfg, progress=False, executor=ex)
    _same_rows(serial.rows, fanned.rows)
    assert serial.samples == fanned.samples and serial.strengths == fanned.strengths == [-2.0, 0.0, 2.0, 4.0]
    fanned_sweep = caa_layer_sweep(tiny, "sentiment", [0, 1, 2], cfg=CAAConfig(n_pairs=4), n_eval=3, executor=ex)
    assert (fanned_sweep.norms, fanned_sweep.prob_plus, fanned_sweep.prob_minus) == (
        sweep.norms, sweep.prob_plus, sweep.prob_minus)


def test_memory_layer_sweep_on_ray_equals_serial(ex, tiny):
    from lens_memory.memory import memory_layer_sweep

    facts = [f for f in spread_facts(builtin_facts()) if f.target_new][:2]
    with one_thread():
        serial = memory_layer_sweep(tiny, facts, [(0, 1), (2,), "all"], top_ks=(None, 2))
    fanned = memory_layer_sweep(tiny, facts, [(0, 1), (2,), "all"], top_ks=(None, 2), executor=ex)
    assert serial.rows == fanned.rows


def test_sharded_key_statistics_equal_serial_and_reproduce_from_their_plan(ex, tiny):
    cfg = StatsConfig(n_tokens=3000, batch_size=4)
    with one_thread():
        one = key_statistics(tiny, [1, 2], cfg, use_cache=False, executor=InProcess())
        planned = key_statistics(tiny, [1, 2], cfg, use_cache=False, shards=2, executor=InProcess())
    fanned = key_statistics(tiny, [1, 2], cfg, use_cache=False, executor=ex)  # default: one shard per worker
    assert one[1].meta["shard_plan"] == [[0, 6]] and fanned[1].meta["shard_plan"] == [[0, 3], [3, 6]]
    for j in (1, 2):
        assert fanned[j].n_tokens == one[j].n_tokens == 3048
        assert torch.allclose(fanned[j].mom2, one[j].mom2, rtol=1e-12, atol=0)  # float64 rounding only
        assert torch.equal(fanned[j].mom2, planned[j].mom2) and torch.equal(fanned[j].mean, planned[j].mean)
    assert fanned[1].meta["executor"]["executor"] == "ray"


def _dies_once(lm, fact, shared):
    """Kills its worker process the first time it meets the second fact (a marker file says it happened)."""
    from lens_memory.trace import _trace_item

    marker = Path(shared[-1])
    if fact.case_id == 1 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return _trace_item(lm, fact, shared[:-1])


def test_a_worker_killed_mid_run_is_restarted_and_the_result_is_the_same(ex, tiny, tmp_path):
    from lens_memory.trace import noise_scale

    cfg = TRACE_CFG.resolved(tiny.n_layers)
    scale = noise_scale(tiny, FACTS, cfg)
    from lens_memory.trace.metrics import resolve_metric

    with one_thread():
        serial = trace_facts(tiny, FACTS, TRACE_CFG, only_known=False, progress=False)
    ex.chunk_size = 1
    try:
        got = ex.map(tiny, _dies_once, FACTS, shared=(cfg, scale, resolve_metric(None), str(tmp_path / "died")),
                     progress=False)
    finally:
        ex.chunk_size = None
    assert (tmp_path / "died").exists()  # a worker did die
    for x, y in zip(serial.traces, got):
        for k in x.scores:
            assert torch.equal(x.scores[k], y.scores[k])


def _raises(lm, item, shared):
    lm.check_layer(item)


def test_errors_come_back_as_the_workers_own_error(ex, tiny):
    with pytest.raises(LayerOutOfRangeError, match=r"layer 99 is out of range for tiny.*on Ray worker \d, item 1"):
        ex.map(tiny, _raises, [0, 99, 1], progress=False)


def test_a_worker_that_cannot_load_the_model_says_why(ex, tiny, tmp_path):
    ex.stop_actors()  # this test's workers need the 2 CPUs of the local cluster
    broken = copy.copy(tiny)
    broken.spec = {**tiny.spec, "name": str(tmp_path)}  # a directory without a model in it
    with pytest.raises(ModelUnavailableError, match=r"cannot load model '.*'.*on Ray worker 0 loading"):
        ex.map(broken, _raises, [0], progress=False)
    other = copy.copy(tiny)
    other.spec = {**tiny.spec, "seed": 1}  # another random init: other weights than the driver's
    with pytest.raises(ParallelError, match="not the driver's"):
        ex.map(other, _raises, [0], progress=False)
    unloaded = copy.copy(tiny)
    unloaded.spec = None
    with pytest.raises(ParallelError, match="not loaded by load_model"):
        ex.map(unloaded, _raises, [0], progress=False)
    starved = RayExecutor(workers=3, start_timeout=5)
    with pytest.raises(ParallelError, match=r"did not start within 5 s; the cluster has \d CPU"):
        starved.map(tiny, _raises, [0], progress=False)
    ex.close()


def test_parallel_context_restores_and_applied_artifacts_keep_work_in_process(cluster, tiny):
    from lens_memory.steer.vector import SteeringVector

    assert tiny.executor is None
    with pytest.raises(RuntimeError, match="boom"):
        with tiny.parallel(workers=1) as ex:
            assert executor_for(tiny) is ex and ex.actors == []  # actors start on first use only
            raise RuntimeError("boom")
    assert tiny.executor is None and ray.is_initialized()  # a Ray instance it did not start is left running
    vec = SteeringVector("caa", {1: torch.ones(tiny.d_model)}, "toy", model=tiny.identity.to_dict())
    with tiny.parallel(workers=1) as ex, vec.apply(tiny, 1.0):
        assert isinstance(executor_for(tiny), InProcess)  # workers hold the unedited model


def test_without_ray_the_message_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ParallelError, match=r"pip install 'lens_memory\[ray\]'"):
        require_ray()


@pytest.mark.parametrize("kw, msg", [({"workers": 0}, "workers must be a positive integer, got 0"),
                                     ({"threads": 1.5}, "threads must be a positive integer, got 1.5"),
                                     ({"chunk_size": 0}, "chunk_size must be a positive integer, got 0"),
                                     ({"retries": -1}, "retries must be a non-negative integer, got -1")])
def test_executor_arguments_are_checked(kw, msg):
    with pytest.raises(ParallelError, match=msg):
        RayExecutor(**kw)


def test_cli_trace_with_ray_writes_the_serial_result(ex, tiny, tmp_path):
    from lens_memory.cli import main
    from lens_memory.trace import TraceResult

    import json

    ex.stop_actors()  # the command starts its own 2 workers on the 2 CPUs of the local cluster
    known = []  # facts the tiny model "knows": its top-1 word after each prompt
    for i, f in enumerate(builtin_facts()[:3]):
        top = int(tiny.next_token_probs(f.prompt).argmax())
        known.append({"known_id": i, "subject": f.subject, "template": f.template, "attribute": tiny.decode(top).strip()})
    (tmp_path / "known.json").write_text(json.dumps(known))
    args = ["trace", "--model", "tiny", "--facts", str(tmp_path / "known.json"), "--samples", "2", "--window", "2"]
    with one_thread():
        assert main(args + ["--out", str(tmp_path / "serial")]) == 0
    assert main(args + ["--out", str(tmp_path / "ray"), "--ray", "--workers", "2"]) == 0
    _same_traces(TraceResult.load(tmp_path / "serial" / "trace"), TraceResult.load(tmp_path / "ray" / "trace"))


def test_cli_without_ray_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    from lens_memory.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["trace", "--model", "tiny", "--limit", "1", "--out", str(tmp_path), "--ray"]) == 2
    assert "pip install 'lens_memory[ray]'" in capsys.readouterr().err


def test_report_stages_on_ray_equal_serial(ex, tiny, tmp_path, monkeypatch):
    import json

    from lens_memory.report.pipeline import ReportConfig, run_report
    from lens_memory.trace import TraceResult

    from conftest import TINY_REPORT

    monkeypatch.setenv("LENS_MEMORY_CACHE", str(tmp_path / "cache"))
    cfg = ReportConfig.quick_config(**TINY_REPORT)
    stages = ("facts", "trace", "rome")
    with one_thread():
        run_report(tmp_path / "serial", cfg, stages=stages, progress=False)
    run_report(tmp_path / "ray", cfg, stages=stages, progress=False, executor=ex)
    trace = [TraceResult.load(tmp_path / run / "stages" / "trace" / "trace") for run in ("serial", "ray")]
    _same_traces(*trace)
    ids = [sorted(json.loads(p.read_text())["edit_id"] for p in (tmp_path / run / "stages" / "rome").rglob("edit.json"))
           for run in ("serial", "ray")]
    assert ids[0] == ids[1] and len(ids[0]) == TINY_REPORT["n_facts"]
