"""KV memories on the embedded Gemma 3 270M: the dense memory is the text prefix, and the memory is used."""

import json

import pytest
import torch

pytestmark = pytest.mark.integration

REF = "The Eiffel Tower is located in the city of Rome."
QUERY = "The Eiffel Tower is located in the city of"


def test_dense_memory_equals_text_prefix_on_gemma(gemma):
    from lens_memory.memory import exactness_check

    assert exactness_check(gemma, REF, QUERY) <= 1e-4
    assert exactness_check(gemma, "Paris is the capital of France. It lies on the Seine and has many museums.",
                           "The Eiffel Tower is in the city of") <= 1e-4


@torch.no_grad()
def test_memory_moves_the_answer_and_detaches_exactly(gemma):
    from lens_memory.memory import encode_memory

    ids = gemma.encode(QUERY)[None]
    rome, paris = gemma.continuation_ids("Rome")[0], gemma.continuation_ids("Paris")[0]
    before = gemma.hf(input_ids=ids).logits[0, -1]
    p0 = before.softmax(-1)
    dense = encode_memory(gemma, [REF])
    with dense.apply(gemma):
        p = gemma.hf(input_ids=ids).logits[0, -1].softmax(-1)
    assert p[rome] > p[paris], (float(p[rome]), float(p[paris]))  # the dense memory overrides the known answer
    with dense.sparsify(8).apply(gemma):
        p = gemma.hf(input_ids=ids).logits[0, -1].softmax(-1)
    # top-8 of the reference's 12 tokens: measured p(Rome) 0.30 vs p(Paris) 0.42 -- a large shift, not an override
    assert p[rome] > 10 * p0[rome] and p[paris] < p0[paris], (float(p0[rome]), float(p[rome]), float(p[paris]))
    assert torch.equal(before, gemma.hf(input_ids=ids).logits[0, -1])


def test_memory_cli_on_gemma(gemma, tmp_path):
    from lens_memory.cli import main

    out = tmp_path / "mem"
    assert main(["memory", "--limit", "6", "--out", str(out), "--attention-facts", "3", "--cost-facts", "2",
                 "--fluency-facts", "1", "--gen-tokens", "10", "--no-sweep"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["exactness_max_abs_diff"] <= 1e-4
    assert s["efficacy"]["dense"] > s["efficacy"]["none"]
    assert s["attention_mass_on_memory"]["none"] == 0 and s["attention_mass_on_memory"]["dense"] > 0.05
    assert s["memory_bytes"]["sparse"] < s["memory_bytes"]["dense"] <= s["rag_kv_bytes"]
