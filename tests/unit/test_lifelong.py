"""Lifelong editing on tiny random models: AlphaEdit's null-space property and its reduction to MEMIT,
sequences that apply and remove bit for bit, checkpoints that resume to the same sequence, health rows."""

import dataclasses
import json
import math

import pytest
import torch

from lens_memory.corpus import load_corpus
from lens_memory.edit import StatsConfig, key_statistics, memit
from lens_memory.edit.alphaedit import AlphaEditConfig, alphaedit
from lens_memory.edit.memit import MemitConfig
from lens_memory.edit.rome import rome
from lens_memory.edit.sequence import EditSequence, sequence_config, sequential_edit
from lens_memory.edit.solve import alphaedit_update, memit_update, nullspace_projector
from lens_memory.edit.weights import linear_weight
from lens_memory.errors import LensMemoryError
from lens_memory.fact import Fact
from lens_memory.facts import load_facts
from lens_memory.harness.lifelong import HealthConfig, HealthProbe, LifelongHealth

TEXTS = [f"The {w} is located in the city of {c}. People visit {c} to see the {w} every year."
         for w, c in [("Eiffel Tower", "Paris"), ("Colosseum", "Rome"), ("Big Ben", "London"), ("Kremlin", "Moscow"),
                      ("Brandenburg Gate", "Berlin"), ("Sagrada Familia", "Barcelona")]] * 6
STATS = StatsConfig(corpus=TEXTS, n_tokens=1500, seq_len=32, batch_size=8)
SHORT = dict(stats=STATS, context_lengths=((3, 2),), v_steps=6)
FACTS = load_facts(split="test")[:6]
HELD = tuple(load_facts(split="dev")[:3])


@pytest.fixture(scope="module")
def stats(tiny):
    return key_statistics(tiny, [0, 1, 2], STATS, corpus=load_corpus(TEXTS), use_cache=False)


def _median_eig(st) -> float:
    return float(torch.linalg.eigvalsh(st.mom2.double()).median())


def _ae_config(tiny, stats, layers=(0, 1, 2), **kw):
    return sequence_config(tiny, "alphaedit", layers=list(layers),
                           **{**SHORT, "nullspace_threshold": _median_eig(stats[1]), **kw})


def _state(lm):
    return {k: v.clone() for k, v in lm.hf.state_dict().items()}


def _same_state(lm, before):
    return all(torch.equal(lm.hf.state_dict()[k], v) for k, v in before.items())


# -- the closed forms ------------------------------------------------------------------------

def test_alphaedit_update_solves_its_system_and_spares_the_preserved_subspace():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(16, 400, generator=g, dtype=torch.float64) * torch.linspace(0.01, 3, 16, dtype=torch.float64)[:, None]
    C = X @ X.T / 400
    P, dim = nullspace_projector(C, threshold=float(torch.linalg.eigvalsh(C)[8]))
    assert dim == 8 and torch.allclose(P @ P, P, atol=1e-12)
    K, R = torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randn(12, 3, generator=g, dtype=torch.float64)
    Kp = torch.randn(16, 4, generator=g, dtype=torch.float64)
    U, V, cond = alphaedit_update(K, R, P, Kp @ Kp.T, l2=10.0)
    A = P @ (K @ K.T + Kp @ Kp.T) + 10.0 * torch.eye(16, dtype=torch.float64)
    assert torch.allclose(A @ V, P @ K, atol=1e-10)  # the reference code's system
    dW = U @ V.T
    assert torch.allclose(dW @ (torch.eye(16, dtype=torch.float64) - P), torch.zeros(12, 16, dtype=torch.float64),
                          atol=1e-12)  # ΔW (I - P) = 0
    big = torch.linalg.eigh(C).eigenvectors[:, 8:]  # preserved directions: their outputs do not move
    assert dW.matmul(big).abs().max() < 1e-12 and math.isfinite(cond) and cond >= 1


