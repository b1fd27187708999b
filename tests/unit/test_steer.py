"""Steering on the tiny random model: CAA is the mean difference, apply/remove is exact, STA, LM-Steer, decomposition."""

import json

import pytest
import torch

from lens_memory.errors import ArtifactMismatchError, LayerOutOfRangeError, LensMemoryError
from lens_memory.hooks import capture
from lens_memory.steer.activations import contrast_activations, encode_pair_side
from lens_memory.steer.activations import ContrastActivations
from lens_memory.steer.behaviors import (Behavior, BehaviorFormatError, ContrastPair, assign_splits, builtin_behaviors,
                                         load_behavior, make_ab_items)
from lens_memory.steer.caa import CAAConfig, caa, caa_layer_sweep, resid_hook
from lens_memory.steer.decompose import decompose, matching_pursuit
from lens_memory.steer.evaluate import (PromptingBaseline, SteerEvalConfig, SteeringEvaluation, behavior_probability,
                                        continuation_nll, distinct_n, evaluate_steering, is_monotonic)
from lens_memory.steer.lm_steer import LMSteer, LMSteerConfig, lm_steer
from lens_memory.steer.sta import STAConfig, feature_differences, select_features, sta_from_activations
from lens_memory.steer.vector import SteeringNaNError, SteeringVector

PAIRS = [ContrastPair("The film was", " great and fun.", " bad and dull."),
         ContrastPair("My day was", " lovely.", " awful, really awful."),
         ContrastPair("", " good good", " bad"),
         ContrastPair("The food was", " tasty", " bland and cold.")]
BEH = Behavior("toy", PAIRS, ["The show was", "Our trip was"], [" good", " great"], [" bad", " awful"],
               prompting={"positive_instruction": "Happy text.\n", "negative_instruction": "Sad text.\n"})


class ToySAE:
    """An sae-lens-like SAE: encode = relu(x W_enc + b), W_dec [d_sae, d_model]."""

    def __init__(self, d_model, d_sae, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.randn(d_model, d_sae, generator=g) / d_model ** 0.5
        self.b_enc = torch.zeros(d_sae)
        self.W_dec = torch.randn(d_sae, d_model, generator=g) / d_model ** 0.5

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)


def test_builtin_behaviours_are_large_and_held_out():
    for name, b in builtin_behaviors().items():
        assert len(b.train) >= 100 and len(b.eval_prompts) >= 50, name
        assert not {p.prompt for p in b.train} & set(b.eval_prompts), name
        assert b.positive_tokens and b.negative_tokens


def test_caa_equals_hand_computed_mean_difference(tiny):
    vec = caa(tiny, BEH, CAAConfig(layers=(1, 2), position="answer_mean", batch_size=3))
    for layer in (1, 2):
        diffs = []
        for p in PAIRS:
            sides = []
            for text in (p.positive, p.negative):
                ids, start = encode_pair_side(tiny, p.prompt, text)
                a = capture(tiny, ids[None], [resid_hook(layer)])[resid_hook(layer)][0]
                sides.append(a[start:].double().mean(0))
            diffs.append(sides[0] - sides[1])
        want = torch.stack(diffs).mean(0)
        torch.testing.assert_close(vec.vectors[layer].double(), want, atol=1e-5, rtol=1e-5)
    last = caa(tiny, BEH, CAAConfig(layers=(1,), position="answer_last"))
    ids_p, _ = encode_pair_side(tiny, PAIRS[0].prompt, PAIRS[0].positive)
    assert not torch.allclose(last.vectors[1], vec.vectors[1])
    assert vec.info["position"] == "answer_mean" and vec.model["name"] == "tiny"


def test_apply_remove_restores_outputs_exactly_also_after_exception(tiny):
    vec = caa(tiny, BEH, CAAConfig(layers=(1,)))
    ids = tiny.encode("The show was really")[None]
    before = tiny.hf(input_ids=ids).logits.clone()
    with vec.apply(tiny, 3.0, positions="all"):
        steered = tiny.hf(input_ids=ids).logits
    assert not torch.equal(before, steered)
    assert torch.equal(before, tiny.hf(input_ids=ids).logits)
    with pytest.raises(RuntimeError):
        with vec.apply(tiny, 3.0):
            raise RuntimeError("boom")
    assert torch.equal(before, tiny.hf(input_ids=ids).logits)
    h = vec.apply(tiny, 2.0)
    h.remove()
    h.remove()  # idempotent
    assert torch.equal(before, tiny.hf(input_ids=ids).logits)


