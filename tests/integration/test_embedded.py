"""Integration tests on the embedded Gemma 3 270M (converted once into the user cache, loaded once)."""

import json

import pytest

from lens_memory.facts import builtin_facts, check_knowledge

pytestmark = pytest.mark.integration


def test_loads_offline_and_knows_paris(gemma):
    assert gemma.identity.quantization == "Q4_K_M" and gemma.n_layers == 18
    probs = gemma.next_token_probs("The Eiffel Tower is located in the city of")
    paris = gemma.continuation_ids("Paris")[0]
    assert int(probs.argmax()) == paris and probs[paris] > 0.5


def test_knows_most_builtin_facts(gemma):
    k = check_knowledge(gemma, builtin_facts())
    assert k.fraction_known >= 0.6, f"knows {k.n_known}/{len(k.facts)}"


def test_one_fact_traces_end_to_end(gemma, tmp_path):
    from lens_memory.cli import main

    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps([{"known_id": 0, "subject": "Eiffel Tower", "attribute": "Paris",
                                  "template": "The {} is located in the city of",
                                  "prompt": "The Eiffel Tower is located in the city of", "relation_id": "P131"}]))
    out = tmp_path / "out"
    assert main(["trace", "--facts", str(facts), "--kinds", "hidden,mlp", "--samples", "3", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_facts"] == 1 and summary["n_known"] == 1
    assert 0 <= summary["suggested_layer"] < 18 and len(summary["suggested_layers"]) == 5
    assert summary["peak_aie"]["hidden"]["value"] > 0.1
    for ext in ("png", "pdf"):
        assert (out / "figures" / f"aie.{ext}").stat().st_size > 1000
        assert (out / "figures" / f"fact000_mlp.{ext}").stat().st_size > 1000
