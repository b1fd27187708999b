"""Attribution patching (AtP, AtP*) against exact tracing on the tiny model."""

import pytest
import torch

from lens_memory.facts import Fact
from lens_memory.hooks import hook_name
from lens_memory.tiny import tiny_model
from lens_memory.trace import TraceConfig, prepare_fact, trace_facts
from lens_memory.trace.atp import atp_scores, clean_activations, corrupted_gradients, node_estimates, noised_embedding
from lens_memory.trace.atp_star import graddrop
from lens_memory.trace.fast import fast_scores
from lens_memory.trace.metrics import resolve_metric

FACT = Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris", case_id=0)
KINDS = ("hidden", "mlp", "attn")


@pytest.fixture(scope="module")
def tiny64():
    return tiny_model(0, dtype=torch.float64)


def _effects(lm, scale, engine, window=1, fixes=("qk", "graddrop"), metric="logprob"):
    cfg = TraceConfig(n_samples=3, noise=scale, window=window, kinds=KINDS, engine=engine, atp_fixes=fixes)
    prep = prepare_fact(lm, FACT, cfg, scale)
    scores, high, low = (fast_scores if engine == "fast" else atp_scores)(lm, prep, cfg, KINDS, resolve_metric(metric))
    return {k: (scores[k] - low).double() for k in KINDS}, prep


@pytest.mark.parametrize("kind", KINDS)
def test_atp_is_exact_for_an_infinitesimal_corruption(tiny64, kind):
    """First order: the estimate's error shrinks like the square of the noise scale (ratio to the effect ~ scale)."""
    errs = []
    for scale in (1e-1, 1e-2):  # smaller scales hit the float32 resolution of the returned scores
        exact, _ = _effects(tiny64, scale, "fast")
        est, _ = _effects(tiny64, scale, "atp")
        e, a = exact[kind], est[kind]
        assert e.abs().max() > 0
        errs.append(float((e - a).abs().max() / e.abs().max()))
    assert errs[1] < 0.02, errs
    assert errs[1] < errs[0] / 5, errs  # relative error ~ linear in the scale: a first-order estimate


def test_atp_before_the_subject_is_zero_and_result_is_a_trace(tiny):
    res = trace_facts(tiny, [FACT], TraceConfig(n_samples=2, window=2, engine="atp"), only_known=False, progress=False)
    t = res.traces[0]
    s0 = t.subject_range[0]
    for k in KINDS:
        assert torch.all(t.scores[k][:, :s0] == t.low)
        assert t.scores[k].shape == (tiny.n_layers, len(t.tokens))
    assert "attribution patching" in res.provenance["estimator"]
    assert res.suggest_layers(width=2).layer in range(tiny.n_layers)


def test_atp_refuses_severed_kinds(tiny):
    with pytest.raises(ValueError, match="severed"):
        TraceConfig(kinds=("hidden", "hidden_sever_mlp"), engine="atp")
    with pytest.raises(ValueError, match="atp_fixes"):
        TraceConfig(engine="atp*", atp_fixes=("qk", "nope"))


def test_qk_fix_changes_only_cells_whose_query_key_it_patches(tiny64):
    """The QK fix touches hidden cells below the last layer from the subject on, nothing else; for an
    infinitesimal corruption the exact softmax equals its linearisation, so the fix changes ~nothing."""
    plain, prep = _effects(tiny64, 1.0, "atp")
    fixed, _ = _effects(tiny64, 1.0, "atp*", fixes=("qk",))
    s0 = prep.subject_range[0]
    for k in ("mlp", "attn"):
        assert torch.equal(plain[k], fixed[k])
    h0, h1 = plain["hidden"], fixed["hidden"]
    assert torch.equal(h0[-1], h1[-1]) and torch.equal(h0[:, :s0], h1[:, :s0])
    assert (h0[:-1, s0:] - h1[:-1, s0:]).abs().max() > 1e-6
    small_plain, _ = _effects(tiny64, 1e-4, "atp")
    small_fixed, _ = _effects(tiny64, 1e-4, "atp*", fixes=("qk",))
    d = (small_plain["hidden"] - small_fixed["hidden"]).abs().max() / small_plain["hidden"].abs().max()
    assert d < 1e-3


def test_qk_fix_moves_the_estimate_towards_exact_tracing(tiny64):
    exact, _ = _effects(tiny64, 1.0, "fast")
    plain, _ = _effects(tiny64, 1.0, "atp")
    fixed, _ = _effects(tiny64, 1.0, "atp*", fixes=("qk",))
    err = lambda a: float((exact["hidden"] - a["hidden"]).abs().max())  # noqa: E731
    assert err(fixed) < err(plain)


