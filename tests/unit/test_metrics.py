"""CounterFact metrics (ROME / MEMIT / EasyEdit definitions) and the edit evaluation harness on the tiny model.

Hand-computed expectations: each test fails on a definition that differs from the published one
(total instead of mean log-prob, lower-cased ``\\w+`` words, missing sign flip, ...).
"""

import math

import numpy as np
import pytest
import torch

import lens_memory.metrics as metrics
from lens_memory.edit import RomeConfig, StatsConfig, key_statistics, rome
from lens_memory.errors import LensMemoryError
from lens_memory.facts import Fact
from lens_memory.harness import EditEvaluation, EvalConfig, evaluate_edits
from lens_memory.metrics import (TargetScores, fact_scores, generation_entropy, mean_ci, ngram_entropy,
                                 prompt_set_metrics, rome_generation_text, score_s, score_targets, target_probability,
                                 tfidf_similarity, word_tokenize)

FACT = Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris",
            target_new="Rome", paraphrases=("The Eiffel Tower stands in", "Eiffel Tower, a landmark of"),
            neighborhood=("The Louvre is located in the city of",), attribute_prompts=("The Colosseum is in",))


# -- generation entropy (ROME's compute_n_gram_entropy) -----------------------------------------------

def test_ngram_entropy_matches_hand_computation():
    # bigrams (a,b) x2, (b,a) x1 ; trigrams (a,b,a), (b,a,b)
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("x x x x x x") == 0.0
    assert math.isnan(ngram_entropy("alone"))  # no bigram: ROME's 0/0


def test_ngram_entropy_keeps_case_and_punctuation_as_nltk():
    # nltk.word_tokenize: The | cat | saw | the | cat | .   (case kept, "." a token)
    assert word_tokenize("The cat saw the cat.") == ["The", "cat", "saw", "the", "cat", "."]
    # 5 distinct bigrams, 4 distinct trigrams, each once: H2 = log2 5, H3 = 2
    assert ngram_entropy("The cat saw the cat.") == pytest.approx((2 / 3 * math.log2(5) + 4 / 3 * 2.0) / 2)
    # the old lower-cased \w+ words (the cat saw the cat: bigram (the, cat) twice) give less
    h2_old = -(2 / 4 * math.log2(2 / 4) + 2 * (1 / 4) * math.log2(1 / 4))
    assert ngram_entropy("The cat saw the cat.") != pytest.approx((2 / 3 * h2_old + 4 / 3 * math.log2(3)) / 2)


def test_word_tokenize_splits_sentences_before_words():
    # a sentence split first, so a sentence-final "." inside the text is its own token (word_tokenize)
    assert word_tokenize("Paris is big. It is old.") == ["Paris", "is", "big", ".", "It", "is", "old", "."]
    assert word_tokenize("It's Rome's.") == ["It", "'s", "Rome", "'s", "."]
    assert metrics.fluency_tokenizer().startswith("nltk")


def test_generation_entropy_is_the_mean_over_texts_of_prompt_plus_generation():
    texts = ["a b a b", "The cat saw the cat."]
    assert generation_entropy(texts) == pytest.approx(np.mean([ngram_entropy(t) for t in texts]))
    assert rome_generation_text("The tower is in", " Rome.\n\nIt is") == "The tower is in Rome. It is"
    assert rome_generation_text("Caf", "e\u0301") == "Cafe\u0301"  # NFKD as ROME's generate_fast


# -- success / magnitude / accuracy from known log-probabilities --------------------------------------

def test_prompt_set_metrics_efficacy_and_paraphrase_favour_the_new_object():
    new, true = [math.log(0.5), math.log(0.1)], [math.log(0.2), math.log(0.4)]
    m = prompt_set_metrics("paraphrase", new, true, [1.0, 0.5], [0.0, 1.0])
    assert m["success"] == 0.5  # 0.5 > 0.2 yes, 0.1 > 0.4 no
    assert m["magnitude"] == pytest.approx(((0.5 - 0.2) + (0.1 - 0.4)) / 2)
    assert m["accuracy"] == 0.75  # o*'s token accuracies


