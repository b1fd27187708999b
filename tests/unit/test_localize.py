"""Localization tests: validation of estimated traces, the edit-at-every-layer sweep, the Hase et al. regression."""

import json
import math

import numpy as np
import pytest
import torch

from lens_memory.facts import Fact
from lens_memory.localize import (AtPValidation, EditSweep, HaseRegression, SweepConfig, edit_layer_sweep,
                                  fact_agreement, hase_effects, hase_regression, memit_window, r_squared,
                                  rewrite_score, validate_estimate)
from lens_memory.trace import TraceConfig, trace_facts

FACTS = [Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris",
              target_new="Rome", case_id=0, paraphrases=("Where is the Eiffel Tower? In the city of",),
              neighborhood=("The Louvre is located in the city of",)),
         Fact(subject="Colosseum", template="The {} is located in the city of", target_true="Rome",
              target_new="Paris", case_id=1)]


# -- the Hase et al. regression ------------------------------------------------------------------------------------

def _planted(slope: float, n_facts: int = 40, n_layers: int = 6, noise: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    layer_effect = np.linspace(0.1, 0.9, n_layers)
    effect = rng.uniform(0, 1, (n_facts, n_layers))
    success = layer_effect[None] + slope * effect + noise * rng.standard_normal((n_facts, n_layers))
    return success, effect


def test_r_squared_is_one_on_exact_data_and_zero_without_signal():
    x = np.arange(10.0)
    X = np.stack([np.ones(10), x], 1)
    assert r_squared(2 * x + 1, X) == pytest.approx(1.0)
    assert r_squared(np.array([1.0, -1.0] * 5), np.stack([np.ones(10), np.array([0.0, 0.0, 1.0, 1.0] * 2 + [0.0, 0.0])], 1)) < 0.05


def test_regression_recovers_a_planted_tracing_effect():
    success, effect = _planted(slope=0.8)
    reg = hase_regression(success, effect, n_boot=200, n_perm=199)
    s = reg.stats
    assert s["slope_layer+tracing"] == pytest.approx(0.8, abs=0.05)
    assert s["r2_diff"] > 0.3 and reg.ci95["r2_diff"][0] > 0.05
    assert s["r2_layer+tracing"] > 0.9 and s["f_test_p"] < 1e-6 and s["permutation_p"] == pytest.approx(1 / 200)
    summary = reg.summary()
    assert summary["decision"] == reg.decision() == "adds" and {"r2_diff", "f_test_p"} <= set(summary)
    assert "explains edit success beyond the layer" in reg.conclusion()


def test_regression_finds_nothing_where_nothing_was_planted():
    success, effect = _planted(slope=0.0)
    reg = hase_regression(success, effect, n_boot=200, n_perm=199)
    assert reg.stats["r2_layer"] > 0.9 and reg.stats["r2_tracing"] < 0.05
    assert reg.stats["r2_diff_additive"] < 0.01 and reg.ci95["r2_diff"][1] < 0.05
    assert reg.decision() == "adds_little" and "says little about where an edit works" in reg.conclusion()


def _gemma_like_null(n_facts: int, n_layers: int, rng):
    """Success with a layer profile like Gemma's rewrite scores and a per-fact offset; a tracing effect that peaks
    at a random layer per fact and is unrelated to success (issue 29's simulated null)."""
    means = np.interp(np.linspace(0, 5, n_layers), np.arange(6), [0.943, 0.970, 0.951, 0.783, 0.847, 0.473])
    peak = rng.uniform(0, n_layers, (n_facts, 1))
    effect = rng.gamma(1.0, 0.1, (n_facts, 1)) * np.exp(-0.5 * ((np.arange(n_layers)[None] - peak) / 2) ** 2)
    success = means[None] + 0.1 * rng.standard_normal((n_facts, 1)) + 0.15 * rng.standard_normal((n_facts, n_layers))
    return np.clip(success, 0, 1), effect


@pytest.mark.parametrize("n_facts,n_layers", [(8, 6), (8, 18)])
def test_decision_says_adds_at_most_at_its_nominal_rate_under_a_null(n_facts, n_layers):
    """The bootstrapped in-sample R² gain said "explains" for 27 of 60 such null draws at 8 x 18; the F-test +
    permutation rule may say "adds" at most at ALPHA = 5% (here: <= 12 of 100 draws, P(X >= 13) < 0.001)."""
    rng = np.random.default_rng(7)
    decisions = [hase_regression(*_gemma_like_null(n_facts, n_layers, rng), n_boot=0, n_perm=99,
                                 seed=i).decision() for i in range(100)]
    assert decisions.count("adds") <= 12, decisions.count("adds")


def test_a_saturated_design_decides_nothing():
    """2 facts x 3 layers: the layer x tracing model has as many parameters as points (notebook 09's CI size)."""
    reg = hase_regression(np.array([[0.9, 0.5, 0.2], [0.8, 0.7, 0.1]]), np.array([[0.1, 0.3, 0.0], [0.2, 0.0, 0.05]]),
                          n_boot=50, n_perm=50)
    assert math.isnan(reg.stats["f_test_p"]) and reg.decision() == "cannot_tell"


def test_without_the_permutation_check_the_rule_never_says_adds():
    success, effect = _planted(slope=0.3, n_facts=8)
    reg = hase_regression(success, effect, n_boot=0, n_perm=0)
    assert np.isnan(reg.stats["permutation_p"]) and reg.decision() != "adds"  # without the check: never "adds"


def test_regression_round_trip(tmp_path):
    success, effect = _planted(slope=0.3, n_facts=8)
    reg = hase_regression(success, effect, n_boot=20, n_perm=20, layers=[2, 3, 4, 5, 6, 7])
    back = HaseRegression.load(reg.save(tmp_path / "hase"))
    assert back.stats == reg.stats and back.layers == [2, 3, 4, 5, 6, 7]
    assert np.array_equal(back.success, reg.success) and len(back.to_dataframe()) == 48
    assert reg.plot() is not None


# -- validation of an estimated trace -------------------------------------------------------------------------------

def test_fact_agreement_counts_false_negatives():
    exact = np.zeros((3, 5))
    exact[1, 3], exact[2, 4] = 1.0, 0.6
    est = np.zeros((3, 5))
    est[1, 3] = 1.0  # the second large cell is estimated as 0: a false negative
    row = fact_agreement(exact, est, (2, 4))
    assert row["n_large"] == 2 and row["false_negatives"] == 1 and row["false_negative_cells"] == [[2, 4]]
    assert row["top_cell_agree"] and row["top_cell_exact"] == [1, 3]


def test_an_exact_trace_validates_perfectly_against_itself(tiny, tmp_path):
    exact = trace_facts(tiny, FACTS, TraceConfig(n_samples=2, window=2), only_known=False, progress=False)
    v = validate_estimate(exact, exact)
    s = v.summary()
    for k in ("hidden", "mlp", "attn"):
        assert s[k]["spearman_mean"] == pytest.approx(1.0) and s[k]["top_cell_agreement"] == 1.0
        assert s[k]["false_negatives"] == 0
    assert s["suggested_layer_agree"]
    back = AtPValidation.load(v.save(tmp_path / "v"))
    assert back.rows == json.loads(json.dumps(v.rows)) and back.plot() is not None
    atp = trace_facts(tiny, FACTS, TraceConfig(n_samples=2, window=2, engine="atp"), only_known=False, progress=False)
    va = validate_estimate(exact, atp)
    assert va.provenance["estimate"].startswith("attribution patching") and va.speedup > 0
    with pytest.raises(Exception, match="different facts"):
        validate_estimate(exact, trace_facts(tiny, FACTS[:1], TraceConfig(n_samples=2, window=2, engine="atp"),
                                             only_known=False, progress=False))


# -- the edit-at-every-layer sweep -----------------------------------------------------------------------------------

def test_memit_window_is_centred_and_never_includes_the_last_layer():
    assert memit_window(5, 5, 18) == [3, 4, 5, 6, 7]
    assert memit_window(0, 5, 18) == [0, 1, 2, 3, 4]
    assert memit_window(17, 5, 18) == [12, 13, 14, 15, 16]
    assert memit_window(1, 5, 4) == [0, 1, 2]


def test_rewrite_score_is_the_fraction_of_the_possible_gain():
    assert rewrite_score(0.2, 0.6) == pytest.approx(0.5)
    # belief-localization floors the score itself (np.max([2e-8, recovered_prop])), not the denominator
    assert rewrite_score(0.2, 0.1) == 2e-8
    assert rewrite_score(0.9, 0.95) == pytest.approx(0.5) and math.isnan(rewrite_score(1.0, 1.0))


def test_sweep_restores_the_model_after_every_layer(tiny, tmp_path):
    from lens_memory.edit import RomeConfig

    before = {n: p.detach().clone() for n, p in tiny.hf.named_parameters()}
    rc = RomeConfig.for_model(tiny, v_steps=3, context_lengths=((3, 1),))
    sweep = edit_layer_sweep(tiny, FACTS[:1], SweepConfig(layers=(0, 1, 2)), method_config=rc, progress=False)
    for n, p in tiny.hf.named_parameters():
        assert torch.equal(p, before[n]), n
    alone = edit_layer_sweep(tiny, FACTS[:1], SweepConfig(layers=(2,)), method_config=rc, progress=False)
    for m in sweep.metrics:  # layer 2 scored after layers 0 and 1 equals layer 2 alone: no edit leaked
        assert sweep.metrics[m][0, 2] == pytest.approx(alone.metrics[m][0, 0], abs=1e-9, nan_ok=True), m
    assert sweep.metrics["rewrite_score"].shape == (1, 3) and sweep.best_layers()[0] in (0, 1, 2)
    back = EditSweep.load(sweep.save(tmp_path / "sweep"))
    assert back.layers == [0, 1, 2] and np.array_equal(back.metrics["p_new"], sweep.metrics["p_new"])
    exact = trace_facts(tiny, FACTS[:1], TraceConfig(n_samples=2, window=2), only_known=False, progress=False)
    assert sweep.plot(trace=exact) is not None and sweep.plot(trace=exact, fact=0) is not None
    eff = hase_effects(exact, [0, 1, 2])
    assert eff.shape == (1, 3) and (eff >= 0).all()


def test_an_interrupted_sweep_resumes_to_the_uninterrupted_result(tiny, tmp_path, monkeypatch):
    from lens_memory.edit import RomeConfig
    from lens_memory.localize import sweep as sweep_mod

    rc = RomeConfig.for_model(tiny, v_steps=2, context_lengths=((3, 1),))
    cfg = SweepConfig(layers=(0, 2))
    whole = edit_layer_sweep(tiny, FACTS, cfg, method_config=rc, progress=False, checkpoint_dir=tmp_path)
    (ckpt,) = tmp_path.iterdir()
    (ckpt / "fact00001.json").unlink()  # the run was killed before its second fact finished
    (ckpt / "fact00000.json").write_text('{"fact": ')  # and a disk fault truncated the first one
    calls = []
    real = sweep_mod._sweep_fact
    monkeypatch.setattr(sweep_mod, "_sweep_fact", lambda lm, f, sh: calls.append(f.subject) or real(lm, f, sh))
    again = edit_layer_sweep(tiny, FACTS, cfg, method_config=rc, progress=False, checkpoint_dir=tmp_path)
    assert calls == [FACTS[0].subject, "Colosseum"]  # only the unfinished and the unreadable facts are recomputed
    for m in whole.metrics:
        np.testing.assert_array_equal(again.metrics[m], whole.metrics[m])


def test_cli_localize_on_the_tiny_model(tmp_path, capsys):
    from lens_memory.cli import main

    out = tmp_path / "loc"
    rc = main(["localize", "--model", "tiny", "--out", str(out), "--limit", "2", "--samples", "2", "--include-unknown",
               "--boot", "20", "--sweep-layers", "0,1", "--window", "1"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("atp_spearman_mean", "atp_top_cell_agreement", "atp_speedup", "atpstar_spearman_mean", "hase_r2",
                "hase_r2_layer_only", "best_edit_layer_agreement", "hase_conclusion", "r2_diff", "f_test_p", "decision"):
        assert key in s, key
    assert len(s["relations"]) == 2  # --limit spreads the facts over relations (issue 29), not the file's first 2
    assert set(s["atp_spearman_mean"]) == {"hidden", "mlp", "attn"}
    # the best edit layer is compared with the traced peak among the swept layers, not over every layer
    assert set(s["traced_peak_layers"]) <= {0, 1} and len(s["traced_peak_layers_all"]) == len(s["best_edit_layers"])
    for stem in ("validation_atp", "validation_atpstar", "sweep", "hase", "aie_exact"):
        assert (out / "figures" / f"{stem}.png").is_file() and (out / "figures" / f"{stem}.pdf").is_file()
