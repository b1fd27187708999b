"""Editing the embedded Gemma 3 270M: one ROME edit, and the ``edit`` command end to end."""

import json

import pytest

from lens_memory.edit import rome
from lens_memory.facts import Fact

pytestmark = pytest.mark.integration

EIFFEL = Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris",
              target_new="Rome")
NEIGHBOURS = {"The Louvre is located in the city of": " Paris", "The Tower of London is located in the city of": " London",
              "The Brandenburg Gate is located in the city of": " Berlin",
              "The Acropolis is located in the city of": " Athens",
              "The Sagrada Familia is located in the city of": " Barcelona"}


def _top1(lm, prompt):
    return lm.decode(int(lm.next_token_probs(prompt).argmax()))


def test_rome_moves_the_eiffel_tower_to_rome_and_restores(gemma):
    before = {p: _top1(gemma, p) for p in NEIGHBOURS}
    assert before == NEIGHBOURS  # the model knows the neighbours
    w_hash = gemma.weights_hash()
    edit = rome(gemma, EIFFEL)  # the model's defaults: layer 5, C from 16k tokens sampled from the model
    assert edit.layers == [5] and edit.config["stats"]["corpus"].startswith("samples")
    with edit.apply(gemma):
        assert _top1(gemma, EIFFEL.prompt) == " Rome"
        assert _top1(gemma, "The Eiffel Tower can be found in the city of") == " Rome"  # a paraphrase
        kept = sum(_top1(gemma, p) == a for p, a in NEIGHBOURS.items())
    assert kept >= 4, f"only {kept}/5 neighbourhood prompts kept their answer"
    assert gemma.weights_hash() == w_hash and not gemma.applied_edits


def test_edit_command_writes_summary(gemma, tmp_path):
    from lens_memory.cli import main

    out = tmp_path / "edit"
    rc = main(["edit", "--method", "memit", "--limit", "4", "--layers", "3,4,5,6,7",
               "--fluency-facts", "1", "--gen-tokens", "12", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("method", "n_edits", "layers", "efficacy_success", "paraphrase_success", "neighborhood_success",
                "efficacy_accuracy", "efficacy_magnitude", "fluency_ngram_entropy", "score_s", "efficacy_success_ci95",
                "seconds_per_edit", "stats_seconds"):
        assert key in s, key
    assert s["method"] == "memit" and s["n_edits"] == 4 and len(s["layers"]) == 5
    assert set(s["pre"]) >= {"efficacy_success", "paraphrase_success", "neighborhood_success", "fluency_ngram_entropy"}
    assert s["pre"]["efficacy_success"] == 0.0  # known facts: the true answer wins before the edit
    assert s["efficacy_success"] >= 0.75
    assert s["retrace"]["target"] and 0 <= s["retrace"]["peak_mlp_layer"] < 18
    for name in ("edit_scores", "retrace_mlp", "retrace_hidden"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    assert (out / "edits" / "000" / "edit.json").exists()