def test_prompt_set_metrics_neighbourhood_favours_the_true_object():
    new, true = [math.log(0.1), math.log(0.3)], [math.log(0.6), math.log(0.2)]
    m = prompt_set_metrics("neighborhood", new, true, [1.0, 1.0], [1.0, 0.0])
    assert m["success"] == 0.5  # P(o) > P(o*): 0.6 > 0.1 yes, 0.2 > 0.3 no
    assert m["magnitude"] == pytest.approx(((0.6 - 0.1) + (0.2 - 0.3)) / 2)  # NM = P(o) - P(o*) (MEMIT)
    assert m["accuracy"] == 0.5  # o's token accuracies
    assert all(math.isnan(v) for v in prompt_set_metrics("efficacy", [], [], [], []).values())
    with pytest.raises(ValueError, match="kind"):
        prompt_set_metrics("locality", new, true, [1.0], [1.0])


def test_fact_scores_use_exp_mean_logprob_of_multi_token_targets(monkeypatch):
    """Multi-token targets: P = exp(mean token log-prob) (ROME), not exp(sum); o* has 3 tokens, o 2."""
    fact = Fact(subject="X", template="{} is in", target_true="New York", target_new="Los Angeles",
                paraphrases=("X lies in",), neighborhood=("Y is in",))
    tok_lp = {("X is in", "Los Angeles"): [-0.5, -0.5, -0.5], ("X is in", "New York"): [-0.6, -0.6],
              ("X lies in", "Los Angeles"): [-3.0, -0.5, -1.0], ("X lies in", "New York"): [-0.3, -0.3],
              ("Y is in", "Los Angeles"): [-0.4, -0.4, -0.4], ("Y is in", "New York"): [-0.2, -0.4]}
    acc = {("X is in", "Los Angeles"): 1.0, ("X lies in", "Los Angeles"): 2 / 3, ("Y is in", "New York"): 0.5}

    def fake(lm, prompts, targets, batch_size=32):
        lps = [tok_lp[(p, t)] for p, t in zip(prompts, targets)]
        a = np.array([acc.get((p, t), 0.0) for p, t in zip(prompts, targets)])
        return TargetScores(np.array([np.mean(x) for x in lps]), np.array([np.sum(x) for x in lps]), a == 1.0, a)

    monkeypatch.setattr(metrics, "score_targets", fake)
    row = fact_scores(None, [fact])[0]
    assert row["p_new"] == pytest.approx(math.exp(-0.5)) and row["p_true"] == pytest.approx(math.exp(-0.6))
    # by the mean NLL o* wins (0.5 < 0.6); by the summed NLL it would lose (1.5 > 1.2)
    assert row["efficacy_success"] == 1.0 and row["efficacy_accuracy"] == 1.0
    assert row["efficacy_magnitude"] == pytest.approx(math.exp(-0.5) - math.exp(-0.6))
    assert row["paraphrase_success"] == 0.0 and row["paraphrase_accuracy"] == pytest.approx(2 / 3)
    assert row["paraphrase_magnitude"] == pytest.approx(math.exp(-1.5) - math.exp(-0.3))
    assert row["neighborhood_success"] == 1.0 and row["neighborhood_accuracy"] == 0.5  # o: 0.3 < 0.4
    assert row["neighborhood_magnitude"] == pytest.approx(math.exp(-0.3) - math.exp(-0.4))  # P(o) - P(o*)


def test_score_s_is_the_harmonic_mean_of_the_success_rates():
    assert score_s(1.0, 0.5, 0.25) == pytest.approx(3 / (1 + 2 + 4))
    assert score_s(0.9, 0.8, 0.7) == pytest.approx(3 / (1 / 0.9 + 1 / 0.8 + 1 / 0.7))
    assert score_s(1.0, 0.0, 1.0) == 0.0 and math.isnan(score_s(1.0, float("nan"), 1.0))


