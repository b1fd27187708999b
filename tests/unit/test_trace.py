import numpy as np
import pytest
import torch

from lens_memory.errors import NoKnownFactsError
from lens_memory.facts import Fact
from lens_memory.trace import TraceConfig, TraceResult, prepare_fact, scaled_window, trace_fact, trace_facts
from lens_memory.trace.fast import fast_scores
from lens_memory.trace.reference import reference_scores, restored_score

FACT = Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris", case_id=0)
ALL = ("hidden", "mlp", "attn", "hidden_sever_mlp", "hidden_sever_attn")


@pytest.fixture(scope="module")
def prep(tiny):
    return prepare_fact(tiny, FACT, TraceConfig(n_samples=3, noise=1.0), 1.0)


@pytest.mark.parametrize("window", [1, 2, 3])
def test_fast_equals_reference_cell_by_cell(tiny, prep, window):
    cfg = TraceConfig(kinds=ALL, n_samples=3, noise=1.0, window=window)
    fs, fh, fl = fast_scores(tiny, prep, cfg, ALL)
    rs, rh, rl = reference_scores(tiny, prep, cfg, ALL)
    assert abs(fh - rh) < 1e-6 and abs(fl - rl) < 1e-6
    for k in ALL:
        assert fs[k].shape == (tiny.n_layers, prep.n_tokens)
        assert torch.allclose(fs[k], rs[k], atol=1e-6), k
        assert not torch.allclose(fs[k], torch.full_like(fs[k], fl)), f"{k}: no cell had any effect"


def test_restoring_everything_recovers_clean_and_nothing_gives_corrupted(tiny, prep):
    low, high = restored_score(tiny, prep)
    everything = [(f"blocks.{l}.hook_resid_post", t) for l in range(tiny.n_layers) for t in range(prep.n_tokens)]
    assert restored_score(tiny, prep, everything)[0] == pytest.approx(high, abs=1e-7)
    assert low != pytest.approx(high, abs=1e-6)


def test_non_subject_token_at_embedding_changes_nothing(tiny, prep):
    low, _ = restored_score(tiny, prep)
    s0, s1 = prep.subject_range
    for t in [i for i in range(prep.n_tokens) if not s0 <= i < s1]:
        assert restored_score(tiny, prep, [("blocks.0.hook_resid_pre", t)])[0] == pytest.approx(low, abs=1e-7)
    assert restored_score(tiny, prep, [("blocks.0.hook_resid_pre", s0)])[0] != pytest.approx(low, abs=1e-7)


def test_trace_result_round_trip_and_aie(tiny, tmp_path):
    facts = [FACT, Fact(subject="Colosseum", template="The {} is located in the city of", target_true="Rome", case_id=1)]
    res = trace_facts(tiny, facts, TraceConfig(n_samples=2, window=2), only_known=False, progress=False)
    path = res.save(tmp_path / "trace")
    back = TraceResult.load(path)
    assert back.provenance == res.provenance and back.n_facts == 2
    for a, b in zip(res.traces, back.traces):
        for k in a.scores:
            assert torch.equal(a.scores[k], b.scores[k])
        assert a.fact == b.fact and a.low == b.low
    aie = res.aie("mlp")
    manual = np.mean([t.effect("mlp")[:, t.subject_range[1] - 1].numpy() for t in res.traces], axis=0)
    assert np.allclose(aie.mean["last subject"], manual, atol=1e-7)
    s = res.suggest_layers(width=2)
    assert s.layer == int(np.argmax(manual)) and len(s.layers) == 2
    df = res.to_dataframe()
    assert len(df) == sum(len(t.tokens) * tiny.n_layers * 3 for t in res.traces)
    assert res.plot() is not None and res.plot(fact=0, kind="mlp") is not None