def test_alphaedit_update_without_projection_is_memits():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(16, 200, generator=g, dtype=torch.float64)
    C = X @ X.T / 200
    K, R = torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randn(12, 3, generator=g, dtype=torch.float64)
    U, V, _ = alphaedit_update(K, R, torch.eye(16, dtype=torch.float64), None, l2=0.0, C=C, lam=7.0)
    Um, Vm = memit_update(C, K, R, 7.0)
    assert torch.allclose(U @ V.T, Um @ Vm.T, atol=1e-10)


# -- whole edits on the tiny model -----------------------------------------------------------

@pytest.mark.parametrize("layers,n", [((0, 1, 2), 2), ((1,), 1)], ids=["memit-window", "rome-style-single"])
def test_alphaedit_edit_leaves_preserved_keys_outputs_unchanged(tiny, stats, layers, n):
    cfg = _ae_config(tiny, stats, layers=layers)
    edit = alphaedit(tiny, FACTS[:n], cfg, stats=stats)
    assert edit.method == "alphaedit" and edit.info["nullspace_dim"][1] > 0
    for j in cfg.layers:
        ev, U = torch.linalg.eigh(stats[j].mom2.double())
        keep = U[:, ev >= cfg.nullspace_threshold]  # the preserved subspace: W' k = W k there
        before = linear_weight(tiny, j).double() @ keep
        with edit.apply(tiny):
            after = linear_weight(tiny, j).double() @ keep
        assert (after - before).abs().max() <= 1e-5 * before.abs().max()
    # and the edit still writes its facts (the update is not zero)
    assert all(edit.delta(j).norm() > 0 for j in cfg.layers)


def test_alphaedit_with_projection_and_accumulation_off_is_memit(tiny, stats):
    lam = 50.0
    cfg_m = MemitConfig(layers=(0, 1, 2), mom2_update_weight=lam, **SHORT)
    cfg_a = AlphaEditConfig(layers=(0, 1, 2), mom2_update_weight=lam, project=False, accumulate=False, l2=0.0, **SHORT)
    m, a = memit(tiny, FACTS[:2], cfg_m, stats=stats), alphaedit(tiny, FACTS[:2], cfg_a, stats=stats)
    for j in (0, 1, 2):
        assert torch.allclose(a.delta(j), m.delta(j), rtol=1e-5, atol=1e-7 * m.delta(j).abs().max())


def test_alphaedit_refuses_an_empty_null_space(tiny, stats):
    with pytest.raises(LensMemoryError, match="nullspace_threshold=1e-12"):
        alphaedit(tiny, FACTS[:1], _ae_config(tiny, stats, nullspace_threshold=1e-12), stats=stats)


# -- sequences --------------------------------------------------------------------------------

def test_lifelong_defaults_sit_between_the_model_defaults_and_the_callers_overrides(tiny, monkeypatch):
    """A model's dev-chosen lifelong settings replace its single-edit defaults; explicit arguments replace both."""
    from lens_memory.edit import sequence as seqmod
    monkeypatch.setitem(seqmod.LIFELONG_DEFAULTS, tiny.name, {"memit": {"layers": (0, 1), "stats": STATS},
                                                               "prome": {"clamp_norm_factor": 0.5}})
    cfg = sequence_config(tiny, "memit")
    assert cfg.layers == (0, 1) and cfg.stats == STATS and cfg.mom2_update_weight == MemitConfig().mom2_update_weight
    assert sequence_config(tiny, "memit", layers=[1, 2]).layers == (1, 2)  # the caller's window wins
    assert sequence_config(tiny, "memit", stats=StatsConfig(n_tokens=10)).stats.n_tokens == 10
    assert sequence_config(tiny, "prome", layers=[1]).clamp_norm_factor == 0.5
    assert sequence_config(tiny, "rome", layers=[1]).clamp_norm_factor != 0.5  # another method's entry is not read
    assert sequence_config(tiny, "alphaedit").layers != (0, 1)