def test_target_probability_is_exp_mean_logprob_on_a_two_token_target(tiny):
    target = "London town"
    assert len(tiny.continuation_ids(target)) >= 2
    s = score_targets(tiny, ["Big Ben is in"], [target])
    assert s.mean_logprob[0] == pytest.approx(s.total_logprob[0] / len(tiny.continuation_ids(target)))
    assert target_probability(s.mean_logprob[0]) == pytest.approx(math.exp(s.mean_logprob[0]))
    assert target_probability(s.mean_logprob[0]) > math.exp(s.total_logprob[0])  # not the product


# -- other helpers ---------------------------------------------------------------------------------

def test_tfidf_similarity_and_ci():
    assert tfidf_similarity(["paris is in france"], ["paris is in france"]) == pytest.approx(1.0)
    assert tfidf_similarity(["paris france"], ["tokyo japan"]) == 0.0
    m, lo, hi = mean_ci([0.0, 1.0, 1.0, 1.0])
    # a proportion gets the Wilson interval (hand-computed, z = 1.96): never zero-width, never outside [0, 1]
    assert m == 0.75 and (lo, hi) == pytest.approx((0.30064, 0.95441), abs=1e-4)
    assert mean_ci([1.0] * 20)[1:] == pytest.approx((0.83887, 1.0), abs=1e-4)  # the normal approximation: [1, 1]
    assert mean_ci([0.0] * 5)[1] == 0.0 and mean_ci([0.0] * 5)[2] > 0.4
    # not a proportion: a seeded BCa bootstrap, inside the data's range, the same on every call
    x = [0.5, 1.0, 0.0, 1.0, 0.5, 0.5, 1.0, 0.25]
    m, lo, hi = mean_ci(x)
    assert 0.0 <= lo < m < hi <= 1.0 and mean_ci(x) == (m, lo, hi)
    assert np.isnan(mean_ci([0.3])[1]) and mean_ci([0.3, 0.3])[1:] == (0.3, 0.3)


def test_score_targets_equals_full_forward(tiny):
    prompts = ["The Eiffel Tower is located in the city of", "Big Ben is in"]
    targets = ["Paris", "London town"]
    s = score_targets(tiny, prompts, targets, batch_size=1)
    s2 = score_targets(tiny, prompts, targets, batch_size=8)  # padding must not change anything
    np.testing.assert_allclose(s.total_logprob, s2.total_logprob, rtol=1e-5)
    np.testing.assert_array_equal(s.token_accuracy, s2.token_accuracy)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        base, cont = tiny.encode(p), tiny.continuation_ids(t)
        ids = torch.cat([base, torch.tensor(cont)])[None]
        with torch.no_grad():
            lp = tiny.hf(ids).logits[0].log_softmax(-1)
        expect = [float(lp[len(base) - 1 + j, c]) for j, c in enumerate(cont)]
        hits = [int(lp[len(base) - 1 + j].argmax()) == c for j, c in enumerate(cont)]
        assert s.total_logprob[i] == pytest.approx(sum(expect), rel=1e-4)
        assert s.mean_logprob[i] == pytest.approx(np.mean(expect), rel=1e-4)
        assert s.token_accuracy[i] == pytest.approx(np.mean(hits)) and s.top1[i] == all(hits)


def test_fact_scores_compare_the_two_targets(tiny):
    row = fact_scores(tiny, [FACT])[0]
    s = score_targets(tiny, [FACT.prompt, FACT.prompt], ["Rome", "Paris"])
    assert row["efficacy_success"] == float(s.mean_logprob[0] > s.mean_logprob[1])
    assert row["p_new"] == pytest.approx(math.exp(s.mean_logprob[0]), rel=1e-5)
    assert row["efficacy_magnitude"] == pytest.approx(row["p_new"] - row["p_true"], abs=1e-9)
    assert 0.0 <= row["paraphrase_success"] <= 1.0 and row["neighborhood_success"] in (0.0, 1.0)
    assert not any(k.endswith("_score") for k in row)


