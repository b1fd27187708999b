"""Steering on the tiny random model: CAA is the mean difference, apply/remove is exact, STA, LM-Steer, decomposition."""

import json

import pytest
import torch

from lens_memory.errors import ArtifactMismatchError, LayerOutOfRangeError, LensMemoryError
from lens_memory.hooks import capture
from lens_memory.steer.activations import contrast_activations, encode_pair_side
from lens_memory.steer.behaviors import Behavior, BehaviorFormatError, ContrastPair, builtin_behaviors, load_behavior
from lens_memory.steer.caa import CAAConfig, caa, resid_hook
from lens_memory.steer.decompose import decompose, matching_pursuit
from lens_memory.steer.evaluate import (PromptingBaseline, SteerEvalConfig, SteeringEvaluation, behavior_probability,
                                        continuation_nll, distinct_n, evaluate_steering, is_monotonic)
from lens_memory.steer.lm_steer import LMSteer, LMSteerConfig, lm_steer
from lens_memory.steer.sta import STAConfig, feature_differences, sta_from_activations
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
    with pytest.raises(ArtifactMismatchError, match="fitted on"):
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


def test_sta_with_no_trim_and_every_feature_is_the_rescaled_decoded_difference(tiny):
    hook = resid_hook(1)
    acts = contrast_activations(tiny, PAIRS, [hook])[hook]
    sae = ToySAE(tiny.d_model, 96)
    vec = sta_from_activations(tiny, sae, acts, 1, "toy", STAConfig(trim=0.0, sign_consistency=False))
    d = feature_differences(sae, acts)
    want = d.amplitude @ sae.W_dec.double()
    want = want * acts.mean_difference().norm() / want.norm()
    torch.testing.assert_close(vec.vectors[1].double(), want, atol=1e-5, rtol=1e-5)
    assert abs(vec.norm() - float(acts.mean_difference().norm())) < 1e-3
    kept = sta_from_activations(tiny, sae, acts, 1, "toy", STAConfig(trim=0.5))
    consistent = int(((torch.sign(d.amplitude) == torch.sign(d.frequency)) & (d.amplitude != 0)).sum())
    assert 0 < kept.info["n_features"] <= consistent // 2 + 1
    assert vec.hook_name(1) == hook


def test_decomposition_fractions_add_up():
    g = torch.Generator().manual_seed(1)
    D = torch.randn(50, 16, generator=g)
    v = 2.0 * D[3] - 0.5 * D[7] + 0.01 * torch.randn(16, generator=g)
    dec = decompose(v, type("S", (), {"W_dec": D})(), k=6)
    assert set(dec.features[:2]) == {3, 7}
    assert abs(sum(dec.fractions) + dec.residual_fraction - 1) < 1e-9
    assert abs(sum(dec.fractions) - dec.explained()) < 1e-9
    assert dec.explained(2) > 0.99 and all(a <= b + 1e-12 for a, b in zip(dec.explained_curve, dec.explained_curve[1:]))
    exact = decompose(D[5].double() * 3, type("S", (), {"W_dec": D})(), k=1)
    assert exact.features == [5] and abs(exact.coefficients[0] - 3) < 1e-9 and exact.residual_fraction < 1e-12
    assert abs(float(exact.cosines[5]) - 1) < 1e-6
    with pytest.raises(LensMemoryError, match="shape"):
        decompose(torch.ones(15), type("S", (), {"W_dec": D})())


def test_matching_pursuit_residual_is_orthogonal_to_chosen_atoms():
    g = torch.Generator().manual_seed(2)
    D, v = torch.randn(30, 8, generator=g), torch.randn(8, generator=g)
    feats, coef, _ = matching_pursuit(v, D, 4)
    r = v.double() - D[feats].double().T @ coef
    assert (D[feats].double() @ r).abs().max() < 1e-9


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
    cfg = SteerEvalConfig(strengths=(-1.0, 1.0), gen_tokens=4, n_neutral_tokens=64)
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