def test_after_prompt_steers_last_position_and_generated_tokens_only(tiny):
    vec = caa(tiny, BEH, CAAConfig(layers=(1,)))
    ids = tiny.encode("The show was really")[None]
    hook = resid_hook(1)
    base = capture(tiny, ids, [hook])[hook]
    with vec.apply(tiny, 2.0):
        got = capture(tiny, ids, [hook])[hook]
    torch.testing.assert_close(got[0, :-1], base[0, :-1], atol=0, rtol=0)
    torch.testing.assert_close(got[0, -1], base[0, -1] + 2.0 * vec.vectors[1], atol=1e-5, rtol=1e-5)


def test_strength_zero_is_identity_and_nan_strength_raises(tiny):
    vec = caa(tiny, BEH, CAAConfig(layers=(1,)))
    ids = tiny.encode("The show")[None]
    before = tiny.hf(input_ids=ids).logits.clone()
    with vec.apply(tiny, 0.0, positions="all"):
        assert torch.equal(before, tiny.hf(input_ids=ids).logits)
    with pytest.raises(ValueError, match="nan"):
        vec.apply(tiny, float("nan"))
    with pytest.raises(SteeringNaNError, match="1e\\+38"):
        with vec.apply(tiny, 1e38, positions="all"):
            tiny.hf(input_ids=ids)
    assert torch.equal(before, tiny.hf(input_ids=ids).logits)


def test_steering_vector_save_load_and_mismatch(tiny, tmp_path):
    vec = caa(tiny, BEH, CAAConfig(layers=(2,)))
    vec.save(tmp_path / "v")
    back = SteeringVector.load(tmp_path / "v")
    assert torch.equal(back.vectors[2], vec.vectors[2]) and back.config == vec.config
    other = SteeringVector("caa", {2: vec.vectors[2]}, "toy", model={**vec.model, "weight_hash": "0" * 64})
    with pytest.raises(ArtifactMismatchError, match="computed on"):
        other.apply(tiny)
    wrong = SteeringVector("caa", {2: torch.zeros(tiny.d_model + 1)}, "toy")
    with pytest.raises(ArtifactMismatchError, match="d_model"):
        wrong.apply(tiny)
    (tmp_path / "v" / "steering_vector.json").write_text("{not json")
    with pytest.raises(ArtifactMismatchError, match="not valid JSON"):
        SteeringVector.load(tmp_path / "v")


def test_bad_input_is_refused(tiny, tmp_path):
    with pytest.raises(BehaviorFormatError, match="no contrast pairs"):
        Behavior("empty", [], [])
    with pytest.raises(BehaviorFormatError, match="unbalanced: 3 positive vs 2 negative"):
        Behavior.from_dict({"name": "u", "positive": ["a", "b", "c"], "negative": ["x", "y"]})
    with pytest.raises(BehaviorFormatError, match="empty negative"):
        Behavior("e", [ContrastPair("p", " yes", " ")], [])
    with pytest.raises(LayerOutOfRangeError, match="99"):
        caa(tiny, BEH, CAAConfig(layers=(99,)))
    with pytest.raises(LensMemoryError, match="position"):
        CAAConfig(position="middle")
    p = tmp_path / "pairs.csv"
    p.write_text("prompt,positive,negative\nA,x,\n")
    with pytest.raises(BehaviorFormatError, match="row 2"):
        load_behavior(p)
    p.write_text("prompt,positive,negative,split\nA, yes, no,train\nB,,,eval\n")
    b = load_behavior(p)
    assert len(b.train) == 1 and b.eval_prompts == ["B"]
    j = tmp_path / "pairs.json"
    j.write_text(json.dumps({"positive": ["good"], "negative": ["bad"], "prompts": ["It is"]}))
    assert load_behavior(j).train == [ContrastPair("It is", "good", "bad")]