def test_checkpoints_are_reused(tiny, tmp_path, monkeypatch):
    cfg = TraceConfig(n_samples=2, window=2, kinds=("hidden",))
    first = trace_facts(tiny, [FACT], cfg, only_known=False, checkpoint_dir=tmp_path, progress=False)
    import lens_memory.trace as tr

    monkeypatch.setattr(tr, "trace_fact", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = trace_facts(tiny, [FACT], cfg, only_known=False, checkpoint_dir=tmp_path, progress=False)
    assert torch.equal(first.traces[0].scores["hidden"], again.traces[0].scores["hidden"])


def test_no_known_facts_is_a_clear_error(tiny):
    fact = Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="zzzzqqq")
    with pytest.raises(NoKnownFactsError, match="knows none of the 1 facts"):
        trace_facts(tiny, [fact], TraceConfig(n_samples=2), progress=False)


@pytest.mark.parametrize("kw, msg", [
    ({"kinds": ("hidden", "bogus")}, "unknown \\['bogus'\\]"),
    ({"n_samples": 0}, "n_samples must be a positive integer, got 0"),
    ({"noise": "loud"}, "noise must be 'auto' or a number, got 'loud'"),
    ({"window": 0}, "window must be a positive integer or 'scaled', got 0"),
    ({"window": "wide"}, "window must be a positive integer or 'scaled', got 'wide'"),
    ({"window": True}, "window must be a positive integer or 'scaled', got True"),
    ({"engine": "gpu"}, r"engine must be one of \['fast', 'reference', 'atp', 'atp\*'\], got 'gpu'"),
])
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TraceConfig(**kw)


def test_trace_fact_subject_at_start_of_prompt(tiny):
    fact = Fact(subject="Louvre", template="{} is here", target_true="Paris")
    res = trace_fact(tiny, fact, TraceConfig(n_samples=2, kinds=("hidden",)), scale=1.0)
    assert res.scores["hidden"].shape[0] == tiny.n_layers


@pytest.mark.parametrize("n_layers, window", [(48, 10), (18, 4), (12, 3), (24, 5), (26, 5), (4, 1), (1, 1)])
def test_scaled_window_is_rome_fraction_of_depth(n_layers, window):
    assert scaled_window(n_layers) == window == max(1, int(10 * n_layers / 48 + 0.5))
    assert TraceConfig().window == "scaled" and TraceConfig().window_for(n_layers) == window
    assert TraceConfig(window=7).window_for(n_layers) == 7 and TraceConfig(window="7").window == 7


def test_scaled_window_resolves_and_is_recorded(tiny, tmp_path):
    cfg = TraceConfig(n_samples=2, kinds=("mlp", "attn"), window="scaled")
    res = trace_facts(tiny, [FACT], cfg, only_known=False, progress=False)
    w = scaled_window(tiny.n_layers)
    assert res.provenance["window"]["requested"] == "scaled" and res.provenance["window"]["resolved"] == w
    assert res.provenance["config"]["window"] == w == res.window
    assert res.summary()["window"] == w and res.summary()["window_requested"] == "scaled"
    assert TraceResult.load(res.save(tmp_path / "t")).window == w
    fixed = trace_facts(tiny, [FACT], TraceConfig(n_samples=2, kinds=("mlp", "attn"), window=w), only_known=False,
                        progress=False)
    assert fixed.provenance["window"]["requested"] == w and fixed.provenance["config"] == res.provenance["config"]
    for k in ("mlp", "attn"):
        assert torch.equal(res.traces[0].scores[k], fixed.traces[0].scores[k])


def test_scaled_window_in_the_engines_and_the_cli(tiny, prep):
    from lens_memory.cli import build_parser

    scaled = TraceConfig(kinds=("mlp",), n_samples=3, noise=1.0, window="scaled")
    fixed = TraceConfig(kinds=("mlp",), n_samples=3, noise=1.0, window=scaled_window(tiny.n_layers))
    assert torch.equal(fast_scores(tiny, prep, scaled, ("mlp",))[0]["mlp"],
                       fast_scores(tiny, prep, fixed, ("mlp",))[0]["mlp"])
    assert torch.equal(reference_scores(tiny, prep, scaled, ("mlp",))[0]["mlp"],
                       reference_scores(tiny, prep, fixed, ("mlp",))[0]["mlp"])
    parse = build_parser().parse_args
    assert TraceConfig(window=parse(["trace", "--out", "x"]).window).window == "scaled"
    assert TraceConfig(window=parse(["trace", "--out", "x", "--window", "10"]).window).window == 10


