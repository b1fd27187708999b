"""ROME / MEMIT on tiny random models: the equations hold, edits are exact artifacts, bad input is refused."""

import dataclasses

import pytest
import torch

from lens_memory.corpus import load_corpus
from lens_memory.edit import (Edit, EditOptimisationError, MemitConfig, RomeConfig, StatsConfig, applied,
                              key_statistics, memit, rome)
from lens_memory.edit.solve import IllConditionedWarning, memit_update, regularise, rome_update
from lens_memory.edit.targets import build_rows, context_templates, lookup_activations, optimise_targets
from lens_memory.edit.weights import key_hook, linear_weight, out_proj, value_hook
from lens_memory.errors import ArtifactMismatchError, FactFormatError, LayerOutOfRangeError, LensMemoryError
from lens_memory.facts import Fact
from lens_memory.hooks import capture
from lens_memory.models import load_model
from lens_memory.tiny import TINY_ARCHS, tiny_arch_model

TEXTS = [f"The {w} is located in the city of {c}. People visit {c} to see the {w} every year."
         for w, c in [("Eiffel Tower", "Paris"), ("Colosseum", "Rome"), ("Big Ben", "London"), ("Kremlin", "Moscow"),
                      ("Brandenburg Gate", "Berlin"), ("Sagrada Familia", "Barcelona")]] * 6
STATS = StatsConfig(corpus="unused", n_tokens=1500, seq_len=32, batch_size=8)
EIFFEL = Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris",
              target_new="Rome", paraphrases=("The Eiffel Tower can be found in",),
              neighborhood=("The Louvre is located in the city of",))
COLOSSEUM = Fact(subject="Colosseum", template="The {} is located in the city of", target_true="Rome",
                 target_new="London")
SHORT = dict(context_lengths=((3, 2),), v_steps=6)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(TEXTS)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LENS_MEMORY_CACHE", str(tmp_path))
    return tmp_path


def _stats(lm, layers, corpus):
    return key_statistics(lm, layers, STATS, corpus=corpus, use_cache=False)


def _state(lm):
    return {k: v.clone() for k, v in lm.hf.state_dict().items()}


def _same_state(lm, before):
    now = lm.hf.state_dict()
    return all(torch.equal(now[k], v) for k, v in before.items())


# -- key statistics --------------------------------------------------------------------------

def test_key_statistics_equal_direct_computation(tiny, corpus):
    from lens_memory.corpus import token_blocks

    st = _stats(tiny, [1, 2], corpus)
    for layer in (1, 2):
        keys = []
        for ids in token_blocks(tiny, corpus, STATS.n_tokens, seq_len=STATS.seq_len, batch_size=STATS.batch_size):
            with torch.no_grad():
                k = capture(tiny, ids, [key_hook(layer)], early_stop=False)[key_hook(layer)]
            keys.append(k[:, 1:].reshape(-1, k.shape[-1]).double())
        K = torch.cat(keys)
        torch.testing.assert_close(st[layer].mom2, K.T @ K / len(K), rtol=1e-5, atol=1e-7)
        assert st[layer].n_tokens == len(K)
    full = key_statistics(tiny, [2], STATS, corpus=corpus, use_cache=False, truncate=False)[2]
    torch.testing.assert_close(full.mom2, st[2].mom2, rtol=1e-5, atol=1e-7)


def test_key_statistics_cache_is_keyed_by_corpus_and_model(tiny, corpus, cache):
    a = key_statistics(tiny, 1, STATS, corpus=corpus)[1]
    files = list(cache.rglob("*.safetensors"))
    assert len(files) == 1
    again = key_statistics(tiny, 1, STATS, corpus=corpus)[1]
    assert torch.equal(a.mom2, again.mom2) and len(list(cache.rglob("*.safetensors"))) == 1
    other = key_statistics(tiny, 1, STATS, corpus=load_corpus(TEXTS[::-1]))[1]
    assert len(list(cache.rglob("*.safetensors"))) == 2 and not torch.equal(other.mom2, a.mom2)
    other_model = load_model("tiny", seed=1)
    key_statistics(other_model, 1, STATS, corpus=corpus)
    assert len(list(cache.rglob("*.safetensors"))) == 3
    files[0].write_bytes(b"corrupt")  # a broken cache file is recomputed, never trusted
    fixed = key_statistics(tiny, 1, STATS, corpus=corpus)[1]
    assert torch.equal(fixed.mom2, a.mom2)


# -- closed forms ------------------------------------------------------------------------------