@pytest.mark.parametrize("method", ["rome", "prome", "rrome", "memit", "alphaedit"])
def test_sequence_applies_and_removes_bit_for_bit(tiny, stats, method):
    cfg = _ae_config(tiny, stats) if method == "alphaedit" else sequence_config(
        tiny, method, layers=[1] if "rome" in method else [0, 1, 2], **SHORT)
    before = _state(tiny)
    seq = sequential_edit(tiny, FACTS[:4], method, 2, config=cfg, stats=stats, progress=False)
    assert _same_state(tiny, before) and tiny.handles == []
    assert seq.n_edits == 4 and seq.n_batches == 2 and len(seq.edits) == (4 if "rome" in method else 2)
    with seq.apply(tiny):
        assert not _same_state(tiny, before)
    assert _same_state(tiny, before)
    with pytest.raises(RuntimeError, match="inside"):
        with seq.apply(tiny):
            raise RuntimeError("inside")
    assert _same_state(tiny, before) and tiny.handles == []
    if method == "alphaedit":  # the second batch saw the first batch's keys
        assert seq.edits[1].info["n_prev_keys"] == 2 and len(seq.keys) == 2


def test_a_sequence_writes_a_fact_an_earlier_edit_already_answers(tiny, stats, monkeypatch):
    """The facts are checked once, on the unedited model; a later fact whose new answer an earlier edit already gives
    (found on Gemma: 'Argentina ... French' after earlier r-ROME edits) is still written, as in a MEMIT batch."""
    import dataclasses

    import lens_memory.edit.sequence as sequence

    cfg = sequence_config(tiny, "rome", layers=[1], **SHORT)
    f = FACTS[0]
    answered = dataclasses.replace(f, target_new=tiny.decode(int(tiny.next_token_probs(f.prompt).argmax())).strip())
    with pytest.raises(LensMemoryError, match="already answers"):
        rome(tiny, answered, cfg, stats=stats[1])
    edit = rome(tiny, answered, cfg, stats=stats[1], check=False)  # computed all the same
    assert edit.layers == [1]
    seen = []
    monkeypatch.setattr(sequence, "rome", lambda *a, **k: seen.append(k.get("check", True)) or rome(*a, **k))
    sequential_edit(tiny, FACTS[:2], "rome", 1, config=cfg, stats=stats, progress=False)
    assert seen == [False, False]


def test_each_batch_is_computed_on_the_model_the_earlier_batches_produced(tiny, stats):
    seq = sequential_edit(tiny, FACTS[:4], "memit", 2, config=sequence_config(tiny, "memit", layers=[0, 1, 2],
                                                                              **SHORT), stats=stats, progress=False)
    first, second = seq.edits
    with first.apply(tiny):
        second.check(tiny)  # computed on the weights after the first batch
    with pytest.raises(Exception, match="apply the edits it was computed after first"):
        second.apply(tiny)


def test_checkpoint_resumes_to_the_uninterrupted_sequence(tiny, stats, tmp_path, monkeypatch):
    import lens_memory.edit.sequence as sequence

    cfg = _ae_config(tiny, stats)
    health = HealthConfig(heldout=HELD, text_tokens=128)
    full = sequential_edit(tiny, FACTS, "alphaedit", 2, config=cfg, stats=stats, health=health, progress=False)
    real, calls = sequence._write_batch, []

    def dies_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sequence, "_write_batch", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        sequential_edit(tiny, FACTS, "alphaedit", 2, config=cfg, stats=stats, health=health, checkpoint=tmp_path / "c",
                        progress=False)
    monkeypatch.setattr(sequence, "_write_batch", real)
    assert EditSequence.load(tmp_path / "c").n_batches == 2 and tiny.handles == []
    resumed = sequential_edit(tiny, FACTS, "alphaedit", 2, config=cfg, stats=stats, health=health,
                              checkpoint=tmp_path / "c", progress=False)
    assert [e.edit_id for e in resumed.edits] == [e.edit_id for e in full.edits]
    assert all(torch.equal(a[j], b[j]) for a, b in zip(resumed.keys, full.keys) for j in a)
    assert resumed.health.rows == full.health.rows
    loaded = EditSequence.load(tmp_path / "c")
    assert [e.edit_id for e in loaded.edits] == [e.edit_id for e in full.edits]


