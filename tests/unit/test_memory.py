"""KV memories on the tiny random model: prefix exactness, sparse = dense at full k, exact detach, attention masses."""

import json

import pytest
import torch

from lens_memory.errors import ArtifactMismatchError, InputTooLongError, LensMemoryError
from lens_memory.harness import measure_cost
from lens_memory.memory import EmptyReferenceError, MemoryBank, MemoryConfig, encode_memory
from lens_memory.memory.attention import attention_profile, compare_attention
from lens_memory.memory.evaluate import exactness_check
from lens_memory.rag import ContextArtifact

REF = "The Eiffel Tower is located in the city of Rome. It was built long ago."  # longer than the window (4)
REF2 = "Big Ben is located in the city of Paris."
QUERY = "Where is the Eiffel Tower? It is in"


def _logits(lm, ids):
    with torch.no_grad():
        return lm.hf(ids[None]).logits[0]


def _text_prefix_logits(lm, ref, query):
    r, q = lm.encode(ref), lm.encode(query)
    return _logits(lm, torch.cat([r, q[1:]]))[len(r):]


def test_dense_memory_reproduces_the_text_prefix(tiny):
    bank = encode_memory(tiny, [REF])
    q = tiny.encode(QUERY)
    ref = _text_prefix_logits(tiny, REF, QUERY)
    with bank.apply(tiny):
        mem = _logits(tiny, q)[1:]
    assert (mem - ref).abs().max() <= 1e-4
    assert (mem - _logits(tiny, q)[1:]).abs().max() > 0.1  # the memory matters
    assert exactness_check(tiny, REF, QUERY) <= 1e-4


def test_dense_memory_and_rag_read_the_same_tokens_only_without_the_separator(tiny):
    """The comparisons' fairness: the RAG document and the memory hold the same text. With no separator
    RAG reads exactly the memory's token sequence (BOS + reference + query) and gives its logits, as the
    exactness check says; the default template adds the separator tokens, and the logits differ."""
    from lens_memory.facts import Fact
    from lens_memory.rag import fact_documents

    fact = Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris",
                target_new="Rome", case_id=7)
    (doc_id, doc), = fact_documents([fact])
    bank = encode_memory(tiny, [(doc_id, doc)])
    assert bank.references[0]["text"] == doc and bank.references[0]["n_tokens"] == len(tiny.encode(doc))
    r, q = tiny.encode(doc), tiny.encode(fact.prompt)
    memory_ids = torch.cat([r, q[1:]])
    with bank.apply(tiny):
        mem = _logits(tiny, q)[1:]
    plain = ContextArtifact([doc], template="{context}{query}", ids=[doc_id])
    with plain.apply(tiny):
        ids = tiny.encode(fact.prompt)
    assert ids.tolist() == memory_ids.tolist()
    assert (_logits(tiny, ids)[len(r):] - mem).abs().max() <= 1e-4
    assert exactness_check(tiny, doc, fact.prompt) == pytest.approx(float((_logits(tiny, ids)[len(r):].double()
                                                                           - mem.double()).abs().max()), abs=1e-6)
    sep = tiny.tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    with ContextArtifact([doc]).apply(tiny):
        rag_ids = tiny.encode(fact.prompt)
    assert rag_ids.tolist() == r.tolist() + sep + q[1:].tolist()
    assert (_logits(tiny, rag_ids)[-1] - mem[-1]).abs().max() > 1e-3


def test_memory_exact_through_the_stack_and_cached_generation(tiny):
    bank = encode_memory(tiny, [REF])
    q = tiny.encode(QUERY)
    st = tiny.stack
    text = _text_prefix_logits(tiny, REF, QUERY)
    with torch.no_grad(), bank.apply(tiny):
        mem = st.logits(st.run(st.embed(q[None])))[0, 1:]
        gen = tiny.hf.generate(q[None], max_new_tokens=6, do_sample=False, pad_token_id=0)[0, len(q):]
    assert (mem - text).abs().max() <= 1e-4
    full = torch.cat([tiny.encode(REF), q[1:]])
    ref_gen = tiny.hf.generate(full[None], max_new_tokens=6, do_sample=False, pad_token_id=0)[0, len(full):]
    assert gen.tolist() == ref_gen.tolist()


