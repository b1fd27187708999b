"""Published metric names: ``lens-memory edit`` writes ROME / MEMIT / EasyEdit metrics under their own names."""

import json
import math

import pytest

#: post-edit means the edit command must write (with ``_ci95`` intervals)
REQUIRED = ("efficacy_success", "paraphrase_success", "neighborhood_success", "efficacy_accuracy",
            "paraphrase_accuracy", "neighborhood_accuracy", "efficacy_magnitude", "paraphrase_magnitude",
            "neighborhood_magnitude", "fluency_ngram_entropy")


@pytest.fixture()
def any_facts(monkeypatch):
    """The tiny model knows no facts: let the edit command take the first facts with a new target,
    and edit them with few optimisation steps (only the evaluation is under test)."""
    import dataclasses

    import lens_memory.facts as facts_mod
    from lens_memory.edit import RomeConfig

    monkeypatch.setattr(facts_mod, "sample_known_facts",
                        lambda lm, facts, n: [f for f in facts_mod.spread_facts(facts) if f.target_new][:n])
    full = RomeConfig.for_model
    monkeypatch.setattr(RomeConfig, "for_model", classmethod(
        lambda cls, lm, **kw: dataclasses.replace(full(lm, **kw), v_steps=4, context_lengths=((3, 2),))))


def test_edit_cli_writes_the_published_metrics(tmp_path, any_facts):
    from lens_memory.cli import main
    from lens_memory.metrics import score_s

    out = tmp_path / "edit"
    assert main(["edit", "--model", "tiny", "--limit", "2", "--layer", "1", "--stats-tokens", "600",
                 "--corpus", "offline", "--fluency-facts", "1", "--gen-tokens", "4", "--no-retrace",
                 "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    for key in REQUIRED:
        assert key in s and key in s["pre"], key
        lo, hi = s[key + "_ci95"]
        if s[key + "_n"] == 1 and lo is None:  # one non-binary value: a bootstrap has no interval (NaN, saved as null)
            continue
        assert lo <= s[key] <= hi, key
    for key in REQUIRED[:9]:
        assert s[key + "_n"] == 2, key
    assert s["n"] == 2 and s["n_generation_facts"] == 1 and s["fluency_ngram_entropy_n"] == 1
    assert s["score_s"] == pytest.approx(score_s(s["efficacy_success"], s["paraphrase_success"],
                                                 s["neighborhood_success"]), nan_ok=True)
    assert 0.0 <= s["score_s"] <= 1.0 or math.isnan(s["score_s"])
    assert s["gen_tokens"] == 4 and s["max_out_len"] == 100 and s["generation_protocol"] != "rome"
    assert s["fluency_tokenizer"].startswith("nltk")
    # never the old names, nor a published name for a number it does not compute
    flat = set(s) | set(s["pre"])
    assert not {k for k in flat if k.endswith("_score") or k in ("consistency", "consistency_pre", "consistency_post",
                                                                  "fluency_pre", "fluency_post", "ci95")}
    row = json.loads((out / "evaluation" / "evaluation.json").read_text())["rows"][0]
    assert "post_efficacy_success" in row and "post_fluency_ngram_entropy" in row
    assert "post_consistency_model_text_tfidf" in row and not any(k.endswith("_score") for k in row)


def test_edit_cli_defaults_to_rome_generation_length():
    from lens_memory.cli import build_parser

    args = build_parser().parse_args(["edit", "--out", "x"])
    assert args.gen_tokens is None  # EvalConfig: 100 tokens in all, prompt included