def test_eval_config_generation_length():
    assert EvalConfig().generation_protocol == "rome" and EvalConfig().new_tokens(10) == 90
    assert EvalConfig(gen_tokens=8).new_tokens(10) == 8 and EvalConfig(gen_tokens=8).generation_protocol != "rome"
    assert EvalConfig().new_tokens(150) == 1
    with pytest.raises(LensMemoryError):
        EvalConfig(gen_tokens=0)


def test_evaluate_edits_before_after_and_round_trip(tiny, tmp_path):
    from lens_memory.corpus import load_corpus

    st = key_statistics(tiny, 1, StatsConfig(n_tokens=600, seq_len=32), corpus=load_corpus(["The tower is tall."] * 50),
                        use_cache=False)[1]
    edit = rome(tiny, FACT, RomeConfig(layer=1, context_lengths=((3, 2),), v_steps=4), stats=st)
    ev = evaluate_edits(tiny, [FACT], [edit], per_fact=True, config=EvalConfig(fluency_facts=1, gen_tokens=8),
                        provenance={"method": "rome", "layers": [1]})
    with edit.apply(tiny):
        post = fact_scores(tiny, [FACT])[0]
    pre = fact_scores(tiny, [FACT])[0]
    r = ev.rows[0]
    assert r["post_p_new"] == pytest.approx(post["p_new"]) and r["pre_p_new"] == pytest.approx(pre["p_new"])
    s = ev.summary()
    assert s["post"]["efficacy_success"] == post["efficacy_success"] and "fluency_ngram_entropy" in s["post"]
    assert s["post"]["score_s"] == pytest.approx(score_s(*(s["post"][f"{k}_success"]
                                                         for k in ("efficacy", "paraphrase", "neighborhood"))),
                                                 nan_ok=True)
    assert s["post"]["efficacy_success_n"] == 1 and s["generation_protocol"] != "rome"
    assert r["pre_generation"].startswith(FACT.prompt)  # ROME scores prompt + generation
    assert r["pre_consistency_model_text_tfidf"] is not None and not tiny.applied_edits
    assert not any("consistency_pre" == k or k.endswith("_score") for k in list(r) + list(s))
    ev.save(tmp_path / "ev")
    back = EditEvaluation.load(tmp_path / "ev")
    assert len(back.rows) == 1 and back.summary()["post"]["efficacy_success"] == s["post"]["efficacy_success"]
    assert back.provenance["method"] == "rome" and back.generation == ev.generation
    fig = ev.plot()
    assert len(fig.axes[0].patches) == 6
    with pytest.raises(LensMemoryError, match="one artifact per fact"):
        evaluate_edits(tiny, [FACT, FACT], [edit], per_fact=True)


def test_evaluate_edits_rome_length_counts_the_prompt(tiny, monkeypatch):
    import lens_memory.harness.knowledge as ev_mod

    calls = []
    real = ev_mod.generate

    def spy(lm, prompts, **kw):
        calls.append((list(prompts), kw["max_new_tokens"], kw["top_k"]))
        return real(lm, prompts, **kw)

    monkeypatch.setattr(ev_mod, "generate", spy)
    cfg = EvalConfig(fluency_facts=1, max_out_len=20, consistency_model_text_tfidf=False)
    ev = evaluate_edits(tiny, [FACT], None, config=cfg)
    for prompts, n, k in calls:
        assert k == 5 and all(len(tiny.encode(p)) + n == 20 for p in prompts)
    assert ev.generation["max_out_len"] == 20 and ev.generation["gen_tokens"] is None