class IdentitySAE:
    """encode = relu(x), W_dec = I: feature j is coordinate j, so the STA vector shows the kept features."""

    def __init__(self, d):
        self.W_dec = torch.eye(d, dtype=torch.float64)

    def encode(self, x):
        return torch.relu(x)


def _hand_acts():
    """4 pairs, 8 features. Positive example 0 has 5 answer tokens, every other example 1.

    f0 fires on all 5 tokens of positive example 0 only (and weakly in negative example 0): frequent per
    token (5/8 vs 1/4), but in 1 of 4 examples on both sides. f1 fires in all 4 positive examples (on one
    token of example 0). f2 fires in every negative example; f3 weakly in one positive example; f4 has
    amplitude and frequency differences of opposite signs.
    """
    pos = torch.zeros(8, 8)
    pos[0:5, 0] = 1.0                      # f0: every token of positive example 0
    pos[0, 1], pos[5:8, 1] = 1.5, 0.3      # f1: per-example mean 0.3 in each positive example
    pos[5, 3] = 0.05                       # f3
    pos[0:5, 4] = 0.4                      # f4: positive example 0 only
    neg = torch.zeros(4, 8)
    neg[0, 0] = 0.2                        # f0
    neg[:, 2] = 0.4                        # f2
    neg[1:4, 4] = 0.1                      # f4: three negative examples
    return ContrastActivations("blocks.1.hook_resid_post", "answer_mean", pos, torch.tensor([0, 0, 0, 0, 0, 1, 2, 3]),
                               neg, torch.tensor([0, 1, 2, 3]), 4)


def _reference_selection(amplitude, frequency, keep):
    """generate_sae_caa_vector.act_and_fre (mode act_and_freq), written out for these 8 features."""
    def nrm(x):
        a = x.abs()
        return torch.sign(x) * (a - a.min()) / (a.max() - a.min() + 1e-8)

    na, nf = nrm(amplitude), nrm(frequency)
    score = torch.where(((na > 0) & (nf > 0)) | ((na < 0) & (nf < 0)), nf, torch.zeros_like(nf))
    i = int(keep * len(score))
    t_f = torch.sort(score.abs(), descending=True).values[i]
    t_a = torch.sort(amplitude.abs(), descending=True).values[i]
    return set(torch.nonzero((score.abs() >= t_f) & (amplitude.abs() >= t_a)).flatten().tolist())


def test_sta_counts_frequency_per_example_and_keeps_the_papers_features(tiny):
    acts, sae = _hand_acts(), IdentitySAE(8)
    d = feature_differences(sae, acts)
    # amplitude: mean over examples of the per-example mean over answer tokens
    torch.testing.assert_close(d.amplitude, torch.tensor([0.2, 0.3, -0.4, 0.0125, 0.025, 0, 0, 0], dtype=torch.float64))
    # frequency: fraction of *examples* in which the feature fires (not of tokens)
    torch.testing.assert_close(d.frequency, torch.tensor([0.0, 1.0, -1.0, 0.25, -0.5, 0, 0, 0], dtype=torch.float64))
    per_token = torch.tensor([5 / 8 - 1 / 4, 4 / 8, -1.0, 1 / 8, 5 / 8 - 3 / 4, 0, 0, 0], dtype=torch.float64)
    # trim 0.75 keeps the top 25% (2 of 8, ties included) by each criterion: per example {f1, f2};
    # per-token frequency would also keep the bursty f0 -- the example tells the two apart
    assert _reference_selection(d.amplitude, d.frequency, 0.25) == {1, 2}
    assert _reference_selection(d.amplitude, per_token, 0.25) == {0, 1, 2}
    cfg = STAConfig(trim=0.75, rescale_to_caa=False)
    assert set(torch.nonzero(select_features(d, cfg)).flatten().tolist()) == {1, 2}
    vec = sta_from_activations(tiny, sae, acts, 1, "toy", cfg)
    torch.testing.assert_close(vec.vectors[1].double(), torch.tensor([0, 0.3, -0.4, 0, 0, 0, 0, 0], dtype=torch.float64))
    assert vec.info["n_features"] == 2 and vec.info["frequency"] == "per_example"
    # rescaled to the norm of the CAA vector of the same activations (as the reference does)
    scaled = sta_from_activations(tiny, sae, acts, 1, "toy", STAConfig(trim=0.75))
    assert abs(scaled.norm() - float(acts.mean_difference().norm())) < 1e-5
    torch.testing.assert_close(scaled.vectors[1] / scaled.norm(), vec.vectors[1] / vec.norm())


