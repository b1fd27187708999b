import logging

import pytest
import torch

from lens_memory.corpus import Corpus, load_corpus, token_blocks
from lens_memory.errors import LensMemoryError


@pytest.fixture(scope="module")
def offline():
    return load_corpus()


def _letter_fraction(s: str) -> float:
    chars = [c for c in s if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars)


def test_offline_corpus_is_prose_and_deterministic(offline):
    assert offline.name == "offline" and len(offline.texts) > 100 and offline.n_chars() > 200_000
    assert load_corpus("offline").sha256 == offline.sha256
    assert f"{offline.n_chars():,} characters" in offline.description
    paragraphs = [p for t in offline.texts for p in t.split("\n\n")]
    assert all(len(p) >= 40 and _letter_fraction(p) >= 0.7 for p in paragraphs)
    assert not any(line.lstrip().startswith(">>>") for t in offline.texts for line in t.splitlines())
    d = offline.to_dict()
    assert d == {"name": "offline", "sha256": offline.sha256, "description": offline.description,
                 "n_texts": len(offline.texts), "n_chars": offline.n_chars()}


def test_max_texts_and_hash_is_order_sensitive(offline):
    first = load_corpus(offline, max_texts=3)
    assert first.texts == offline.texts[:3] and first.sha256 != offline.sha256
    assert load_corpus(["a b c", "d"]).sha256 != load_corpus(["d", "a b c"]).sha256
    assert load_corpus(["ab", "c"]).sha256 != load_corpus(["a", "bc"]).sha256
    assert load_corpus(["same"]).sha256 == load_corpus(["same"]).sha256
    assert load_corpus(offline) is offline


def test_texts_file_and_directory(tmp_path):
    c = load_corpus(["First text.", "Second text."])
    assert c.name == "texts" and c.texts == ("First text.", "Second text.") and isinstance(c, Corpus)
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.md").write_text("ay")
    (tmp_path / "sub" / "c.txt").write_text("sea")
    (tmp_path / "ignored.json").write_text("{}")
    assert load_corpus(tmp_path).texts == ("ay", "bee", "sea")
    assert load_corpus(str(tmp_path)).texts == ("ay", "bee", "sea")
    assert load_corpus(f"file:{tmp_path / 'b.txt'}").texts == ("bee",)
    assert load_corpus(tmp_path / "b.txt").name == str(tmp_path / "b.txt")