def test_graddrop_keeps_direct_only_nodes_and_is_a_magnitude(tiny64):
    """A node of the last layer has only a direct path: its GradDrop estimate is |AtP| per sample; every
    estimate is >= 0 (the paper's c(n) = E|I(n)|)."""
    cfg = TraceConfig(n_samples=3, noise=1.0, window=1, kinds=KINDS)
    prep = prepare_fact(tiny64, FACT, cfg, 1.0)
    metric = resolve_metric("logprob")
    clean, _ = clean_activations(tiny64, prep, KINDS)
    run = corrupted_gradients(tiny64, prep, KINDS, metric)
    gd = graddrop(tiny64, prep, clean, metric)
    L = tiny64.n_layers
    for k in ("mlp", "attn"):
        plain = node_estimates(clean[k], run, k).cpu()
        assert torch.allclose(gd[k][:, L - 1], plain[:, L - 1].abs(), atol=1e-12)
        assert not torch.allclose(gd[k][:, 0], plain[:, 0].abs(), atol=1e-9)  # earlier layers: paths dropped
    assert all(bool((gd[k] >= 0).all()) for k in KINDS)


@torch.no_grad()
def _restored_effect(lm, prep, metric, runs, layer, t, eps=1.0, freeze_from=None):
    """Exact mean effect of moving hidden cell (layer, t) a fraction ``eps`` of the way to its clean value, with
    the attention patterns of layers >= ``freeze_from`` held at the corrupted run's (per sample)."""
    st, L = lm.stack, lm.n_layers
    clean, corr, pats, low = runs
    x = corr[layer].clone()
    x[:, t] = x[:, t] + eps * (clean[layer][0, t] - x[:, t])
    start = L if freeze_from is None else freeze_from
    frozen = [(hook_name(j, "pattern"), lambda a, hook, j=j: pats[j]) for j in range(start, L)]
    with lm.bridge.hooks(fwd_hooks=frozen):
        for j in range(layer + 1, L):
            x = st.layer(j, x)
    return float((metric(st.logits(x[:, -1]).float(), prep).double() - low).mean())


@torch.no_grad()
def _runs(lm, prep, metric):
    """Clean and corrupted hidden states per layer, the corrupted patterns and the corrupted score per sample."""
    st, L = lm.stack, lm.n_layers
    h, clean = st.embed(prep.ids[None]), []
    for j in range(L):
        h = st.layer(j, h)
        clean.append(h)
    x, corr, pats = noised_embedding(lm, prep).detach(), [], [None] * L
    grab = [(hook_name(j, "pattern"), lambda a, hook, j=j: pats.__setitem__(j, a.clone())) for j in range(L)]
    with lm.bridge.hooks(fwd_hooks=grab):
        for j in range(L):
            x = st.layer(j, x)
            corr.append(x)
    return clean, corr, pats, metric(st.logits(x[:, -1]).float(), prep).double()


def test_qk_fix_corrects_only_the_next_layers_attention(tiny64):
    """The QK fix makes the pattern change of layer l+1 exact; the patterns of layers l+2.. still enter the
    estimate to first order. F = the exact effect through those further patterns (the exact effect minus the exact
    effect with their patterns frozen at the corrupted run's), G = its first-order term (the same difference for a
    restoration scaled by 1e-4, divided by 1e-4): F - G is an error the QK-fixed estimate keeps. On this model at
    noise 1.0 it is 22% of the largest hidden effect (layers 0-1; the QK-fixed estimate's own error there: 60% / 21%
    against plain AtP's 72% / 23%). Cells at layer L-2 have no further attention; the fix improves them (57% vs 63%)."""
    L, metric = tiny64.n_layers, resolve_metric("logprob")
    exact, prep = _effects(tiny64, 1.0, "fast")
    plain, _ = _effects(tiny64, 1.0, "atp")
    fixed, _ = _effects(tiny64, 1.0, "atp*", fixes=("qk",))
    runs = _runs(tiny64, prep, metric)
    E, s0, T = exact["hidden"], prep.subject_range[0], prep.n_tokens
    scale = float(E.abs().max())
    missed = torch.zeros(L, T, dtype=torch.float64)
    for layer in range(L - 2):
        for t in range(s0, T):
            e = _restored_effect(tiny64, prep, metric, runs, layer, t)
            assert e == pytest.approx(float(E[layer, t]), abs=1e-5)  # the helper is exact tracing
            f = e - _restored_effect(tiny64, prep, metric, runs, layer, t, freeze_from=layer + 2)
            g = (_restored_effect(tiny64, prep, metric, runs, layer, t, eps=1e-4)
                 - _restored_effect(tiny64, prep, metric, runs, layer, t, eps=1e-4, freeze_from=layer + 2)) / 1e-4
            missed[layer, t] = f - g
    err = lambda a, rows: float((E[rows] - a["hidden"][rows]).abs().max()) / scale  # noqa: E731
    assert float(missed.abs().max()) / scale > 0.1, missed.abs().max() / scale
    assert err(fixed, slice(L - 2, L - 1)) < err(plain, slice(L - 2, L - 1))