def test_sta_zero_threshold_deviation_is_named_and_measured(tiny):
    acts, sae = _hand_acts(), IdentitySAE(8)
    # keep 75%: the 7th largest score is 0; the reference's ">= 0" then admits every feature, the
    # sign-inconsistent f4 and the zero-frequency-difference f0 included
    ours = sta_from_activations(tiny, sae, acts, 1, "toy", STAConfig(trim=0.25, rescale_to_caa=False))
    assert torch.nonzero(ours.vectors[1]).flatten().tolist() == [1, 2, 3]
    ref = sta_from_activations(tiny, sae, acts, 1, "toy", STAConfig(trim=0.25, rescale_to_caa=False,
                                                                    reference_zero_threshold=True))
    assert torch.nonzero(ref.vectors[1]).flatten().tolist() == [0, 1, 2, 3, 4]
    assert ours.info["n_reference"] == 8 and ref.info["n_selected"] == 8
    assert STAConfig().trim == 0.65 and STAConfig().mode == "act_and_freq" and STAConfig().rescale_to_caa
    only_act = sta_from_activations(tiny, sae, acts, 1, "toy", STAConfig(trim=0.75, mode="only_act",
                                                                         rescale_to_caa=False))
    assert torch.nonzero(only_act.vectors[1]).flatten().tolist() == [0, 1, 2]
    with pytest.raises(LensMemoryError, match="mode"):
        STAConfig(mode="both")


def test_sta_on_the_tiny_model_is_the_rescaled_decoded_kept_difference(tiny):
    hook = resid_hook(1)
    acts = contrast_activations(tiny, PAIRS, [hook])[hook]
    sae = ToySAE(tiny.d_model, 96)
    d = feature_differences(sae, acts)
    keep = select_features(d, STAConfig())
    vec = sta_from_activations(tiny, sae, acts, 1, "toy", STAConfig())
    want = torch.where(keep, d.amplitude, torch.zeros_like(d.amplitude)) @ sae.W_dec.double()
    want = want * acts.mean_difference().norm() / want.norm()
    torch.testing.assert_close(vec.vectors[1].double(), want, atol=1e-5, rtol=1e-5)
    assert 0 < vec.info["n_features"] <= int(0.35 * 96) + 1
    assert vec.hook_name(1) == hook


def _sae_of(D):
    return type("S", (), {"W_dec": D})()


def test_decomposition_fractions_add_up():
    g = torch.Generator().manual_seed(1)
    D = torch.randn(50, 16, generator=g)
    v = 2.0 * D[3] - 0.5 * D[7] + 0.01 * torch.randn(16, generator=g)
    dec = decompose(v, _sae_of(D), k=6, method="signed")
    assert set(dec.features[:2]) == {3, 7} and dec.method == "signed"
    assert abs(sum(dec.fractions) + dec.residual_fraction - 1) < 1e-9
    assert abs(sum(dec.fractions) - dec.explained()) < 1e-9
    assert dec.explained(2) > 0.99 and all(a <= b + 1e-12 for a, b in zip(dec.explained_curve, dec.explained_curve[1:]))
    for method in ("nonnegative", "signed"):
        exact = decompose(D[5].double() * 3, _sae_of(D), k=1, method=method)
        assert exact.features == [5] and abs(exact.coefficients[0] - 3) < 1e-9 and exact.residual_fraction < 1e-12
        assert abs(float(exact.cosines[5]) - 1) < 1e-6
    with pytest.raises(LensMemoryError, match="shape"):
        decompose(torch.ones(15), _sae_of(D))


