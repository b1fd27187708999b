"""The report job on the tiny model: every stage, resumption, cache keys, figures from saved results."""

import json
import shutil

import pytest

from lens_memory.errors import LensMemoryError
from lens_memory.report.pipeline import STAGES, ReportConfig, run_report
from lens_memory.report.stages import StageRunner, config_key

from conftest import TINY_REPORT


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
    # simulate an interruption inside 'steer_lmsteer': its directory is half-written, never renamed
    shutil.move(run / "stages" / "steer_lmsteer", run / "stages" / "steer_lmsteer.partial-12345")
    (run / "stages" / "steer_lmsteer.partial-12345" / "stage.json").unlink()
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
