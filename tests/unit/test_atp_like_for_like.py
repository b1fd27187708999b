"""Estimators compared with the exact value of what they estimate (signed mean or E|effect|), the AtP* per-fix
ablation, and the edit-layer agreement with its Wilson interval, on the tiny model."""

import dataclasses
import logging

import numpy as np
import pytest
import torch
from statsmodels.stats.proportion import proportion_confint

from lens_memory.errors import LensMemoryError
from lens_memory.facts import Fact
from lens_memory.localize.validate import (ATP_STAR_ARMS, atp_star_ablation, edit_layer, estimand,
                                           exact_magnitude_trace, validate_estimate)
from lens_memory.trace import TraceConfig, TraceResult, trace_facts

FACTS = [Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris",
              target_new="Rome", case_id=0),
         Fact(subject="Colosseum", template="The {} is located in the city of", target_true="Rome",
              target_new="Paris", case_id=1)]
KINDS = ("hidden", "mlp", "attn")
CFG = TraceConfig(n_samples=4, window=2, kinds=KINDS)


def _trace(lm, **kw):
    return trace_facts(lm, FACTS, dataclasses.replace(CFG, **kw), only_known=False, progress=False)


@pytest.fixture(scope="module")
def traced(tiny):
    exact = _trace(tiny)
    return exact, exact_magnitude_trace(tiny, exact)


def _as_graddrop_estimate(result: TraceResult, exact: TraceResult) -> TraceResult:
    """``result``'s cells labelled as an AtP* + GradDrop trace of ``exact``'s facts (a perfect magnitude estimator)."""
    cfg = {**exact.provenance["config"], "engine": "atp*", "atp_fixes": ["graddrop"]}
    prov = {**exact.provenance, "config": cfg, "estimator": "a perfect E|effect| estimator"}
    return dataclasses.replace(result, provenance=prov)


def test_magnitude_trace_averages_back_to_the_exact_trace_and_bounds_it(traced):
    """E|effect| >= |E effect| cell by cell (triangle inequality), with equality before the subject (no effect)
    and strict somewhere (samples disagree in sign); the per-sample effects' mean was checked against ``exact``."""
    exact, mag = traced
    assert estimand(exact) == "signed" and estimand(mag) == "magnitude"
    strict = 0
    for te, tm in zip(exact.traces, mag.traces):
        s0 = te.subject_range[0]
        for k in KINDS:
            e, m = te.effect(k).double(), tm.effect(k).double()
            assert bool((m >= e.abs() - 1e-6).all()), k
            assert torch.equal(tm.scores[k][:, :s0], te.scores[k][:, :s0])
            strict += int((m - e.abs() > 1e-4).sum())
    assert strict > 0


def test_a_perfect_magnitude_estimate_ranks_perfectly_only_like_for_like(traced, caplog):
    """The estimate that *is* E|exact| scores Spearman 1 with no false negatives against E|exact|; against the
    signed mean (the comparison the validation used before) it does not -- that gap is built in, not an error."""
    exact, mag = traced
    perfect = _as_graddrop_estimate(mag, exact)
    assert estimand(perfect) == "magnitude"
    s = validate_estimate(exact, perfect, magnitude=mag).summary()
    assert s["comparison"] == "magnitude" and s["like_for_like"] is True
    for k in KINDS:
        assert s[k]["spearman_mean"] == pytest.approx(1.0) and s[k]["false_negatives"] == 0
        assert s[k]["top_cell_agreement"] == 1.0
    signed = validate_estimate(exact, perfect, compare="signed").summary()
    assert signed["comparison"] == "signed" and signed["like_for_like"] is False
    assert min(signed[k]["spearman_mean"] for k in KINDS) < 0.95
    for k in KINDS:  # the like-for-like summary records the signed comparison beside its own
        assert s[k]["spearman_vs_signed_mean"] == pytest.approx(signed[k]["spearman_mean"])
    with caplog.at_level(logging.WARNING, logger="lens_memory.localize.validate"):
        fallback = validate_estimate(exact, perfect).summary()  # no E|exact| given: signed, flagged, warned
    assert fallback["comparison"] == "signed" and fallback["like_for_like"] is False
    assert "not like for like" in caplog.text
    with pytest.raises(LensMemoryError, match="needs magnitude="):
        validate_estimate(exact, perfect, compare="magnitude")