def test_decomposition_is_nonnegative_by_default():
    D = torch.eye(16)[:10] * 2.0  # orthogonal decoder rows
    neg = decompose(-3.0 * D[5], _sae_of(D), k=3)  # no non-negative SAE code reproduces -d_5
    assert neg.method == "nonnegative" and neg.explained() == 0.0 and neg.explained(3) == 0.0
    assert neg.features == [] and neg.residual_fraction == 1.0
    signed = decompose(-3.0 * D[5], _sae_of(D), k=3, method="signed")
    assert signed.features[0] == 5 and signed.coefficients[0] < 0 and signed.explained() > 1 - 1e-9
    g = torch.Generator().manual_seed(3)
    Dr = torch.randn(60, 12, generator=g)
    for _ in range(20):
        dec = decompose(torch.randn(12, generator=g), _sae_of(Dr), k=8)
        assert all(c >= 0 for c in dec.coefficients)
        assert all(0 <= e <= 1 for e in dec.explained_curve) and all(0 <= f <= 1 for f in dec.fractions)
        assert all(a <= b + 1e-12 for a, b in zip(dec.explained_curve, dec.explained_curve[1:]))
        assert abs(sum(dec.fractions) + dec.residual_fraction - 1) < 1e-9


def test_matching_pursuit_residual_is_orthogonal_to_chosen_atoms():
    g = torch.Generator().manual_seed(2)
    D, v = torch.randn(30, 8, generator=g), torch.randn(8, generator=g)
    feats, coef, _ = matching_pursuit(v, D, 4, method="signed")
    r = v.double() - D[feats].double().T @ coef
    assert (D[feats].double() @ r).abs().max() < 1e-9
    feats, coef, _ = matching_pursuit(v, D, 4)  # NNLS: orthogonal to the atoms it uses, <= 0 with the others
    r = v.double() - D[feats].double().T @ coef
    corr = D[feats].double() @ r
    assert (corr[coef > 1e-12].abs().max() < 1e-7) and (corr[coef <= 1e-12] <= 1e-7).all()


def test_lm_steer_strength_zero_equals_base_and_training_separates(tiny):
    cfg = LMSteerConfig(rank=2, epochs=30, lr=3e-2, batch_tokens=64, init_scale=1e-2)
    st = lm_steer(tiny, BEH, cfg, progress=False)
    ids = tiny.encode("The show was")[None]
    before = tiny.hf(input_ids=ids).logits.clone()
    with st.apply(tiny, 0.0):
        assert torch.equal(before, tiny.hf(input_ids=ids).logits)
    assert torch.equal(before, tiny.hf(input_ids=ids).logits)
    assert st.info["final_loss"] < st.info["losses"][0]
    # +1 makes the positive continuations likelier than -1 does
    pos = [p.prompt for p in PAIRS]
    with st.apply(tiny, 1.0):
        nll_pos = sum(continuation_nll(tiny, pos, [p.positive for p in PAIRS]))
    with st.apply(tiny, -1.0):
        nll_neg = sum(continuation_nll(tiny, pos, [p.positive for p in PAIRS]))
    assert nll_pos < nll_neg
    interp = st.interpret(tiny, k=3, n_directions=2)
    assert len(interp["directions"]) == 2 and len(interp["raised"]) == 3


def test_lm_steer_save_load(tiny, tmp_path):
    st = lm_steer(tiny, BEH, LMSteerConfig(rank=2, epochs=1), progress=False)
    st.save(tmp_path / "s")
    back = LMSteer.load(tmp_path / "s")
    assert torch.equal(back.P, st.P) and torch.equal(back.Q, st.Q) and back.config == st.config