def test_trace_config_refuses_infinite_noise():
    """Issue 16, defect 8: --noise inf gave NaN scores, peak layer -1 and exit 0."""
    for bad in (dict(noise=float("inf")), dict(noise="inf"), dict(noise_multiplier=float("inf")),
                dict(noise=float("nan")), dict(noise_multiplier=0.0)):
        with pytest.raises(ValueError, match="finite"):
            TraceConfig(**bad)


def test_saving_a_trace_never_deletes_what_it_did_not_write(tiny, tmp_path):
    """Issue 16, defect 1: save() removed whatever directory was at the path, user files included."""
    from lens_memory.errors import ArtifactMismatchError
    from lens_memory.facts import Fact
    from lens_memory.trace import TraceResult, trace_facts

    fact = Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris", case_id=0)
    res = trace_facts(tiny, [fact], TraceConfig(kinds=("mlp",), n_samples=2, noise=1.0), only_known=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactMismatchError, match="refusing to replace"):
        res.save(mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    out = res.save(tmp_path / "t")
    res.save(out)  # replacing a trace result is fine, and leaves no temporary directories
    assert TraceResult.load(out).n_facts == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "t"]


def test_a_corrupt_checkpoint_is_traced_again_not_a_blocked_rerun(tiny, tmp_path):
    """Issue 16, defect 10: a truncated checkpoint raised SafetensorError on every rerun."""
    fact = Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris", case_id=0)
    cfg = TraceConfig(kinds=("mlp",), n_samples=2, noise=1.0)
    first = trace_facts(tiny, [fact], cfg, only_known=False, checkpoint_dir=tmp_path, progress=False)
    (st,) = list(tmp_path.rglob("fact00000.safetensors"))
    st.write_bytes(st.read_bytes()[:20])  # truncated by a kill
    again = trace_facts(tiny, [fact], cfg, only_known=False, checkpoint_dir=tmp_path, progress=False)
    assert torch.equal(again.traces[0].scores["mlp"], first.traces[0].scores["mlp"])


def _second_token_logit(logits, prep):  # a user-defined metric: any callable(logits, prep) -> [batch]
    return logits[:, 1]


@pytest.mark.parametrize("metric", ["logit", "logprob", _second_token_logit])
def test_metric_callable_fast_equals_reference(tiny, prep, metric):
    """Tracing takes a metric like TL's generic_activation_patch; both engines compute the same cells."""
    cfg = TraceConfig(kinds=("hidden", "mlp"), n_samples=3, noise=1.0, window=2)
    fs, fh, fl = fast_scores(tiny, prep, cfg, cfg.kinds, metric)
    rs, rh, rl = reference_scores(tiny, prep, cfg, cfg.kinds, metric)
    assert abs(fh - rh) < 1e-4 and abs(fl - rl) < 1e-4
    for k in cfg.kinds:
        assert torch.allclose(fs[k], rs[k], atol=1e-4), k
    p_scores, p_high, _ = fast_scores(tiny, prep, cfg, cfg.kinds)
    assert not torch.allclose(fs["mlp"], p_scores["mlp"])  # the metric was used, not the probability


def test_default_metric_is_the_answer_probability_and_is_recorded(tiny):
    cfg = TraceConfig(kinds=("mlp",), n_samples=2, noise=1.0, window=2)
    tr = trace_fact(tiny, FACT, cfg, scale=1.0)
    prep = prepare_fact(tiny, FACT, cfg.resolved(tiny.n_layers), 1.0)
    logits = tiny.bridge(prep.ids[None])[0, -1].float().detach()
    assert tr.high == pytest.approx(float(logits.softmax(-1)[prep.answer_id]), abs=1e-6)
    res = trace_facts(tiny, [FACT], cfg, only_known=False, progress=False, metric="logit")
    assert res.provenance["metric"] == "logit"
    assert res.traces[0].high == pytest.approx(float(logits[prep.answer_id]), abs=1e-4)
    with pytest.raises(ValueError, match="'loss'"):
        trace_facts(tiny, [FACT], cfg, only_known=False, progress=False, metric="loss")
