"""The report job on the tiny model: every stage, resumption, cache keys, figures from saved results."""

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lens_memory.errors import LensMemoryError
from lens_memory.report.pipeline import STAGES, ReportConfig, report_inputs, run_report, stage_key_config
from lens_memory.report.stages import StageRunner, config_key

from conftest import TINY_REPORT


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_report_writes_html_markdown_summary_and_the_headline_table(tiny_report):
    out, s = tiny_report
    assert (out / "report.html").stat().st_size > 10_000 and (out / "report.md").exists()
    assert set(s["seconds"]) == set(STAGES) | {"render"} and all(v >= 0 for v in s["seconds"].values())
    mechs = [r["mechanism"] for r in s["headline"]]
    assert mechs == ["none", "rome", "memit", "kv_dense", "kv_sparse", "rag", "fact_vector"]
    assert all(r["reversible"] is True for r in s["headline"])
    assert json.loads((out / "summary.json").read_text())["headline"] == s["headline"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 10 and "Provenance" in html and "sae-lens" in html
    md = (out / "report.md").read_text()
    for r in s["headline"]:
        assert f"| {r['mechanism']} |" in md
    assert (out / "figures" / "taxonomy.png").exists() and (out / "figures" / "taxonomy.pdf").exists()


def test_an_interrupted_run_resumes_and_never_reuses_half_written_stages(tiny_report, tmp_path):
    out, _ = tiny_report
    run = tmp_path / "run"
    shutil.copytree(out, run)
    # simulate an interruption inside 'steer_lmsteer': its directory is half-written, never renamed,
    # and the process that wrote it is gone (a pid that has certainly exited: partials of live pids are kept)
    pid = _dead_pid()
    shutil.move(run / "stages" / "steer_lmsteer", run / "stages" / f"steer_lmsteer.partial-{pid}")
    (run / "stages" / f"steer_lmsteer.partial-{pid}" / "stage.json").unlink()
    s = run_report(run, ReportConfig.quick_config(**TINY_REPORT), progress=False)
    assert set(s["reused_stages"]) == set(STAGES) - {"steer_lmsteer"}
    assert not list((run / "stages").glob("*.partial-*"))
    assert (run / "stages" / "steer_lmsteer" / "stage.json").exists()
    # a config change reruns only the stages that depend on it
    s2 = run_report(run, ReportConfig.quick_config(**{**TINY_REPORT, "steer_tokens": 5}), progress=False,
                    stages=("facts", "trace", "steer_caa"))
    assert s2["reused_stages"] == ["facts", "trace"]


def test_stage_runner_keys_and_atomicity(tmp_path):
    r = StageRunner(tmp_path)
    calls = []

    def ok(d):
        calls.append(1)
        (d / "x.txt").write_text("done")
        return {"n": 1}

    assert r.run("a", {"k": 1}, ok).summary == {"n": 1} and r.run("a", {"k": 1}, ok).reused
    assert len(calls) == 1 and config_key({"k": 1}) != config_key({"k": 2})
    r.run("a", {"k": 2}, ok)
    assert len(calls) == 2

    def boom(d):
        (d / "half.txt").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        r.run("a", {"k": 3}, boom)
    assert (tmp_path / "a" / "x.txt").read_text() == "done"  # the finished stage is untouched
    assert r.done("a", {"k": 3}) is None and r.done("a", {"k": 2}) is not None
    with pytest.raises(LensMemoryError, match="invalid stage name"):
        r.run("../x", {}, ok)


def test_report_config_is_validated_with_the_value_named():
    with pytest.raises(LensMemoryError, match="n_facts must be >= 1, got 0"):
        ReportConfig(n_facts=0)
    with pytest.raises(LensMemoryError, match="trace_kinds must include 'mlp'"):
        ReportConfig(trace_kinds=("hidden",))
    with pytest.raises(LensMemoryError, match=r"unknown stage\(s\) \['nope'\]"):
        run_report("/tmp/never", ReportConfig(), stages=("nope",))


def test_make_figures_regenerates_every_figure_from_saved_results(tiny_report, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out, _ = tiny_report
    script = Path(__file__).parents[2] / "analyses" / "make_figures.py"
    res = subprocess.run([sys.executable, str(script), "--run", str(out), "--out", str(tmp_path / "figs")],
                         capture_output=True, text=True, check=True)
    last = json.loads(res.stdout.strip().splitlines()[-1])
    pngs = sorted(p.stem for p in (tmp_path / "figs").glob("*.png"))
    assert last["n_figures"] == len(pngs) >= 10
    assert sorted(p.stem for p in (tmp_path / "figs").glob("*.pdf")) == pngs
    for name in ("taxonomy", "comparison_knowledge", "trace_aie", "attention_reference_heatmap", "steering_tradeoff_caa"):
        assert name in pngs
    bad = subprocess.run([sys.executable, str(script), "--run", str(tmp_path / "nothing")], capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "no finished report run" in bad.stderr


# -- issue 16, defects 3 and 5: content keys, manifests, locks ---------------------------------------

class _FakeTokenizer:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)


def _fake_lm(weight_hash="w0", vocab=(("a", 0), ("b", 1))):
    return SimpleNamespace(identity=SimpleNamespace(weight_hash=weight_hash, prepend_bos=True),
                           tokenizer=_FakeTokenizer(vocab))


def _write_facts(path: Path, n: int) -> None:
    from lens_memory.facts import builtin_facts

    path.write_text(json.dumps([f.to_dict() for f in builtin_facts()[:n]]))


def test_stage_keys_hash_the_fact_file_and_the_model_not_their_names(tmp_path):
    facts = tmp_path / "facts.json"
    _write_facts(facts, 30)
    cfg = ReportConfig.quick_config(**{**TINY_REPORT, "facts": str(facts)})
    r, calls = StageRunner(tmp_path / "stages"), []

    def stage(d):
        calls.append(1)
        (d / "out.txt").write_text("x")
        return {}

    def run(lm):
        return r.run("facts", stage_key_config(cfg, "facts", report_inputs(cfg, lm)), stage)

    assert not run(_fake_lm()).reused and run(_fake_lm()).reused and len(calls) == 1
    _write_facts(facts, 31)  # same path, new contents
    assert not run(_fake_lm()).reused and len(calls) == 2
    assert not run(_fake_lm(weight_hash="w1")).reused and len(calls) == 3  # same name, other weights
    assert not run(_fake_lm("w1", vocab=(("a", 1), ("b", 0)))).reused and len(calls) == 4  # other tokenizer
    assert run(_fake_lm("w1", vocab=(("a", 1), ("b", 0)))).reused and len(calls) == 4
    # steering stages do not read the facts: a new fact file leaves their key alone
    steer = [stage_key_config(cfg, "steer_caa", report_inputs(cfg, _fake_lm()))]
    _write_facts(facts, 32)
    steer.append(stage_key_config(cfg, "steer_caa", report_inputs(cfg, _fake_lm())))
    assert config_key(steer[0]) == config_key(steer[1])
    builtin = ReportConfig.quick_config(**TINY_REPORT)
    assert len(report_inputs(builtin, _fake_lm())["facts_sha256"]) == 64  # builtin: hash of the records


def test_report_reruns_the_facts_stage_when_the_fact_file_changes_in_place(tmp_path):
    facts = tmp_path / "facts.json"
    _write_facts(facts, 30)
    cfg = ReportConfig.quick_config(**{**TINY_REPORT, "facts": str(facts)})
    out = tmp_path / "run"
    assert run_report(out, cfg, stages=("facts",), progress=False)["reused_stages"] == []
    assert run_report(out, cfg, stages=("facts",), progress=False)["reused_stages"] == ["facts"]
    _write_facts(facts, 29)
    assert run_report(out, cfg, stages=("facts",), progress=False)["reused_stages"] == []


def test_a_live_processes_partial_directory_is_kept_and_swept_once_it_is_dead(tmp_path):
    r = StageRunner(tmp_path)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        live = tmp_path / f"a.partial-{sleeper.pid}"
        live.mkdir()
        (live / "half.txt").write_text("being written")
        assert r.run("a", {"k": 1}, lambda d: (d / "x.txt").write_text("1") and {}).summary == {}
        assert (live / "half.txt").exists()  # another run's live directory: not ours to delete
    finally:
        sleeper.kill()
        sleeper.wait()
    r.run("a", {"k": 2}, lambda d: (d / "x.txt").write_text("2") and {})
    assert not live.exists() and (tmp_path / "a" / "x.txt").read_text() == "2"


def test_a_stage_whose_outputs_are_missing_or_altered_is_rerun(tmp_path):
    r, calls = StageRunner(tmp_path), []

    def stage(d):
        calls.append(1)
        (d / "sub").mkdir()
        (d / "sub" / "out.txt").write_text("result")
        return {"n": len(calls)}

    r.run("a", {"k": 1}, stage)
    meta = json.loads((tmp_path / "a" / "stage.json").read_text())
    assert meta["files"]["sub/out.txt"]["size"] == 6 and len(meta["files"]["sub/out.txt"]["sha256"]) == 64
    (tmp_path / "a" / "sub" / "out.txt").write_text("RESULT")  # same size, other bytes
    assert r.done("a", {"k": 1}) is None
    assert not r.run("a", {"k": 1}, stage).reused and len(calls) == 2
    (tmp_path / "a" / "sub" / "out.txt").unlink()  # only stage.json left
    assert r.done("a", {"k": 1}) is None
    assert not r.run("a", {"k": 1}, stage).reused and len(calls) == 3
    assert r.run("a", {"k": 1}, stage).reused and len(calls) == 3


def test_a_second_runner_waits_for_the_stage_lock_then_reuses_the_result(tmp_path):
    started, release, calls = threading.Event(), threading.Event(), []

    def slow(d):
        calls.append("first")
        started.set()
        release.wait(10)
        (d / "x.txt").write_text("done")
        return {"by": "first"}

    first = threading.Thread(target=lambda: StageRunner(tmp_path).run("a", {"k": 1}, slow))
    first.start()
    assert started.wait(10)
    second: list = []
    t = threading.Thread(target=lambda: second.append(
        StageRunner(tmp_path).run("a", {"k": 1}, lambda d: calls.append("second") or {"by": "second"})))
    t.start()
    time.sleep(0.5)
    assert not second and list(tmp_path.glob("a.partial-*"))  # waiting; the first run's directory is intact
    release.set()
    first.join(10)
    t.join(10)
    assert calls == ["first"] and second[0].reused and second[0].summary == {"by": "first"}
    with StageRunner(tmp_path).lock("a"), pytest.raises(LensMemoryError, match="held by another process"):
        StageRunner(tmp_path, lock_timeout=0.2).run("a", {"k": 2}, slow)


def test_cached_reuses_a_verified_entry_and_recomputes_a_corrupt_one(tmp_path):
    from lens_memory.cache import cached, content_key

    calls = []

    def compute():
        calls.append(1)
        return [1, 2, 3]

    def save(v, d):
        (d / "v.json").write_text(json.dumps(v))

    def load(d):
        return json.loads((d / "v.json").read_text())

    entry = tmp_path / "entry"
    assert cached(entry, {"n": 3}, compute, load, save) == [1, 2, 3]
    assert cached(entry, {"n": 3}, compute, load, save) == [1, 2, 3] and len(calls) == 1
    (entry / "v.json").write_text("[9, 9, 9]")  # corrupt: the manifest no longer verifies
    assert cached(entry, {"n": 3}, compute, load, save) == [1, 2, 3] and len(calls) == 2
    assert load(entry) == [1, 2, 3]
    assert cached(entry, {"n": 4}, compute, load, save) and len(calls) == 3  # another key
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1}) != content_key({"a": 2, "b": 1})