def test_a_checkpoint_of_another_sequence_is_refused_and_kept(tiny, stats, tmp_path):
    cfg = sequence_config(tiny, "rome", layers=[1], **SHORT)
    sequential_edit(tiny, FACTS[:2], "rome", 1, config=cfg, stats=stats, checkpoint=tmp_path / "c", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}
    with pytest.raises(LensMemoryError, match="differs in facts"):
        sequential_edit(tiny, FACTS[2:4], "rome", 1, config=cfg, stats=stats, checkpoint=tmp_path / "c",
                        progress=False)
    with pytest.raises(LensMemoryError, match="differs in batch_size"):
        sequential_edit(tiny, FACTS[:2], "rome", 2, config=cfg, stats=stats, checkpoint=tmp_path / "c",
                        progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()} == before


# -- health ------------------------------------------------------------------------------------

def test_health_rows_track_the_sequence(tiny, stats):
    cfg = sequence_config(tiny, "memit", layers=[0, 1, 2], **SHORT)
    seq = sequential_edit(tiny, FACTS[:4], "memit", 2, config=cfg, stats=stats,
                          health=HealthConfig(heldout=HELD, text_tokens=128), progress=False)
    rows = seq.health.rows
    assert [r["n_edits"] for r in rows] == [0, 2, 4] and rows[0]["perplexity_ratio"] == 1.0
    assert all(0 <= r["retention"] <= 1 and r["delta_norm.layer1"] > 0 for r in rows[1:])
    assert rows[2]["delta_norm.layer0"] >= 0 and math.isfinite(rows[1]["solve_condition"])
    df = seq.health.to_dataframe()
    assert list(df.n_edits) == [0, 2, 4]
    assert seq.health.plot() is not None


# Issue 29, bug 1: a neighbourhood prompt about a subject the sequence edited scores the edit, not leakage.
_A = Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris",
          target_new="Rome", neighborhood=("The Louvre is located in the city of",
                                           "The Colosseum Tower is located in the city of"))
_B = Fact(subject="Colosseum Tower", template="The {} is located in the city of", target_true="Paris",
          target_new="Rome", neighborhood=("The Louvre Museum is in the city of", "The Eiffel Tower is in"))


def test_lifelong_neighbourhood_uses_the_one_rule_and_counts_what_it_drops(tiny):
    from lens_memory.harness import knowledge, lifelong
    from lens_memory.metrics import fact_scores

    assert lifelong.unedited_neighbours is knowledge.unedited_neighbours  # one implementation, not two
    probe = HealthProbe(tiny, HealthConfig(text_tokens=128))
    row = probe.measure(tiny, [_A, _B], [_B])  # A was edited in an earlier batch, B now
    assert row["batch_neighborhood_dropped"] == 1  # "The Eiffel Tower is in" is about an edited subject
    kept = [dataclasses.replace(_B, neighborhood=_B.neighborhood[:1])]
    assert row["batch_neighborhood"] == fact_scores(tiny, kept)[0]["neighborhood_success"]


def test_lifelong_final_scores_leave_out_prompts_about_edited_subjects(tiny):
    import contextlib

    from lens_memory.metrics import fact_scores
    from lens_memory.workflows.lifelong import final_scores

    class Unedited:  # a sequence that changes nothing: the scores are the unedited model's
        def apply(self, lm):
            return contextlib.nullcontext()

    out = final_scores(tiny, Unedited(), [_A, _B])
    assert out["neighborhood"]["dropped"] == 2 and out["neighborhood"]["prompts"] == 2
    ref = fact_scores(tiny, [dataclasses.replace(_A, neighborhood=_A.neighborhood[:1]),
                             dataclasses.replace(_B, neighborhood=_B.neighborhood[:1])])
    assert out["neighborhood"]["mean"] == pytest.approx(sum(r["neighborhood_success"] for r in ref) / 2)
    assert out["neighborhood"]["n"] == 2


