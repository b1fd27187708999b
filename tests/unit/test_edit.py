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
from lens_memory.tiny import tiny_arch_model

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

@pytest.mark.parametrize("arch", ("gemma3", "gpt2", "gptj", "gpt_neox", "llama", "olmo2"))  # all: test_conformance
@pytest.mark.parametrize("key_mode", ("original", "prome", "rrome"))
def test_rome_satisfies_its_equation_on_every_architecture(arch, key_mode, tiny, corpus):
    lm = tiny if arch == "gemma3" else tiny_arch_model(arch)
    layer = 1
    st = _stats(lm, [layer], corpus)[layer]
    edit = rome(lm, EIFFEL, RomeConfig(layer=layer, key_mode=key_mode, **SHORT), stats=st)
    k_star, v_star = torch.tensor(edit.info["k_star"]), torch.tensor(edit.info["v_star"])
    k_dir = torch.tensor(edit.info["k_direction"])
    before = _state(lm)
    W = linear_weight(lm, layer).detach().double().clone()
    bias = getattr(out_proj(lm, layer), "bias", None)
    b = bias.double() if bias is not None else 0.0
    with edit.apply(lm):
        W2 = linear_weight(lm, layer).detach().double()
        torch.testing.assert_close(W2 @ k_star.double() + b, v_star.double(), rtol=1e-4, atol=1e-4)
        u = torch.linalg.solve(regularise(st.mom2)[0], k_dir.double())
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


def _plain_key_value(lm, fact, layer):
    ids = lm.encode(fact.prompt)[None]
    s1 = lm.fact_subject_range(fact)[1]
    acts = capture(lm, ids, [key_hook(layer), value_hook(layer)], index=(torch.tensor([0]), torch.tensor([s1 - 1])))
    return acts[key_hook(layer)][0].double(), acts[value_hook(layer)][0].double()