def test_behavior_probability_and_metrics(tiny):
    prompts = BEH.eval_prompts + ["A much longer prompt that needs no padding at all was"]
    p = behavior_probability(tiny, BEH, prompts, per_prompt=True)
    assert len(p) == 3 and all(0 < x < 1 for x in p)
    # left padding: batched equals one by one
    single = [behavior_probability(tiny, BEH, [q]) for q in prompts]
    assert p == pytest.approx(single, abs=1e-5)
    assert distinct_n(["a b c", "a b d"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert is_monotonic([1, 2, 3]) and not is_monotonic([1, 3, 2])


def test_evaluate_steering_is_artifact_agnostic(tiny, tmp_path):
    vec = caa(tiny, BEH, CAAConfig(layers=(1,)))
    cfg = SteerEvalConfig(strengths=(-1.0, 1.0), gen_tokens=4, n_neutral_tokens=64, split="all")
    BEH.scorer = "vader"
    ev = evaluate_steering(tiny, BEH, vec, cfg, progress=False)
    assert ev.strengths == [-1.0, 0.0, 1.0] and ev.rows[1]["kl_neutral"] == 0.0
    assert ev.rows[0]["kl_neutral"] > 0 and ev.hook == "blocks.1.hook_resid_post"
    assert set(ev.summary()["behavior_score"]) == {"-1.0", "0.0", "1.0"}
    ev.save(tmp_path / "e")
    assert SteeringEvaluation.load(tmp_path / "e").rows == ev.rows
    base = evaluate_steering(tiny, BEH, PromptingBaseline(BEH), cfg, progress=False)
    assert base.method == "prompting" and base.strengths == [-1.0, 0.0, 1.0]
    # the unsteered row is the same whichever artifact is evaluated
    assert base.rows[1]["behavior_score"] == ev.rows[1]["behavior_score"]


def _final_hidden(lm, ids):
    """The unembedding's input (final normalised hidden state) at every position."""
    got = {}

    def grab(module, inputs, out):
        got["h"] = out.detach().clone()

    h = lm.bridge.hook_dict["unembed.hook_in"].register_forward_hook(grab)
    try:
        lm.hf(input_ids=ids)
    finally:
        h.remove()
    return got["h"][0, -1].double()


def test_lm_steer_matrix_is_the_papers_w_and_predicts_the_logit_derivative(tiny):
    g = torch.Generator().manual_seed(0)
    d = tiny.d_model
    P, Q = torch.randn(d, 2, generator=g) * 0.3, torch.randn(d, 2, generator=g) * 0.3
    st = LMSteer(P, Q, "toy", model=tiny.identity.to_dict())
    ids = tiny.encode("The show was really")[None]
    h = _final_hidden(tiny, ids)
    eps = 1e-3
    with torch.no_grad():
        with st.apply(tiny, eps):
            up = tiny.hf(input_ids=ids).logits[0, -1].double()
        with st.apply(tiny, -eps):
            down = tiny.hf(input_ids=ids).logits[0, -1].double()
    measured = (up - down) / (2 * eps)  # d logit_v / d ε at ε = 0, every token v
    E = tiny.hf.lm_head.weight.detach().double()
    W = st.matrix()
    torch.testing.assert_close(W, P.double() @ Q.double().T)  # W = P Qᵀ (projector1 projector2ᵀ)
    predicted = E @ (W.T @ h)  # hᵀ W e_v: the steered embedding is e_v + ε W e_v
    scale = measured.abs().max()
    assert (predicted - measured).abs().max() < 1e-3 * scale
    assert (E @ (W @ h) - measured).abs().max() > 0.1 * scale  # the transposed matrix does not
    torch.testing.assert_close(st.logit_shift(tiny, h), predicted)
    # the interpretation ranks tokens by that derivative, and projects embeddings on W's right singular vectors
    st.info["mean_hidden"] = h.tolist()
    interp = st.interpret(tiny, k=5, n_directions=1)
    assert interp["raised"] == [tiny.decode(int(t)) for t in torch.topk(measured, 5).indices]
    assert interp["lowered"] == [tiny.decode(int(t)) for t in torch.topk(-measured, 5).indices]
    v1 = torch.linalg.svd(P.double() @ Q.double().T).Vh[0]
    proj = E @ v1
    sides = {tuple(tiny.decode(int(t)) for t in torch.topk(proj, 5).indices),
             tuple(tiny.decode(int(t)) for t in torch.topk(-proj, 5).indices)}
    assert {tuple(interp["directions"][0]["top"]), tuple(interp["directions"][0]["bottom"])} == sides


def test_caa_ab_letter_is_the_mean_difference_at_the_answer_letter(tiny):
    items = BEH.ab_items()
    assert items == make_ab_items(PAIRS, seed=0)
    assert sorted(it.matching for it in items) == ["A", "A", "B", "B"]  # balanced letters
    for it, p in zip(items, PAIRS):
        mine = p.positive.strip() if it.matching == "A" else p.negative.strip()
        assert f"(A) {mine}" in it.question and p.prompt in it.question
    vec = caa(tiny, BEH, CAAConfig(layers=(1, 2), form="ab_letter", batch_size=3))
    for layer in (1, 2):
        hook, diffs = resid_hook(layer), []
        for it in items:
            sides = []
            for letter in (it.matching, it.not_matching):
                ids = tiny.encode(f"Input: {it.question}\nResponse: (" + letter)  # the letter is the last token
                assert tiny.decode(int(ids[-1])) == letter
                sides.append(capture(tiny, ids[None], [hook])[hook][0, -1].double())
            diffs.append(sides[0] - sides[1])
        torch.testing.assert_close(vec.vectors[layer].double(), torch.stack(diffs).mean(0), atol=1e-5, rtol=1e-5)
    assert vec.info["form"] == "ab_letter" and vec.config["form"] == "ab_letter" and vec.info["position"] == "letter"
    default = caa(tiny, BEH, CAAConfig(layers=(1,)))
    assert default.info["form"] == "completion_mean" and not torch.allclose(default.vectors[1], vec.vectors[1])
    with pytest.raises(LensMemoryError, match="form"):
        CAAConfig(form="letters")


def test_builtin_ab_items_and_splits_are_recorded(tmp_path):
    from importlib import resources

    for name, b in builtin_behaviors().items():
        raw = json.loads(resources.files("lens_memory").joinpath(f"data/behavior_{name}.json").read_text())
        assert len(raw["ab_train"]) == len(b.train) and len(raw["eval_split"]) == len(b.eval_prompts)
        assert b.ab_train == make_ab_items(b.train, seed=0)  # recorded = built from the pairs, seed 0
        assert sum(it.matching == "A" for it in b.ab_train) == len(b.train) // 2
        assert b.eval_split_labels == assign_splits(b.eval_prompts) == raw["eval_split"]
        dev, test = b.split("dev"), b.split("test")
        assert len(dev.eval_prompts) == len(test.eval_prompts) == len(b.eval_prompts) // 2
        assert not set(dev.eval_prompts) & set(test.eval_prompts)
        assert set(dev.eval_prompts) | set(test.eval_prompts) == set(b.eval_prompts)
        assert dev.eval_split == "dev" and dev.train == b.train and b.split("all") is b
        with pytest.raises(BehaviorFormatError, match="holds only"):
            dev.split("test")
        back = load_behavior(b.save(tmp_path / f"{name}.json"))
        assert back.ab_train == b.ab_train and back.eval_split_labels == b.eval_split_labels
    # the split depends on the prompt text only, not on the order
    prompts = [f"prompt number {i}" for i in range(11)]
    assert assign_splits(prompts[::-1]) == assign_splits(prompts)[::-1] and assign_splits(prompts).count("dev") == 5


def test_evaluation_runs_on_and_records_one_split(tiny, monkeypatch):
    import lens_memory.steer.evaluate as ev_mod

    b = Behavior("toy", PAIRS, [f"Item {i} was" for i in range(6)], [" good"], [" bad"])
    seen = []
    real = ev_mod.generate
    monkeypatch.setattr(ev_mod, "generate", lambda lm, prompts, **kw: seen.append(list(prompts)) or real(lm, prompts, **kw))
    vec = caa(tiny, b, CAAConfig(layers=(1,)))
    ev = evaluate_steering(tiny, b, vec, SteerEvalConfig(strengths=(1.0,), gen_tokens=2, n_neutral_tokens=0),
                           progress=False)
    assert ev.split == "test" and ev.summary()["split"] == "test" and ev.config["split"] == "test"
    assert all(p == b.split("test").eval_prompts for p in seen) and len(seen[0]) == 3
    sweep = caa_layer_sweep(tiny, b, layers=[1, 2], strength=1.0)
    assert sweep.split == "dev" and sweep.form == "completion_mean"
    with pytest.raises(LensMemoryError, match="split"):
        SteerEvalConfig(split="train")
