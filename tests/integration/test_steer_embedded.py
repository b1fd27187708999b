"""Steering the embedded Gemma 3 270M: CAA moves sentiment monotonically and is removed exactly."""

import json

import pytest
import torch

pytestmark = pytest.mark.integration


def test_caa_moves_sentiment_probability_monotonically(gemma):
    from lens_memory.steer import CAAConfig, behavior_probability, caa, load_behavior
    from lens_memory.steer.evaluate import is_monotonic

    b = load_behavior("sentiment")
    vec = caa(gemma, b, CAAConfig(layers=(10,)))
    prompts = b.eval_prompts[:20]
    ids = gemma.encode(prompts[0])[None]
    before = gemma.hf(input_ids=ids).logits.clone()
    probs = []
    for s in (-2.0, -1.0, 0.0, 1.0, 2.0):
        with vec.apply(gemma, s):
            probs.append(behavior_probability(gemma, b, prompts))
    assert is_monotonic(probs), probs
    assert probs[-1] - probs[0] > 0.3, probs
    assert torch.equal(before, gemma.hf(input_ids=ids).logits)


def test_steer_cli_writes_summary(gemma, tmp_path):
    from lens_memory.cli import main

    rc = main(["steer", "--method", "caa", "--behavior", "sentiment", "--out", str(tmp_path), "--n-prompts", "8",
               "--gen-tokens", "12", "--strengths=-2,2", "--no-baseline"])
    assert rc == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    for key in ("method", "layer", "behavior_score", "fluency", "target_prob", "kl_neutral"):
        assert key in s, key
    assert set(s["behavior_score"]) == {"-2.0", "0.0", "2.0"}
    assert s["behavior_score"]["2.0"] > s["behavior_score"]["-2.0"]
    assert (tmp_path / "figures" / "steering_tradeoff.pdf").exists()