def test_key_modes_follow_the_reference_definitions(tiny, corpus):
    """original: C⁻¹k̄ direction, plain key in the denominator (kmeng01/rome); prome (p-ROME): plain key everywhere
    (Gupta et al. 2024); rrome (r-ROME): k̄ everywhere, target from the averaged outputs. Same δ for all."""
    st = _stats(tiny, [1], corpus)[1]
    e = {m: rome(tiny, EIFFEL, RomeConfig(layer=1, key_mode=m, **SHORT), stats=st)
         for m in ("original", "prome", "rrome")}
    assert RomeConfig().key_mode == "original" and RomeConfig().kl_position == "subject_last"
    C = regularise(st.mom2)[0]
    k0, v0 = _plain_key_value(tiny, EIFFEL, 1)
    delta = e["original"].factors[1][0][:, 0].double()  # U = δ for original and prome
    torch.testing.assert_close(e["prome"].factors[1][0][:, 0].double(), delta)
    k_bar = torch.tensor(e["original"].info["k_direction"]).double()
    assert not torch.allclose(k_bar, k0, atol=1e-3)  # the prefixes matter
    for mode, k_dir, k_den in (("original", k_bar, k0), ("prome", k0, k0)):
        u = torch.linalg.solve(C, k_dir)
        expect = delta[:, None] @ (u / (u @ k_den))[None]
        torch.testing.assert_close(e[mode].delta(1).double(), expect, rtol=1e-4, atol=1e-6)
    W = linear_weight(tiny, 1).detach().double()
    with e["rrome"].apply(tiny):  # W' k̄ = W k_plain + δ (biases cancel; Gemma has none)
        W2 = linear_weight(tiny, 1).detach().double()
        torch.testing.assert_close(W2 @ k_bar, v0 + delta, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(W @ k0, v0, rtol=1e-4, atol=1e-4)


def test_memit_keys_average_within_then_across_context_groups(tiny):
    """MEMIT's compute_ks: mean per context group ({} alone; the generated prefixes), then across groups."""
    from lens_memory.edit.targets import context_groups, per_fact_mean

    lengths = ((3, 3),)
    ctx = context_templates(tiny, lengths)
    rows = build_rows(tiny, [EIFFEL], ctx, kl_prompts=())
    keys = lookup_activations(tiny, rows, [key_hook(1)])[key_hook(1)].double()
    grouped = per_fact_mean(keys, rows, context_groups(lengths))[0]
    torch.testing.assert_close(grouped, (keys[0] + keys[1:4].mean(0)) / 2)
    torch.testing.assert_close(per_fact_mean(keys, rows)[0], keys.mean(0))  # ROME's compute_u: uniform


def test_memit_refuses_a_window_ending_at_the_last_layer(tiny, corpus):
    last = tiny.n_layers - 1
    with pytest.raises(LensMemoryError, match=f"end at the last layer \\({last}\\)"):
        memit(tiny, [EIFFEL], MemitConfig(layers=(last - 1, last), **SHORT))


@pytest.mark.parametrize("arch", ("olmo2", "gemma3", "llama"))
def test_memit_one_layer_reaches_the_requested_residual(arch, tiny, corpus):
    """One layer, tiny λ: the MLP's residual contribution moves by what MEMIT asked for.

    Exact without a post-MLP norm. With one (Gemma, OLMo 2) the norm fixes the contribution's size, so
    the closest reachable change is taken: measured miss 0.61 / 0.60 (OLMo 2 / Gemma 3) with the norm
    inverted, 0.88 / 0.73 without (OLMo 2 kept only 13% of the requested size when its norm went undetected).
    """
    lm = tiny if arch == "gemma3" else tiny_arch_model(arch)
    st = _stats(lm, [1], corpus)
    cfg = MemitConfig(layers=(1,), mom2_update_weight=1e-6, context_lengths=(), v_steps=6)  # key = plain key
    e = memit(lm, [EIFFEL], cfg, stats=st)
    ids = lm.encode(EIFFEL.prompt)[None]
    idx = (torch.tensor([0]), torch.tensor([lm.fact_subject_range(EIFFEL)[1] - 1]))
    z_before = capture(lm, ids, ["blocks.1.hook_resid_post"], index=idx)["blocks.1.hook_resid_post"][0].double()
    with e.apply(lm):
        z_after = capture(lm, ids, ["blocks.1.hook_resid_post"], index=idx)["blocks.1.hook_resid_post"][0].double()
    wanted, got = torch.tensor(e.info["z"][0]).double() - z_before, z_after - z_before
    miss, ratio = float((got - wanted).norm() / wanted.norm()), float(got.norm() / wanted.norm())
    if arch == "llama":
        assert miss < 1e-4
    else:
        assert miss < 0.65 and ratio > 0.5, (miss, ratio)


def test_memit_one_fact_one_layer_equals_rome_without_post_norm(corpus):
    lm = tiny_arch_model("llama")
    st = _stats(lm, [1], corpus)
    # no prefixes: MEMIT's key (group means) and r-ROME's key (the plain prompt's) are then the same key
    common = dict(context_lengths=(), v_steps=8, v_weight_decay=0.0, clamp_norm_factor=1e6, kl_factor=0.0625)
    r = rome(lm, EIFFEL, RomeConfig(layer=1, key_mode="prome", **common), stats=st[1])
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
    raw = (tmp_path / "e" / "edit.safetensors").read_bytes()
    (tmp_path / "e" / "edit.safetensors").write_bytes(raw[:-8] + b"\x00" * 8)
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


def test_rome_variants_carry_their_papers_names():
    """Gupta et al. 2024: p-ROME uses the plain prompt's key in both places, r-ROME the prefix-averaged key
    (rebuilding-rome's README equation, enable_random_prefix_keys). The spelling used before issue 29 for
    r-ROME is refused with what it is called now."""
    from lens_memory.edit.rome import KEY_MODES, ROME_METHODS

    assert KEY_MODES == ("original", "prome", "rrome")
    assert ROME_METHODS == {"rome": "original", "prome": "prome", "rrome": "rrome"}
    with pytest.raises(LensMemoryError, match="'rrome_prefix' is now called 'rrome'.*'prome'"):
        RomeConfig(key_mode="rrome_prefix")


def test_diverging_optimisation_stops_with_weights_untouched(tiny, corpus):
    before = _state(tiny)
    cfg = RomeConfig(layer=1, context_lengths=((3, 2),), v_steps=5, v_lr=float("inf"), clamp_norm_factor=1e30)
    with pytest.raises(EditOptimisationError, match="diverged"):
        rome(tiny, EIFFEL, cfg, stats=_stats(tiny, [1], corpus)[1])
    assert _same_state(tiny, before)


def test_batch_evaluation_leaves_out_neighbours_that_are_edited_too():
    from lens_memory.harness.knowledge import _unedited_neighbours

    a = Fact(subject="Lyon", template="{} is a city in the country of", target_true="France", target_new="Japan",
             neighborhood=("Marseille is a city in the country of", "Nice is a city in the country of"))
    b = Fact(subject="Marseille", template="{} is a city in the country of", target_true="France", target_new="Peru",
             neighborhood=("Lyon is a city in the country of", "Lille is a city in the country of"))
    kept, dropped = _unedited_neighbours([a, b])
    assert dropped == 2
    assert kept[0].neighborhood == ("Nice is a city in the country of",)
    assert kept[1].neighborhood == ("Lille is a city in the country of",)


# -- parity with the reference algorithm, written from its definition ---------------------------

def _reference_rome_delta(lm, fact, layer, C, contexts, steps, lr, wd, clamp, kl_factor):
    """kmeng01/rome's compute_u + compute_v, re-derived on the Hugging Face model with plain torch:
    δ added to the MLP output at the subject's last token of every rewriting and KL prompt, Adam on
    mean target NLL + kl_factor KL(new || init) read *at the subject's last token of "{} is a"* +
    wd |δ| / |v_init|², clamp to clamp |v_init|; u = C⁻¹k̄ / |C⁻¹k̄|, ΔW = δ uᵀ / (k_plainᵀ u)."""
    mlp = lm.hf.model.layers[layer].mlp.down_proj
    new = lm.continuation_ids(fact.target_new)
    prompts = []
    for c in contexts:
        text = c.format(fact.prompt)
        ids = torch.cat([lm.encode(text), torch.tensor(new[:-1], dtype=torch.long)])
        prompts.append((ids, lm.fact_subject_range(fact, c)[1] - 1, len(lm.encode(text)) - 1))
    kl_text = "{} is a".format(fact.subject)
    kl = (lm.encode(kl_text), lm.subject_range(kl_text, fact.subject, 0)[1] - 1)
    delta = torch.zeros(lm.d_model, requires_grad=True)
    state = {}

    def hook(mod, inp, out, idx):
        state.setdefault("k", []).append(inp[0][0, idx].detach())
        state.setdefault("v", []).append(out[0, idx].detach())
        out = out.clone()
        out[0, idx] = out[0, idx] + delta
        return out

    def run(ids, idx):
        h = mlp.register_forward_hook(lambda m, i, o: hook(m, i, o, idx))
        try:
            return torch.log_softmax(lm.hf(input_ids=ids[None]).logits[0], -1)
        finally:
            h.remove()

    opt = torch.optim.Adam([delta], lr=lr)
    kl_init, v_init, k_plain, keys = None, None, None, None
    for it in range(steps):
        opt.zero_grad()
        state.clear()
        nll = torch.stack([-lp[start + torch.arange(len(new)), torch.tensor(new)].mean()
                           for (ids, idx, start), lp in ((p, run(p[0], p[1])) for p in prompts)]).mean()
        if keys is None:
            keys, v_init, k_plain = torch.stack(state["k"]), state["v"][0], state["k"][0]
        kl_lp = run(*kl)[kl[1]]
        kl_init = kl_lp.detach() if kl_init is None else kl_init
        loss = nll + kl_factor * (kl_lp.exp() * (kl_lp - kl_init)).sum() + wd * delta.norm() / v_init.norm() ** 2
        if loss < 5e-2 or it == steps - 1:
            break
        loss.backward()
        opt.step()
        with torch.no_grad():
            if delta.norm() > clamp * v_init.norm():
                delta.mul_(clamp * v_init.norm() / delta.norm())
    u = torch.linalg.solve(C, keys.double().mean(0))
    u = u / u.norm()
    return (delta.detach().double() / (k_plain.double() @ u))[:, None] @ u[None]


def test_rome_default_equals_the_reference_algorithm(corpus):
    """ROME's defaults (key_mode original, KL at the subject's last token) give the reference's ΔW."""
    lm = tiny_arch_model("llama")
    st = _stats(lm, [1], corpus)[1]
    cfg = RomeConfig(layer=1, context_lengths=((3, 2),), v_steps=8)
    ours = rome(lm, EIFFEL, cfg, stats=st).delta(1).double()
    C = regularise(st.mom2)[0]
    ref = _reference_rome_delta(lm, EIFFEL, 1, C, context_templates(lm, cfg.context_lengths), cfg.v_steps, cfg.v_lr,
                                cfg.v_weight_decay, cfg.clamp_norm_factor, cfg.kl_factor)
    cos = float((ours * ref).sum() / (ours.norm() * ref.norm()))
    assert cos > 0.99999 and abs(float(ours.norm() / ref.norm()) - 1) < 1e-3, (cos, float(ours.norm() / ref.norm()))
    other = rome(lm, EIFFEL, dataclasses.replace(cfg, kl_position="prompt_last"), stats=st).delta(1).double()
    assert float((other * ref).sum() / (other.norm() * ref.norm())) < cos  # the old KL position differs


def test_memit_with_one_fact_saves_hashes_and_keys_the_state(corpus, tmp_path):
    """Issue 16, defect 2: a one-fact MEMIT's factor is a [d, 1] view with stride (1, d); hashing and saving it
    crashed after all the work. Now it has an id, saves, loads back equal and keys the model state."""
    lm = tiny_arch_model("llama")
    st = _stats(lm, [1], corpus)
    e = memit(lm, [EIFFEL], MemitConfig(layers=(1,), context_lengths=(), v_steps=2), stats=st)
    assert len(e.edit_id) == 64
    back = Edit.load(e.save(tmp_path / "one") or tmp_path / "one")
    assert back.edit_id == e.edit_id and torch.equal(back.delta(1), e.delta(1))
    with e.apply(lm):
        assert lm.state_key() != lm.identity.weight_hash


def test_key_statistics_cache_entries_are_verified_and_locked(tiny, corpus, cache):
    """The statistics cache is the shared cache helper's: content key, manifest, recompute-if-corrupt."""
    import json

    a = key_statistics(tiny, 1, STATS, corpus=corpus)[1]
    (meta,) = list(cache.rglob("cache.json"))
    assert json.loads(meta.read_text())["files"]  # every output is listed with its hash
    (t,) = list(cache.rglob("key_stats.safetensors"))
    raw = bytearray(t.read_bytes())
    raw[-1] ^= 1  # one flipped bit, same size
    t.write_bytes(bytes(raw))
    again = key_statistics(tiny, 1, STATS, corpus=corpus)[1]
    assert torch.equal(again.mom2, a.mom2)
    assert list(cache.rglob("*.lock")) and not list(cache.rglob("*.partial-*"))