def test_memory_in_a_left_padded_batch_matches_single_queries(tiny):
    from lens_memory.generation import left_pad

    bank = encode_memory(tiny, [REF])
    prompts = [QUERY, "The Eiffel Tower is in"]
    ids, mask = left_pad(tiny, prompts)
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad(), bank.apply(tiny):
        batch = tiny.hf(ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        singles = [_logits(tiny, tiny.encode(p))[-1] for p in prompts]
    for b, s in zip(batch, singles):
        assert (b - s).abs().max() <= 1e-4


def test_detach_restores_outputs_bit_exactly_even_after_an_exception(tiny):
    q = tiny.encode(QUERY)
    before = _logits(tiny, q)
    bank = encode_memory(tiny, [REF, REF2], MemoryConfig(top_k=3))
    with pytest.raises(RuntimeError):
        with bank.apply(tiny):
            assert not torch.equal(_logits(tiny, q), before)
            raise RuntimeError("boom")
    assert torch.equal(_logits(tiny, q), before)
    h = bank.apply(tiny)
    h.remove()
    h.remove()  # idempotent
    assert torch.equal(_logits(tiny, q), before)


def test_sparse_memory_keeping_every_token_equals_dense(tiny):
    dense = encode_memory(tiny, [REF, REF2])
    full = dense.sparsify(10_000)
    assert full.n_tokens() == dense.n_tokens()
    q = tiny.encode(QUERY)
    with dense.apply(tiny):
        a = _logits(tiny, q)
    with full.apply(tiny):
        b = _logits(tiny, q)
    assert torch.equal(a, b)


def test_sparsification_keeps_the_most_attended_tokens(tiny):
    from lens_memory.hooks import capture

    bank = encode_memory(tiny, [REF], MemoryConfig(layers=(1,)))
    ids = tiny.encode(REF)
    pat = capture(tiny, ids[None], ["blocks.1.attn.hook_pattern"])["blocks.1.attn.hook_pattern"][0].double()
    n_kv = bank.keys[1].shape[0]
    n = len(ids)
    received = pat.sum(1).reshape(n_kv, -1, n).sum(1) / torch.arange(n, 0, -1)
    assert torch.allclose(bank.importance[1].double(), received, atol=1e-5)
    k = 3
    sp = bank.sparsify(k)
    for h in range(n_kv):
        kept = sp.enc_pos[1][h].tolist()
        assert kept[0] == 0 and len(kept) == 1 + k  # BOS always kept
        expect = sorted(torch.argsort(received[h, 1:], descending=True, stable=True)[:k].add(1).tolist())
        assert kept[1:] == expect


def test_only_the_chosen_layers_carry_memory(tiny):
    from lens_memory.hooks import capture

    q = tiny.encode(QUERY)[None]
    names = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    base = capture(tiny, q, names)
    bank = encode_memory(tiny, [REF], MemoryConfig(layers=(2,)))
    assert bank.layers == [2]
    with bank.apply(tiny):
        mem = capture(tiny, q, names)
    assert torch.equal(mem[names[0]], base[names[0]])
    assert not torch.allclose(mem[names[1]], base[names[1]])
    half = MemoryConfig(layers="first_half").resolve_layers(tiny)
    assert half == list(range(tiny.n_layers // 2))


def test_positions_stacked_and_parallel(tiny):
    one = encode_memory(tiny, [REF], MemoryConfig(position="parallel"))
    q = tiny.encode(QUERY)
    text = _text_prefix_logits(tiny, REF, QUERY)
    with one.apply(tiny):  # one reference: parallel is the same layout as stacked
        assert (_logits(tiny, q)[1:] - text).abs().max() <= 1e-4
    n1, n2 = len(tiny.encode(REF)), len(tiny.encode(REF2))
    st = encode_memory(tiny, [REF, REF2])
    par = encode_memory(tiny, [REF, REF2], MemoryConfig(position="parallel"))
    assert st.n_positions() == n1 + n2 - 1 and par.n_positions() == max(n1, n2)
    assert st.target_positions()[0][0].tolist() == list(range(n1 + n2 - 1))


def test_subset_equals_encoding_alone_and_save_load_round_trip(tiny, tmp_path):
    both = encode_memory(tiny, [("a", REF), ("b", REF2)])
    alone = encode_memory(tiny, [("b", REF2)])
    sub = both.subset(["b"])
    for l in alone.layers:
        assert torch.equal(sub.keys[l], alone.keys[l]) and torch.equal(sub.values[l], alone.values[l])
        assert torch.equal(sub.enc_pos[l], alone.enc_pos[l])
    both.save(tmp_path / "m")
    back = MemoryBank.load(tmp_path / "m")
    assert back.ids == ["a", "b"] and back.config == both.config
    for l in both.layers:
        assert torch.equal(back.keys[l], both.keys[l]) and torch.equal(back.importance[l], both.importance[l])
    meta = json.loads((tmp_path / "m" / "memory.json").read_text())
    assert meta["nbytes"] == both.nbytes() == sum(both.keys[l].nbytes * 2 for l in both.layers)
    with pytest.raises(LensMemoryError, match="'zzz'"):
        both.subset(["zzz"])


def test_bad_input_is_refused_with_the_value_named(tiny, tmp_path):
    from lens_memory.tiny import tiny_model

    with pytest.raises(EmptyReferenceError, match="'ref-1'"):
        encode_memory(tiny, [REF, "   "])
    with pytest.raises(EmptyReferenceError):
        encode_memory(tiny, [])
    with pytest.raises(LensMemoryError, match="top_k"):
        MemoryConfig(top_k=0)
    with pytest.raises(LensMemoryError, match="'middle'"):
        MemoryConfig(layers="middle")
    with pytest.raises(LensMemoryError, match="position"):
        MemoryConfig(position="nowhere")
    bank = encode_memory(tiny, [REF])
    other = tiny_model(seed=1)  # same architecture and tokenizer, other weights
    with pytest.raises(ArtifactMismatchError, match="weights"):
        bank.apply(other)
    bank.tokenizer = "0" * 64  # a memory made with another tokenizer
    with pytest.raises(ArtifactMismatchError, match="tokenizer"):
        bank.apply(tiny)
    long = encode_memory(tiny, [REF] * 12)  # stacked: longer than the tiny context (256)
    assert long.n_positions() >= tiny.n_ctx
    with pytest.raises(InputTooLongError, match="context"):
        long.apply(tiny)
    ok = encode_memory(tiny, [REF])
    with ok.apply(tiny), pytest.raises(LensMemoryError, match="BOS"):
        tiny.hf(tiny.encode(QUERY)[1:][None])
    (tmp_path / "bad").mkdir()
    with pytest.raises(ArtifactMismatchError, match="memory.json"):
        MemoryBank.load(tmp_path / "bad")


def test_attention_masses_partition_and_match_the_text_prefix(tiny):
    dense = encode_memory(tiny, [REF])
    for cond, kw in (("none", {}), ("rag", {"reference": REF}), ("dense", {"memory": dense}),
                     ("sparse", {"memory": dense.sparsify(2)})):
        p = attention_profile(tiny, QUERY, cond, **kw)
        total = p.reference + p.sink + p.query
        assert abs(total - 1).max() < 1e-6, cond
        if cond == "none":
            assert (p.reference == 0).all()
        else:
            assert p.reference.mean() > 0.01
    # the memory's pattern over [BOS, reference, query] is the text prefix's pattern
    from lens_memory.hooks import capture

    r, q = tiny.encode(REF), tiny.encode(QUERY)
    text = capture(tiny, torch.cat([r, q[1:]])[None], ["blocks.3.attn.hook_pattern"])["blocks.3.attn.hook_pattern"][0]
    with dense.apply(tiny):
        mem = capture(tiny, q[None], ["blocks.3.attn.hook_pattern"])["blocks.3.attn.hook_pattern"][0]
    M = mem.shape[-1] - len(q)
    assert M == len(r)
    rows_text = text[:, len(r):, :]
    rows_mem = torch.cat([mem[:, 1:, :M], mem[:, 1:, M + 1:]], dim=-1)
    assert torch.allclose(rows_mem, rows_text, atol=1e-5)
    assert mem[:, 1:, M].abs().max() == 0  # the query's own BOS column is replaced by the memory's


def test_compare_attention_result_round_trip(tiny, tmp_path):
    dense = [encode_memory(tiny, [REF]), encode_memory(tiny, [REF2])]
    cmp = compare_attention(tiny, [QUERY, "Big Ben is in"], [REF, REF2], {"dense": dense})
    assert cmp.conditions == ["none", "rag", "dense"]
    assert cmp.values["js_vs_none"][0].max() == 0 and cmp.values["js_vs_none"][1].mean() > 0
    df = cmp.to_dataframe()
    assert len(df) == 3 * tiny.n_layers * tiny.hf.config.num_attention_heads
    cmp.save(tmp_path / "a")
    back = type(cmp).load(tmp_path / "a")
    assert back.conditions == cmp.conditions
    assert all((back.values[m] == cmp.values[m]).all() for m in cmp.values)
    with pytest.raises(LensMemoryError, match="one reference per query"):
        compare_attention(tiny, [QUERY], [], {})


def test_context_artifact_prepends_documents_and_restores_encode(tiny):
    before = tiny.encode(QUERY)
    n_ref = len(tiny.encode(REF))
    ctx = ContextArtifact([REF])
    with ctx.apply(tiny):
        ids = tiny.encode(QUERY)
        expect = [tiny.tokenizer.bos_token_id] + tiny.tokenizer(ctx.prompt(QUERY), add_special_tokens=False)["input_ids"]
        assert ids.tolist() == expect and len(ids) > len(before)
        prompt = "The Eiffel Tower is in"
        s0, s1 = tiny.subject_range(prompt, "Eiffel Tower")  # offsets stay relative to the prompt
        assert tiny.decode(tiny.encode(prompt)[s0:s1].tolist()).strip() == "Eiffel Tower"
        assert s0 > n_ref  # the subject sits after the document
    assert torch.equal(tiny.encode(QUERY), before)
    assert "_encode_with_offsets" not in vars(tiny)


def test_measure_cost_reports_each_quantity(tiny):
    bank = encode_memory(tiny, [REF])
    c = measure_cost(tiny, [QUERY], [bank], new_tokens=3)
    assert c["prefill_ms"] > 0 and c["decode_ms_per_token"] >= 0 and c["context_tokens"] == len(tiny.encode(QUERY))
    with pytest.raises(LensMemoryError, match="new_tokens"):
        measure_cost(tiny, [QUERY], new_tokens=1)


def test_memory_cli_on_the_tiny_model(tmp_path):
    from lens_memory.cli import main

    out = tmp_path / "mem"
    assert main(["memory", "--model", "tiny", "--limit", "4", "--out", str(out), "--include-unknown",
                 "--attention-facts", "2", "--cost-facts", "1", "--fluency-facts", "1", "--gen-tokens", "4"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["exactness_max_abs_diff"] <= 1e-4 and s["split"] == "test"
    for key in ("efficacy", "paraphrase", "neighborhood", "attention_mass_on_memory", "decode_ms_per_token"):
        assert set(s[key]) == {"none", "rag", "dense", "sparse"}, key
    assert set(s["memory_bytes"]) == {"dense", "sparse"} and s["memory_bytes"]["sparse"] < s["memory_bytes"]["dense"]
    assert s["rag_kv_bytes"] > 0 and 0 <= s["retrieval_recall@1"] <= s["retrieval_recall@5"] <= 1
    for fig in ("attention_reference_heatmap", "attention_by_layer", "knowledge", "cost"):
        assert (out / "figures" / f"{fig}.png").exists() and (out / "figures" / f"{fig}.pdf").exists()
    assert MemoryBank.load(out / "memory_sparse").config.top_k == 8


@pytest.mark.parametrize("split", ["test", "dev"])
def test_memory_cli_draws_facts_from_the_requested_split(tmp_path, monkeypatch, split):
    import lens_memory.workflows.memory as pipeline
    from lens_memory.cli import main
    from lens_memory.facts import fact_split

    seen = {}

    def fake_run_memory(lm, facts, out, **kw):
        seen.update(facts=list(facts), split=kw["split"])
        return {"n_facts": len(seen["facts"])}

    monkeypatch.setattr(pipeline, "run_memory", fake_run_memory)
    args = ["memory", "--model", "tiny", "--limit", "5", "--out", str(tmp_path), "--include-unknown"]
    assert main(args + (["--split", split] if split != "test" else [])) == 0
    assert seen["split"] == split and len(seen["facts"]) == 5
    assert {fact_split(f) for f in seen["facts"]} == {split}


def test_memory_layer_sweep_rows_and_round_trip(tiny, tmp_path):
    from lens_memory.facts import builtin_facts, spread_facts
    from lens_memory.memory import MemoryLayerSweep, memory_layer_sweep

    facts = [f for f in spread_facts(builtin_facts()) if f.target_new][:2]
    sw = memory_layer_sweep(tiny, facts, [(0, 1), "all"], top_ks=(None, 2))
    df = sw.to_dataframe()
    assert list(df["layers"]) == ["0-1", "0-1", "all", "all"] and list(df["top_k"].fillna(0)) == [0, 2, 0, 2]
    assert df["memory_bytes"].iloc[1] < df["memory_bytes"].iloc[0] < df["memory_bytes"].iloc[2]
    assert ((df[["efficacy", "paraphrase", "neighborhood"]] >= 0) & (df[["efficacy", "paraphrase", "neighborhood"]] <= 1)).all().all()
    sw.save(tmp_path)
    assert MemoryLayerSweep.load(tmp_path).rows == sw.rows


def test_a_second_memory_is_refused_while_one_is_attached(tiny):
    """Issue 16, defect 9: a bank applied twice was attached twice without a word (both claimed the positions
    after BOS). Now the second apply raises, and after removing the first another can be attached."""
    q = tiny.encode(QUERY)
    before = _logits(tiny, q)
    bank, other = encode_memory(tiny, [REF]), encode_memory(tiny, [REF2])
    with bank.apply(tiny):
        once = _logits(tiny, q)
        with pytest.raises(LensMemoryError, match="already attached"):
            bank.apply(tiny)
        with pytest.raises(LensMemoryError, match="already attached"):
            other.apply(tiny)
        with pytest.raises(LensMemoryError, match="encoded by the model without memory"):
            encode_memory(tiny, [REF2])
        assert torch.equal(_logits(tiny, q), once)
    assert torch.equal(_logits(tiny, q), before)
    with other.apply(tiny):
        assert not torch.equal(_logits(tiny, q), before)