def _random_psd(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
    return A @ A.T / (3 * d)


def test_rome_update_inserts_the_pair_and_spares_orthogonal_keys():
    C, g = _random_psd(12), torch.Generator().manual_seed(1)
    W = torch.randn(8, 12, generator=g, dtype=torch.float64)
    k = torch.randn(12, generator=g, dtype=torch.float64)
    v_star = torch.randn(8, generator=g, dtype=torch.float64)
    U, V = rome_update(C, k, v_star - W @ k)
    W2 = W + U @ V.T
    torch.testing.assert_close(W2 @ k, v_star)
    u = torch.linalg.solve(C, k)
    x = torch.randn(12, generator=g, dtype=torch.float64)
    x = x - (x @ u) / (u @ u) * u  # orthogonal to C^-1 k*
    torch.testing.assert_close(W2 @ x, W @ x)


def test_memit_with_one_key_tends_to_rome_and_chunking_is_exact():
    C, g = _random_psd(12), torch.Generator().manual_seed(2)
    k = torch.randn(12, 1, generator=g, dtype=torch.float64)
    r = torch.randn(8, 1, generator=g, dtype=torch.float64)
    U, V = rome_update(C, k[:, 0], r[:, 0])
    s = float(k[:, 0] @ torch.linalg.solve(C, k[:, 0]))
    for lam in (1.0, 1e-3):  # Sherman-Morrison: MEMIT = ROME * s / (lam + s)  ->  ROME as lam -> 0
        Um, Vm = memit_update(C, k, r, lam=lam)
        torch.testing.assert_close(Um @ Vm.T, U @ V.T * s / (lam + s), rtol=1e-6, atol=1e-9)
    K = torch.randn(12, 7, generator=g, dtype=torch.float64)
    R = torch.randn(8, 7, generator=g, dtype=torch.float64)
    U1, V1 = memit_update(C, K, R, lam=3.0, max_rank_fraction=1.0)
    dense, none = memit_update(C, K, R, lam=3.0, chunk=2, max_rank_fraction=0.0)
    assert none is None
    torch.testing.assert_close(U1 @ V1.T, dense)
    torch.testing.assert_close(dense @ (3.0 * C + K @ K.T), R @ K.T)  # the normal equations


def test_singular_covariance_is_regularised_with_a_warning():
    C = torch.zeros(6, 6, dtype=torch.float64)
    C[:3, :3] = torch.eye(3)
    with pytest.warns(IllConditionedWarning, match="condition number"):
        Creg, r = regularise(C)
    assert r > 0 and torch.linalg.cond(Creg) <= 1e10 * 1.01


# -- ROME and MEMIT on models ------------------------------------------------------------------

@pytest.mark.parametrize("arch", ("gemma3",) + TINY_ARCHS)
def test_rome_satisfies_its_equation_on_every_architecture(arch, tiny, corpus):
    lm = tiny if arch == "gemma3" else tiny_arch_model(arch)
    layer = 1
    st = _stats(lm, [layer], corpus)[layer]
    edit = rome(lm, EIFFEL, RomeConfig(layer=layer, **SHORT), stats=st)
    k_star, v_star = torch.tensor(edit.info["k_star"]), torch.tensor(edit.info["v_star"])
    before = _state(lm)
    W = linear_weight(lm, layer).detach().double().clone()
    bias = getattr(out_proj(lm, layer), "bias", None)
    b = bias.double() if bias is not None else 0.0
    with edit.apply(lm):
        W2 = linear_weight(lm, layer).detach().double()
        torch.testing.assert_close(W2 @ k_star.double() + b, v_star.double(), rtol=1e-4, atol=1e-4)
        u = torch.linalg.solve(regularise(st.mom2)[0], k_star.double())
        x = torch.randn(len(u), dtype=torch.float64)
        x = x - (x @ u) / (u @ u) * u
        torch.testing.assert_close(W2 @ x, W @ x, rtol=1e-4, atol=1e-4)
    assert _same_state(lm, before)


def test_rome_moves_the_prediction(corpus):
    lm = tiny_arch_model("llama")  # no post-norm bounding the MLP's contribution in a random model
    st = _stats(lm, [1], corpus)[1]
    cfg = RomeConfig(layer=1, context_lengths=((3, 2),), v_steps=25, v_lr=5.0, clamp_norm_factor=50.0,
                     v_weight_decay=0.0)
    edit = rome(lm, EIFFEL, cfg, stats=st)
    start = rome(lm, EIFFEL, dataclasses.replace(cfg, v_steps=1), stats=st)  # delta = 0: the unedited probability
    assert edit.info["target_prob"][0] > 2 * start.info["target_prob"][0]
    new = lm.continuation_ids("Rome")[0]
    p0 = lm.next_token_probs(EIFFEL.prompt)[new]
    with edit.apply(lm):
        p1 = lm.next_token_probs(EIFFEL.prompt)[new]
    assert p1 > 1.5 * p0


def test_key_mode_original_maps_the_unprefixed_key(tiny, corpus):
    st = _stats(tiny, [1], corpus)[1]
    a = rome(tiny, EIFFEL, RomeConfig(layer=1, **SHORT), stats=st)
    b = rome(tiny, EIFFEL, RomeConfig(layer=1, key_mode="original", **SHORT), stats=st)
    assert a.config["key_mode"] == "rrome" and b.config["key_mode"] == "original"
    assert not torch.allclose(a.delta(1), b.delta(1))
    ids = tiny.encode(EIFFEL.prompt)[None]
    s1 = tiny.subject_range(EIFFEL.prompt, EIFFEL.subject)[1]
    k0 = capture(tiny, ids, [key_hook(1)], index=(torch.tensor([0]), torch.tensor([s1 - 1])))[key_hook(1)][0]
    U, _ = b.factors[1]
    torch.testing.assert_close(b.delta(1) @ k0.double(), U[:, 0].double(), rtol=1e-4, atol=1e-5)


def test_memit_one_fact_one_layer_equals_rome_without_post_norm(corpus):
    lm = tiny_arch_model("llama")
    st = _stats(lm, [1], corpus)
    common = dict(context_lengths=((3, 2),), v_steps=8, v_weight_decay=0.0, clamp_norm_factor=1e6, kl_factor=0.0625)
    r = rome(lm, EIFFEL, RomeConfig(layer=1, **common), stats=st[1])
    m = memit(lm, [EIFFEL], MemitConfig(layers=(1,), mom2_update_weight=1e-9, **common), stats=st)
    torch.testing.assert_close(m.delta(1), r.delta(1), rtol=1e-3, atol=1e-5)


def test_memit_edits_several_facts_over_layers(tiny, corpus):
    st = _stats(tiny, [1, 2], corpus)
    cfg = MemitConfig(layers=(1, 2), context_lengths=((3, 2),), v_steps=20, clamp_norm_factor=4.0, batch_facts=1)
    e = memit(tiny, [EIFFEL, COLOSSEUM], cfg, stats=st)
    assert e.layers == [1, 2] and all(e.rank(j) == 2 for j in e.layers)
    before = _state(tiny)
    with e.apply(tiny):
        z = capture(tiny, tiny.encode(EIFFEL.prompt)[None], ["blocks.2.hook_resid_post"])["blocks.2.hook_resid_post"]
    assert z.isfinite().all() and _same_state(tiny, before)


def test_batched_target_optimisation_equals_one_at_a_time(tiny):
    ctx = context_templates(tiny, ((3, 2),))
    hook = value_hook(1)

    def run(facts, stop):
        rows = build_rows(tiny, facts, ctx)
        init = lookup_activations(tiny, rows, [hook])[hook][rows.first_row]
        return optimise_targets(tiny, rows, hook, 1, init, steps=6, lr=0.5, weight_decay=0.5, clamp_norm_factor=4.0,
                                kl_factor=0.0625, early_stop_loss=stop)

    for stop in (0.05, 8.0):  # 8.0: the first fact stops early and leaves the batch, the second goes on
        both = run([EIFFEL, COLOSSEUM], stop)
        for i, f in enumerate([EIFFEL, COLOSSEUM]):
            alone = run([f], stop)
            torch.testing.assert_close(both.delta[i], alone.delta[0], rtol=1e-4, atol=1e-5)
            assert both.steps[i] == alone.steps[0] and both.loss[i] == pytest.approx(alone.loss[0], rel=1e-5)
    assert both.steps[0] < both.steps[1]


# -- the Edit artifact -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eiffel_edit(tiny, corpus):
    return rome(tiny, EIFFEL, RomeConfig(layer=1, **SHORT), stats=_stats(tiny, [1], corpus)[1])


def test_apply_restores_bit_exactly_also_after_an_exception(tiny, eiffel_edit):
    before = _state(tiny)
    logits0 = tiny.next_token_probs(EIFFEL.prompt)
    with pytest.raises(RuntimeError, match="boom"):
        with eiffel_edit.apply(tiny):
            assert not _same_state(tiny, before)
            raise RuntimeError("boom")
    assert _same_state(tiny, before) and not tiny.applied_edits
    h = eiffel_edit.apply(tiny)
    assert tiny.applied_edits == [h]
    h.remove()
    assert _same_state(tiny, before) and torch.equal(tiny.next_token_probs(EIFFEL.prompt), logits0)


def test_sequential_edits_stack_and_refuse_wrong_order(tiny, corpus, eiffel_edit):
    before = _state(tiny)
    with eiffel_edit.apply(tiny) as h1:
        second = rome(tiny, COLOSSEUM, RomeConfig(layer=1, **SHORT), stats=_stats(tiny, [1], corpus)[1])
        h2 = second.apply(tiny)
        with pytest.raises(LensMemoryError, match="reverse order"):
            h1.remove()
        h2.remove()
    assert _same_state(tiny, before)
    with pytest.raises(ArtifactMismatchError, match="differ"):
        second.apply(tiny)  # computed on the edited weights
    with applied(tiny, [eiffel_edit, second]):
        assert len(tiny.applied_edits) == 2
    assert _same_state(tiny, before)


def test_edit_refuses_another_model(eiffel_edit):
    other = load_model("tiny", seed=1)
    with pytest.raises(ArtifactMismatchError, match="computed on"):
        eiffel_edit.apply(other)


def test_save_load_round_trip(tiny, eiffel_edit, tmp_path):
    eiffel_edit.save(tmp_path / "e")
    back = Edit.load(tmp_path / "e")
    assert back.edit_id == eiffel_edit.edit_id and back.requests == eiffel_edit.requests
    with back.apply(tiny):
        p_loaded = tiny.next_token_probs(EIFFEL.prompt)
    with eiffel_edit.apply(tiny):
        p_orig = tiny.next_token_probs(EIFFEL.prompt)
    assert torch.equal(p_loaded, p_orig)
    raw = (tmp_path / "e" / "deltas.safetensors").read_bytes()
    (tmp_path / "e" / "deltas.safetensors").write_bytes(raw[:-8] + b"\x00" * 8)
    with pytest.raises(ArtifactMismatchError):
        Edit.load(tmp_path / "e")
    with pytest.raises(ArtifactMismatchError, match="not a saved edit"):
        Edit.load(tmp_path / "nothing")


# -- bad input ---------------------------------------------------------------------------------

def test_bad_requests_are_refused_before_any_work(tiny, corpus):
    st = _stats(tiny, [1], corpus)[1]
    cfg = RomeConfig(layer=1, **SHORT)
    with pytest.raises(LensMemoryError, match="equals the current answer"):
        rome(tiny, dataclasses.replace(EIFFEL, target_new="Paris"), cfg, stats=st)
    with pytest.raises(LensMemoryError, match="no new target"):
        rome(tiny, dataclasses.replace(EIFFEL, target_new=None), cfg, stats=st)
    current = tiny.decode(int(tiny.next_token_probs(EIFFEL.prompt).argmax()))
    with pytest.raises(LensMemoryError, match="already answers"):
        rome(tiny, dataclasses.replace(EIFFEL, target_new=current.strip() or "x"), cfg, stats=st)
    with pytest.raises(FactFormatError, match="template"):  # a request whose prompt lacks its subject
        dataclasses.replace(EIFFEL, template="The tower is located in the city of")
    with pytest.raises(LayerOutOfRangeError, match="layer 9"):
        rome(tiny, EIFFEL, cfg, layer=9)
    with pytest.raises(LensMemoryError, match="v_lr"):
        RomeConfig(v_lr=-1)
    with pytest.raises(LensMemoryError, match="key_mode"):
        RomeConfig(key_mode="fast")


def test_diverging_optimisation_stops_with_weights_untouched(tiny, corpus):
    before = _state(tiny)
    cfg = RomeConfig(layer=1, context_lengths=((3, 2),), v_steps=5, v_lr=float("inf"), clamp_norm_factor=1e30)
    with pytest.raises(EditOptimisationError, match="diverged"):
        rome(tiny, EIFFEL, cfg, stats=_stats(tiny, [1], corpus)[1])
    assert _same_state(tiny, before)


def test_batch_evaluation_leaves_out_neighbours_that_are_edited_too():
    from lens_memory.edit.evaluate import _unedited_neighbours

    a = Fact(subject="Lyon", template="{} is a city in the country of", target_true="France", target_new="Japan",
             neighborhood=("Marseille is a city in the country of", "Nice is a city in the country of"))
    b = Fact(subject="Marseille", template="{} is a city in the country of", target_true="France", target_new="Peru",
             neighborhood=("Lyon is a city in the country of", "Lille is a city in the country of"))
    kept, dropped = _unedited_neighbours([a, b])
    assert dropped == 2
    assert kept[0].neighborhood == ("Nice is a city in the country of",)
    assert kept[1].neighborhood == ("Lille is a city in the country of",)
