"""CounterFact-style metrics and the edit evaluation harness on the tiny model."""

import math

import numpy as np
import pytest
import torch

from lens_memory.edit import EditEvaluation, EvalConfig, RomeConfig, StatsConfig, evaluate_edits, key_statistics, rome
from lens_memory.errors import LensMemoryError
from lens_memory.facts import Fact
from lens_memory.metrics import fact_scores, mean_ci, ngram_entropy, score_targets, tfidf_similarity

FACT = Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris",
            target_new="Rome", paraphrases=("The Eiffel Tower stands in", "Eiffel Tower, a landmark of"),
            neighborhood=("The Louvre is located in the city of",), attribute_prompts=("The Colosseum is in",))


def test_ngram_entropy_matches_hand_computation():
    # bigrams (a,b) x2, (b,a) x1 ; trigrams (a,b,a), (b,a,b)
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("x x x x x x") == 0.0


def test_tfidf_similarity_and_ci():
    assert tfidf_similarity(["paris is in france"], ["paris is in france"]) == pytest.approx(1.0)
    assert tfidf_similarity(["paris france"], ["tokyo japan"]) == 0.0
    m, lo, hi = mean_ci([0.0, 1.0, 1.0, 1.0])
    assert m == 0.75 and lo < m < hi
    assert mean_ci([1.0])[1:] == (1.0, 1.0)


def test_score_targets_equals_full_forward(tiny):
    prompts = ["The Eiffel Tower is located in the city of", "Big Ben is in"]
    targets = ["Paris", "London town"]
    s = score_targets(tiny, prompts, targets, batch_size=1)
    s2 = score_targets(tiny, prompts, targets, batch_size=8)  # padding must not change anything
    np.testing.assert_allclose(s.total_logprob, s2.total_logprob, rtol=1e-5)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        base, cont = tiny.encode(p), tiny.continuation_ids(t)
        ids = torch.cat([base, torch.tensor(cont)])[None]
        with torch.no_grad():
            lp = tiny.hf(ids).logits[0].log_softmax(-1)
        expect = [float(lp[len(base) - 1 + j, c]) for j, c in enumerate(cont)]
        assert s.total_logprob[i] == pytest.approx(sum(expect), rel=1e-4)
        assert s.mean_logprob[i] == pytest.approx(np.mean(expect), rel=1e-4)


def test_fact_scores_compare_the_two_targets(tiny):
    row = fact_scores(tiny, [FACT])[0]
    s = score_targets(tiny, [FACT.prompt, FACT.prompt], ["Rome", "Paris"])
    assert row["efficacy_score"] == float(s.mean_logprob[0] > s.mean_logprob[1])
    assert row["p_new"] == pytest.approx(math.exp(s.total_logprob[0]), rel=1e-5)
    assert row["efficacy_magnitude"] == pytest.approx(row["p_new"] - row["p_true"], abs=1e-9)
    assert 0.0 <= row["paraphrase_score"] <= 1.0 and row["neighborhood_score"] in (0.0, 1.0)


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
    assert s["post"]["efficacy_score"] == post["efficacy_score"] and "fluency_post" in s
    assert r["pre_consistency"] is not None and not tiny.applied_edits
    ev.save(tmp_path / "ev")
    back = EditEvaluation.load(tmp_path / "ev")
    assert len(back.rows) == 1 and back.summary()["post"]["efficacy_score"] == s["post"]["efficacy_score"]
    assert back.provenance["method"] == "rome" and back.generation == ev.generation
    fig = ev.plot()
    assert len(fig.axes[0].patches) == 6
    with pytest.raises(LensMemoryError, match="one artifact per fact"):
        evaluate_edits(tiny, [FACT, FACT], [edit], per_fact=True)