def test_bad_inputs_name_the_value(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("  \n")
    cases = [
        ([], "'texts'"),
        (["", "  "], "'texts'"),
        ([1, "a"], "1"),
        (tmp_path / "missing.txt", "missing.txt"),
        (str(tmp_path / "nothing"), "nothing"),
        (tmp_path / "empty", "empty"),
        (tmp_path / "blank.txt", "blank.txt"),
        ("wikipedia", "'wikipedia'"),
        (3.5, "3.5"),
        ("hf:", "'hf:'"),
    ]
    for spec, named in cases:
        with pytest.raises(LensMemoryError, match=named):
            load_corpus(spec)
    for bad in (0, -1):
        with pytest.raises(LensMemoryError, match=f"max_texts.*{bad}"):
            load_corpus(["a"], max_texts=bad)


def test_hf_spec_fails_cleanly_offline(monkeypatch):
    try:  # never touch the network: make the dataset unreachable (without datasets, the import fails)
        import datasets

        def unreachable(*args, **kwargs):
            raise ConnectionError("Couldn't reach 'no-such/dataset-xyz' on the Hub\n(details)")

        monkeypatch.setattr(datasets, "load_dataset", unreachable)
    except ImportError:
        pass
    with pytest.raises(LensMemoryError, match=r"'hf:no-such/dataset-xyz'.*network.*'offline'") as info:
        load_corpus("hf:no-such/dataset-xyz")
    assert "\n" not in str(info.value)


def test_token_blocks_shapes_bos_and_total(tiny, offline):
    bos = tiny.tokenizer.bos_token_id
    blocks = list(token_blocks(tiny, offline, 10 * 32, seq_len=32, batch_size=4))
    assert [b.shape for b in blocks] == [(4, 32), (4, 32), (2, 32)]
    assert all(b.dtype == torch.long and (b[:, 0] == bos).all() for b in blocks)
    assert sum(b.numel() for b in blocks) == 320
    assert not any((b[:, 1:] == bos).any() for b in blocks)
    # not a multiple of seq_len: rounded up to whole rows
    assert sum(b.numel() for b in token_blocks(tiny, offline, 33, seq_len=32)) == 64


def test_token_blocks_follow_stream_order(tiny):
    corpus = load_corpus(["The Eiffel Tower is located in the city of Paris.", "Big Ben is in London."])
    rows = torch.cat(list(token_blocks(tiny, corpus, 6 * 8, seq_len=8, batch_size=2)))
    stream = rows[:, 1:].flatten().tolist()
    text = tiny.decode(stream)
    assert text.startswith("The Eiffel Tower is located")
    assert tiny.tokenizer.eos_token_id in stream
    assert text.replace(tiny.tokenizer.eos_token, "|").startswith(corpus.texts[0] + "|Big Ben")


def test_token_blocks_short_corpus_warns_and_stops(tiny, caplog):
    corpus = load_corpus(["A dolphin is a mammal. An eagle is a bird. A shark is a fish."])
    n = len(tiny.tokenizer(corpus.texts[0], add_special_tokens=False)["input_ids"])
    with caplog.at_level(logging.WARNING, logger="lens_memory.corpus"):
        blocks = list(token_blocks(tiny, corpus, 10_000, seq_len=5, batch_size=3))
    assert sum(b.shape[0] for b in blocks) == n // 4 and all(b.shape[1] == 5 for b in blocks)
    assert any(f"after {n} tokens" in r.getMessage() for r in caplog.records)


def test_token_blocks_validates_arguments(tiny):
    corpus = load_corpus(["some text"])
    for kwargs, named in [({"n_tokens": 0}, "n_tokens.*0"), ({"n_tokens": 10, "seq_len": 1}, "seq_len.*1"),
                          ({"n_tokens": 10, "batch_size": 0}, "batch_size.*0")]:
        with pytest.raises(LensMemoryError, match=named):
            next(token_blocks(tiny, corpus, **kwargs))


def test_model_sample_killed_mid_run_resumes_to_the_uninterrupted_texts(tiny, tmp_path, monkeypatch):
    """A long self-sample checkpoints per batch; a run killed after two batches resumes bit-identically."""
    import lens_memory.generation as generation
    from lens_memory.corpus import model_samples

    kw = dict(n_tokens=8 * 6, tokens_per_text=6, top_k=5, batch_size=2)
    whole = model_samples(tiny, cache_dir=tmp_path / "a", **kw)

    real = generation.generate

    def killed(*args, on_batch=None, **kwargs):
        def hook(done, rng):
            on_batch(done, rng)
            if len(done) == 4:
                raise KeyboardInterrupt
        return real(*args, on_batch=hook, **kwargs)

    monkeypatch.setattr(generation, "generate", killed)
    with pytest.raises(KeyboardInterrupt):
        model_samples(tiny, cache_dir=tmp_path / "b", **kw)
    assert list((tmp_path / "b").rglob("*.partial.json"))
    monkeypatch.setattr(generation, "generate", real)
    calls = []
    monkeypatch.setattr(generation, "generate", lambda *a, **k: calls.append(len(k["resume"][0])) or real(*a, **k))
    resumed = model_samples(tiny, cache_dir=tmp_path / "b", **kw)
    assert calls == [4]
    assert resumed.texts == whole.texts and resumed.sha256 == whole.sha256
    assert not list((tmp_path / "b").rglob("*.partial.json"))