def test_signed_estimators_are_compared_with_the_signed_mean(tiny, traced):
    exact, mag = traced
    atp = _trace(tiny, engine="atp")
    s = validate_estimate(exact, atp, magnitude=mag).summary()
    assert s["comparison"] == "signed" and s["like_for_like"] is True and s["estimand"] == "signed"
    forced = validate_estimate(exact, atp, magnitude=mag, compare="magnitude").summary()
    assert forced["comparison"] == "magnitude" and forced["like_for_like"] is False


def test_traces_with_other_noise_are_not_compared(tiny, traced):
    exact, _ = traced
    with pytest.raises(LensMemoryError, match="seed"):
        validate_estimate(exact, _trace(tiny, engine="atp", seed=2))
    with pytest.raises(LensMemoryError, match="noise scales"):
        validate_estimate(exact, _trace(tiny, engine="atp", noise=0.5))
    with pytest.raises(LensMemoryError, match="exact trace"):
        exact_magnitude_trace(tiny, _trace(tiny, engine="atp"))


def test_edit_layer_agreement_is_the_per_fact_suggested_layer_with_a_wilson_interval(tiny, traced):
    exact, _ = traced
    for t in exact.traces:  # a fact's edit layer is what suggest_layers picks for that fact alone
        alone = dataclasses.replace(exact, traces=[t])
        assert edit_layer(t) == alone.suggest_layers().layer
    n = len(FACTS)
    got = validate_estimate(exact, exact).summary()["edit_layer_agreement"]
    lo, hi = proportion_confint(n, n, method="wilson")
    assert got["fraction"] == 1.0 and got["n_same"] == n == got["n"]
    assert got["ci95"] == pytest.approx([lo, min(1.0, hi)])
    rows = validate_estimate(exact, _trace(tiny, engine="atp")).rows
    mlp = [r for r in rows if r["kind"] == "mlp"]
    assert all(r["edit_layer_exact"] == edit_layer(t) for r, t in zip(mlp, exact.traces))
    assert "edit_layer_agree" not in next(r for r in rows if r["kind"] == "hidden")


def test_atp_star_ablation_runs_each_fix_alone_and_both_like_for_like(tiny, traced):
    """Each arm traces the fixes it names: the QK fix alone is signed and leaves MLP / attention cells as AtP's;
    GradDrop is a magnitude (every effect >= 0) compared with E|exact|; adding the QK fix to GradDrop changes
    hidden cells only."""
    exact, mag = traced
    got = atp_star_ablation(tiny, exact, magnitude=mag)
    assert list(got) == list(ATP_STAR_ARMS)
    for arm, v in got.items():
        assert v.provenance["config_estimate"]["atp_fixes"] == list(ATP_STAR_ARMS[arm])
        s = v.summary()
        assert s["like_for_like"] is True
        assert s["comparison"] == ("signed" if arm == "qk" else "magnitude")
    est = {arm: _trace(tiny, engine="atp*", atp_fixes=fixes) for arm, fixes in ATP_STAR_ARMS.items()}
    atp = _trace(tiny, engine="atp")
    for i in range(len(FACTS)):
        eff = {arm: {k: r.traces[i].effect(k) for k in KINDS} for arm, r in {**est, "atp": atp}.items()}
        assert any(bool((eff["qk"][k] < 0).any()) for k in KINDS)
        assert all(bool((eff[a][k] >= 0).all()) for a in ("graddrop", "both") for k in KINDS)
        for k in ("mlp", "attn"):
            assert torch.equal(eff["qk"][k], eff["atp"][k]) and torch.equal(eff["graddrop"][k], eff["both"][k])
        assert not torch.equal(eff["graddrop"]["hidden"], eff["both"]["hidden"])
    s = got["graddrop"].summary()
    again = validate_estimate(exact, est["graddrop"], magnitude=mag).summary()
    assert np.allclose([s[k]["spearman_mean"] for k in KINDS], [again[k]["spearman_mean"] for k in KINDS])