def test_perplexity_is_the_hf_models_own_loss(tiny):
    probe = HealthProbe(tiny, HealthConfig(text_tokens=256))
    with torch.no_grad():
        losses = [tiny.hf(input_ids=b, labels=b).loss for b in probe.blocks]
    counts = [b[:, 1:].numel() for b in probe.blocks]
    ref = math.exp(sum(float(l) * n for l, n in zip(losses, counts)) / sum(counts))
    assert probe.perplexity(tiny) == pytest.approx(ref, rel=1e-6)


def test_first_failures_and_persistence(tmp_path):
    rows = [{"n_edits": 0, "retention": float("nan"), "perplexity_ratio": 1.0, "heldout_accuracy_ratio": 1.0},
            {"n_edits": 20, "retention": 0.95, "perplexity_ratio": 1.02, "heldout_accuracy_ratio": 0.97},
            {"n_edits": 40, "retention": 0.85, "perplexity_ratio": 1.08, "heldout_accuracy_ratio": 0.96}]
    h = LifelongHealth("memit", rows)
    assert h.first_failures() == {"retention": 40, "heldout_accuracy_ratio": None, "perplexity_ratio": 40}
    h.save(tmp_path / "h")
    assert LifelongHealth.load(tmp_path / "h").rows[2] == rows[2]



def test_edit_cli_sequential_writes_health_curves_and_resumes(tmp_path, monkeypatch):
    import lens_memory.facts as facts_mod
    from lens_memory.cli import main

    monkeypatch.setattr(facts_mod, "sample_known_facts",  # the tiny model knows no facts: take the first ones
                        lambda lm, facts, n: [f for f in facts_mod.spread_facts(facts) if f.target_new][:n])
    full = AlphaEditConfig.for_model
    monkeypatch.setattr(AlphaEditConfig, "for_model", classmethod(lambda cls, lm, **kw: dataclasses.replace(
        full(lm, **kw), nullspace_threshold=1.0, v_steps=4, context_lengths=((3, 2),))))
    argv = ["edit", "--model", "tiny", "--sequential", "--method", "alphaedit", "--batch-size", "2", "--limit", "4",
            "--layers", "0,1,2", "--stats-tokens", "600", "--corpus", "offline", "--heldout", "2", "--out",
            str(tmp_path / "o")]
    assert main(argv) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["method"] == "alphaedit" and s["n_edits"] == 4 and s["n_batches"] == 2 and s["layers"] == [0, 1, 2]
    assert 0 <= s["final_efficacy_success"] <= 1 and s["final_n"] == 4 and "perplexity_ratio" in s
    assert (tmp_path / "o" / "figures" / "health.png").exists() and (tmp_path / "o" / "figures" / "health.pdf").exists()
    seq = EditSequence.load(tmp_path / "o" / "sequence")
    assert [r["n_edits"] for r in seq.health.rows] == [0, 2, 4]
    assert main(argv) == 0  # a second run resumes from the finished checkpoint: nothing is recomputed
    assert [e.edit_id for e in EditSequence.load(tmp_path / "o" / "sequence").edits] == [e.edit_id for e in seq.edits]


def test_report_gains_a_lifelong_section_when_asked_for(tiny_report, tmp_path):
    import shutil

    from conftest import TINY_REPORT
    from lens_memory.report.pipeline import ReportConfig, run_report

    out = tmp_path / "r"
    shutil.copytree(tiny_report[0], out)
    assert "Lifelong editing" not in (out / "report.md").read_text()  # not a default stage
    cfg = ReportConfig.quick_config(**TINY_REPORT, lifelong_methods=("memit", "rrome"))
    s = run_report(out, cfg, stages=("facts", "trace", "lifelong"), progress=False)
    assert set(s["reused_stages"]) == {"facts", "trace"}
    text = (out / "report.md").read_text()
    assert "## Lifelong editing" in text and "rrome" in text
    stage = json.loads((out / "stages" / "lifelong" / "stage.json").read_text())["summary"]
    assert stage["n_edits"] == 2 and stage["methods"]["memit"]["n_batches"] == 2
    assert (out / "stages" / "lifelong" / "figures" / "health.png").exists()
