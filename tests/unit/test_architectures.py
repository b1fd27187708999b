"""Architecture probes: the partial-forward engine and everything built on it equal each model's own
Hugging Face forward -- including a sliding-window Mistral without ``layer_types`` (window 4, applied on
every layer, as Mistral v0.1 / Phi-3-mini-4k) and OLMo 2 (post-norms only)."""

import pytest
import torch

from lens_memory.facts import Fact, check_knowledge
from lens_memory.memory.evaluate import exactness_check
from lens_memory.stack import attention_layer_types
from lens_memory.tiny import tiny_arch_model
from lens_memory.trace import TraceConfig, prepare_fact
from lens_memory.trace.fast import fast_scores
from lens_memory.trace.reference import reference_scores

ARCHS = ("mistral", "olmo2", "llama", "gemma3")
FACT = Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris", case_id=0)
REF = "The Eiffel Tower is located in the city of Rome. It was built long ago."
QUERY = "Where is the Eiffel Tower? It is in"


@pytest.fixture(scope="module", params=ARCHS)
def lm(request, tiny):
    return tiny if request.param == "gemma3" else tiny_arch_model(request.param)


def _ids(lm, n=14):
    ids = lm.encode(REF)[:n]
    assert len(ids) == n and n > 4  # longer than the tiny Mistral's window
    return ids[None]


def test_mistral_without_layer_types_slides_on_every_layer():
    lm = tiny_arch_model("mistral")
    assert getattr(lm.hf.config, "layer_types", None) in (None, [])
    assert lm.stack.layer_types == ["sliding_attention"] * lm.n_layers
    assert attention_layer_types(tiny_arch_model("llama").hf.config) == ["full_attention"] * 3


@torch.no_grad()
def test_partial_forward_equals_the_hf_forward(lm):
    ids = _ids(lm)
    hf = lm.hf(input_ids=ids).logits[0]
    st = lm.stack
    assert (st.logits(st.run(st.embed(ids)))[0] - hf).abs().max() <= 1e-5
    # positions 6.. recomputed with the keys/values of 0..5 as a prefix, from layer 1 on
    h1 = st.run(st.embed(ids), 0, 1)
    prefix = {j: (k[:, :, :6], v[:, :, :6]) for j, (k, v) in _all_kv(st, ids).items()}
    tail = st.run(h1[:, 6:], 1, None, pos0=6, prefix=prefix)
    assert (st.logits(tail)[0] - hf[6:]).abs().max() <= 1e-5


def _all_kv(st, ids):
    rec: dict = {}
    st.run(st.embed(ids), record=rec)
    return rec


def test_fast_tracing_equals_the_reference_engine(lm):
    prep = prepare_fact(lm, FACT, TraceConfig(n_samples=2, noise=1.0), 1.0)
    assert prep.n_tokens > 4
    kinds = ("hidden", "mlp", "attn")
    cfg = TraceConfig(kinds=kinds, n_samples=2, noise=1.0, window=2)
    fs, fh, fl = fast_scores(lm, prep, cfg, kinds)
    rs, rh, rl = reference_scores(lm, prep, cfg, kinds)
    assert abs(fh - rh) < 1e-5 and abs(fl - rl) < 1e-5
    for k in kinds:
        assert torch.allclose(fs[k], rs[k], atol=1e-5), k


@torch.no_grad()
def test_check_knowledge_matches_the_hf_argmax(lm):
    facts = [FACT, Fact(subject="Big Ben clock tower in the old town", template="The {} is located in the city of",
                        target_true="London", case_id=1)]
    k = check_knowledge(lm, facts)
    for f, top in zip(facts, k.top1):
        hf_top = int(lm.hf(input_ids=lm.encode(f.prompt)[None]).logits[0, -1].argmax())
        assert top == lm.decode(hf_top)


def test_dense_memory_equals_its_text_prefix_under_the_hf_forward(lm):
    assert exactness_check(lm, REF, QUERY) <= 1e-4
