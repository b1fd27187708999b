"""The comparison harness and fact vectors on the tiny model."""

import json
import pytest
import torch

from lens_memory.compare import CompareConfig, Comparison, Mechanism, compare_mechanisms
from lens_memory.errors import LensMemoryError
from lens_memory.facts import builtin_facts, spread_facts
from lens_memory.harness import EvalConfig, artifact_nbytes, evaluate_edits, reversibility
from lens_memory.memory import encode_memory
from lens_memory.rag import ContextArtifact, fact_documents
from lens_memory.steer.fact_vector import FactVectorConfig, fact_vectors

CFG = CompareConfig(fluency_facts=1, gen_tokens=4, cost_facts=1, new_tokens=3, probes=("Hello there", "A B C"))


@pytest.fixture(scope="module")
def facts():
    return [f for f in spread_facts(builtin_facts()) if f.target_new][:2]


class _Leaky:
    """Changes a weight on apply and restores it only approximately (the bug the harness must catch)."""

    def __init__(self, lm):
        self.w = lm.hf.model.layers[0].mlp.down_proj.weight

    def apply(self, lm):
        import contextlib

        @contextlib.contextmanager
        def cm():
            with torch.no_grad():
                self.w.add_(0.5)
            try:
                yield
            finally:
                with torch.no_grad():
                    self.w.sub_(0.5 - 1e-3)  # off by 1e-3

        return cm()


def test_fact_vector_is_the_residual_change_the_reference_makes(tiny, facts):
    f, (_, ref) = facts[0], fact_documents(facts)[0]
    (vec,) = fact_vectors(tiny, [f], [ref], FactVectorConfig(layer=1))
    hook = "blocks.1.hook_resid_post"
    q = tiny.encode(f.prompt)
    full = torch.cat([tiny.encode(ref), q[1:]])
    _, c_full = tiny.bridge.run_with_cache(full[None], names_filter=[hook])
    _, c_q = tiny.bridge.run_with_cache(q[None], names_filter=[hook])
    expected = (c_full[hook][0, -1] - c_q[hook][0, -1]).double()
    assert torch.allclose(vec.vectors[1].double(), expected, atol=1e-4)
    # added at the prompt's last position, the layer-1 residual there becomes the with-reference one
    with vec.apply(tiny, positions="after_prompt"):
        _, c = tiny.bridge.run_with_cache(q[None], names_filter=[hook])
    assert torch.allclose(c[hook][0, -1], c_full[hook][0, -1], atol=1e-4)
    assert vec.default_positions == "all" and vec.nbytes() == tiny.d_model * 4


def test_harness_rows_match_evaluate_edits_and_reversibility_is_measured(tiny, facts):
    docs = fact_documents(facts)
    rag = [ContextArtifact([t], ids=[i]) for i, t in docs]
    bank = encode_memory(tiny, docs)
    kv = [bank.subset([i]) for i, _ in docs]
    vecs = fact_vectors(tiny, facts, [t for _, t in docs], FactVectorConfig(layer=1))
    mechs = [Mechanism("rag", rag), Mechanism("kv", kv, fit_seconds=2.0), Mechanism("vec", vecs)]
    cmp = compare_mechanisms(tiny, facts, mechs, CFG, progress=False)
    assert [r["mechanism"] for r in cmp.rows] == ["none", "rag", "kv", "vec"]
    ev = evaluate_edits(tiny, facts, kv, per_fact=True, config=EvalConfig(fluency_facts=0))
    s = ev.summary()
    assert cmp.row("kv")["efficacy"] == s["post"]["efficacy_success"]
    assert cmp.row("none")["neighborhood"] == s["pre"]["neighborhood_success"]
    for r in cmp.rows:
        assert r["reversible"] is True and r["max_abs_diff_after_exit"] == 0.0
    assert cmp.row("kv")["bytes_total"] == sum(k.nbytes() for k in kv) == 2 * cmp.row("kv")["bytes_per_fact"]
    assert cmp.row("kv")["fit_seconds_per_fact"] == 1.0
    assert cmp.row("rag")["context_tokens"] > cmp.row("none")["context_tokens"]
    assert cmp.row("vec")["probe_change_while_applied"] > 0  # a vector at every position leaks into probes


def test_a_non_restoring_artifact_is_reported_not_reversible(tiny):
    leaky = _Leaky(tiny)
    saved = leaky.w.detach().clone()
    try:
        rev = reversibility(tiny, leaky, ["Hello there"])
    finally:
        with torch.no_grad():
            leaky.w.copy_(saved)
    assert rev["bit_exact"] is False
    assert 0 < rev["max_abs_diff_after_exit"] < rev["max_abs_diff_after_exception"]  # two leaks accumulate
    assert rev["max_abs_change_while_applied"] > rev["max_abs_diff_after_exit"]


def test_comparison_round_trip_and_bad_input(tiny, facts, tmp_path):
    docs = fact_documents(facts)
    rag = [ContextArtifact([t]) for _, t in docs]
    cmp = compare_mechanisms(tiny, facts, [Mechanism("rag", rag)], CFG, progress=False)
    cmp.save(tmp_path)
    back = Comparison.load(tmp_path)
    assert back.rows == cmp.rows and list(back.to_dataframe().index) == ["none", "rag"]
    with pytest.raises(LensMemoryError, match="'rag' is per fact but has 1 artifacts for 2 facts"):
        compare_mechanisms(tiny, facts, [Mechanism("rag", rag[:1])], CFG)
    with pytest.raises(LensMemoryError, match="unique"):
        compare_mechanisms(tiny, facts, [Mechanism("rag", rag), Mechanism("rag", rag)], CFG)
    with pytest.raises(LensMemoryError, match="no artifacts"):
        Mechanism("empty", [])
    with pytest.raises(LensMemoryError, match="has no apply"):
        Mechanism("bad", [object()])
    assert artifact_nbytes(rag[0]) == len(docs[0][1].encode())


def test_reusing_the_baseline_gives_the_same_evaluation(tiny, facts):
    docs = fact_documents(facts)
    rag = [ContextArtifact([t]) for _, t in docs]
    cfg = EvalConfig(fluency_facts=1, gen_tokens=4, consistency_model_text_tfidf=True)
    first = evaluate_edits(tiny, facts, rag, per_fact=True, config=cfg)
    again = evaluate_edits(tiny, facts, rag, per_fact=True, config=cfg, baseline=first)
    fresh = evaluate_edits(tiny, facts, rag, per_fact=True, config=cfg)
    assert again.provenance["pre_reused"] and not fresh.provenance["pre_reused"]
    assert again.rows == fresh.rows
    # a one-value bootstrap has no interval (NaN != NaN): compare the summaries as their JSON text
    assert json.dumps(again.summary(), sort_keys=True) == json.dumps(fresh.summary(), sort_keys=True)
    other = evaluate_edits(tiny, facts[:1], rag[:1], per_fact=True, config=cfg, baseline=first)
    assert not other.provenance["pre_reused"]  # different facts: recomputed
