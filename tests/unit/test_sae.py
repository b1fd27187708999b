"""SAEs on the tiny random model: training with sae-lens's trainer, quality metrics, caching, refusals."""

import json
import logging
import shutil

import pytest
import torch

from lens_memory.artifacts import load_artifact
from lens_memory.corpus import load_corpus, token_blocks
from lens_memory.errors import ArtifactMismatchError, LensMemoryError, ModelUnavailableError
from lens_memory.hooks import capture
from lens_memory.io import sha256_file, write_json
from lens_memory.sae import (SAEConfigError, SAEMismatchError, SAEQuality, SAETrainConfig, TrainedSAE, check_sae,
                             feature_acts, load_pretrained_sae, pretrained_sae_ids, sae_quality, train_sae)
from lens_memory.sae.features import _activations
from lens_memory.sae.training import _training_sae

WORDS = ("river mountain city harbour garden library market station bridge castle forest island valley desert "
         "museum theatre school hospital factory village").split()
TEXTS = [f"The {a} near the {b} is older than the {c}. Visitors walk from the {b} to the {a} every {d} morning."
         for a, b, c, d in zip(WORDS, WORDS[3:] + WORDS[:3], WORDS[7:] + WORDS[:7], ["Monday", "Friday"] * 10)] * 8
CFG = SAETrainConfig(layer=1, d_sae=128, k=8, n_tokens=2048, seq_len=32, batch_size=128, lm_batch_size=16, epochs=4,
                     lr=3e-3, dead_feature_window=10, eval_tokens=512, ce_tokens=256)
SMALL = SAETrainConfig(**{**CFG.to_dict(), "n_tokens": 1024, "epochs": 1, "eval_tokens": 128, "ce_tokens": 64})


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(TEXTS)


@pytest.fixture(scope="module")
def trained(tiny, corpus):
    return train_sae(tiny, CFG, corpus=corpus, use_cache=False, progress=False)


@pytest.fixture(scope="module")
def eval_ids(tiny, corpus):
    return torch.cat(list(token_blocks(tiny, corpus, 512, seq_len=32, batch_size=16)))


def _identity_sae(d: int, hook: str, model: str = "tiny"):
    """A ReLU SAE with features +e_i and -e_i: reconstructs every input exactly."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, metadata=SAEMetadata(hook_name=hook, model_name=model)))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


# -- config --------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, needle", [
    (dict(k=0), "k must be an integer >= 1, got 0"),
    (dict(architecture="jumprelu"), "'jumprelu'"),
    (dict(hook="blocks.2.hook_resid_post"), "'blocks.2.hook_resid_post'"),
    (dict(layer=-1), "-1"),
    (dict(lr=float("nan")), "nan"),
    (dict(d_sae=16, k=32), "at most d_sae (16)"),
    (dict(lr_warm_up_frac=0.6, lr_decay_frac=0.5), "0.6 + 0.5"),
    (dict(b_dec_init="median"), "'median'"),
    (dict(batch_size=True), "batch_size"),
])
def test_config_errors_name_the_value(kw, needle):
    base = dict(layer=1)
    with pytest.raises(SAEConfigError) as e:
        SAETrainConfig(**{**base, **kw})
    assert needle in str(e.value)


def test_config_defaults_and_roundtrip():
    cfg = SAETrainConfig(layer=6)
    assert cfg.hook == "blocks.6.hook_resid_post"
    assert SAETrainConfig.from_dict(cfg.to_dict()) == cfg and cfg.key() == SAETrainConfig(layer=6).key()
    assert SAETrainConfig(layer=6, k=16).key() != cfg.key()


def test_train_rejects_layer_and_batch_size(tiny, corpus):
    with pytest.raises(LensMemoryError, match="layer 7"):
        train_sae(tiny, SAETrainConfig(layer=7), corpus=corpus, use_cache=False)
    with pytest.raises(SAEConfigError, match="batch_size 100000"):
        train_sae(tiny, SAETrainConfig(layer=1, n_tokens=256, seq_len=32, batch_size=100_000, eval_tokens=64),
                  corpus=corpus, use_cache=False, progress=False)


# -- activations ---------------------------------------------------------------------------

def test_activations_stop_at_layer_and_equal_capture(tiny, eval_ids):
    for hook in ("blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"):
        ref = capture(tiny, eval_ids[:4], [hook], early_stop=False)[hook]
        torch.testing.assert_close(_activations(tiny, hook, eval_ids[:4]), ref, rtol=1e-5, atol=1e-5)


# -- training ------------------------------------------------------------------------------

def test_training_lowers_reconstruction_error(tiny, trained, eval_ids):
    hook = CFG.hook
    x = _activations(tiny, hook, eval_ids)[:, 1:].reshape(-1, tiny.d_model)
    fresh = _training_sae(CFG, tiny.d_model, "cpu")
    with torch.no_grad():
        mse_fresh = (fresh(x) - x).pow(2).sum(-1).mean()
        f = trained.sae.encode(x)
        mse_trained = (trained.sae.decode(f) - x).pow(2).sum(-1).mean()
    assert mse_trained < 0.5 * mse_fresh
    assert (f != 0).sum(-1).max() <= CFG.k  # TopK
    hist = trained.provenance["loss_history"]
    assert hist[-1]["mse_loss"] < hist[0]["mse_loss"]
    q = trained.quality
    assert q.explained_variance > 0.5 and 0 < q.l0 <= CFG.k and 0 <= q.dead_fraction < 1
    assert q.n_eval_tokens == 16 * 31 and q.n_ce_tokens == 9 * 30  # BOS excluded; 9 rows cover 256 predictions
    p = trained.provenance
    assert p["n_train_activations"] == 64 * 31 and p["bos_excluded"] and p["collect_tokens_per_s"] > 0
    assert p["tokens_per_s"] < p["collect_tokens_per_s"]
    meta = trained.sae.cfg.metadata
    assert meta.hook_name == hook and meta.model_name == "tiny" and list(meta.seqpos_slice) == [1, None]


def test_standard_architecture_trains(tiny, corpus):
    cfg = SAETrainConfig(layer=0, architecture="standard", l1_coefficient=0.5, d_sae=128, n_tokens=2048, seq_len=32,
                         batch_size=128, epochs=2, lr=3e-3, eval_tokens=256, ce_tokens=0)
    t = train_sae(tiny, cfg, corpus=corpus, use_cache=False, progress=False)
    assert type(t.sae).__name__ == "StandardSAE" and t.quality.explained_variance > 0.3
    assert t.quality.n_ce_tokens == 0 and t.quality.loss_recovered != t.quality.loss_recovered  # nan


# -- quality -------------------------------------------------------------------------------

def test_loss_recovered_is_consistent(trained):
    q = trained.quality  # (a random model: the clean CE need not beat zero ablation)
    assert q.ce_clean != q.ce_zero
    assert q.loss_recovered == (q.ce_zero - q.ce_spliced) / (q.ce_zero - q.ce_clean)
    assert SAEQuality.from_dict(q.to_dict()) == q


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"])
def test_perfect_reconstruction_recovers_everything(tiny, eval_ids, hook):
    q = sae_quality(tiny, _identity_sae(tiny.d_model, hook), hook, eval_ids, n_ce_tokens=200)
    assert q.explained_variance == pytest.approx(1.0, abs=1e-6) and q.mse < 1e-8
    assert q.ce_spliced == pytest.approx(q.ce_clean, abs=1e-5)
    assert q.loss_recovered == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"])
def test_zero_reconstruction_recovers_nothing_and_clean_ce_is_the_models(tiny, eval_ids, hook):
    sae = _identity_sae(tiny.d_model, hook)
    with torch.no_grad():
        sae.W_dec.zero_()
    rows = eval_ids[:3]
    q = sae_quality(tiny, sae, hook, rows, n_ce_tokens=10_000)
    assert q.loss_recovered == pytest.approx(0.0, abs=1e-6) and q.explained_variance < 0
    assert abs(q.ce_zero - q.ce_clean) > 1e-3  # the replacement reached the logits
    with torch.no_grad():  # the clean CE is the full model's
        logits = tiny.hf(input_ids=rows).logits[:, 1:-1]
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 2:].reshape(-1))
    assert q.ce_clean == pytest.approx(float(ref), rel=1e-5) and q.n_ce_tokens == 3 * 30


def test_feature_acts(tiny, trained, eval_ids):
    f = feature_acts(tiny, trained.sae, eval_ids[:2])
    assert f.shape == (2, 32, CFG.d_sae)
    torch.testing.assert_close(f, trained.feature_acts(tiny, eval_ids[:2]))


# -- caching and persistence ---------------------------------------------------------------

def test_cache_reuse_and_corrupt_cache_is_retrained(tiny, corpus, tmp_path, caplog):
    a = train_sae(tiny, SMALL, corpus=corpus, cache_dir=tmp_path, progress=False)
    (d,) = [p.parent for p in tmp_path.rglob("trained_sae.json")]
    b = train_sae(tiny, SMALL, corpus=corpus, cache_dir=tmp_path, progress=False)
    for k, v in a.sae.state_dict().items():
        assert torch.equal(v, b.sae.state_dict()[k]), k
    assert b.provenance == a.provenance and b.quality == a.quality  # loaded, not retrained
    weights = d / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40] + b"\0" * 40)
    with caplog.at_level(logging.WARNING):
        c = train_sae(tiny, SMALL, corpus=corpus, cache_dir=tmp_path, progress=False)
    assert "unreadable SAE cache" in caplog.text
    assert c.provenance["total_seconds"] != a.provenance["total_seconds"]  # retrained
    for k, v in a.sae.state_dict().items():  # deterministic
        torch.testing.assert_close(c.sae.state_dict()[k], v)
    TrainedSAE.load(d)  # the retrained cache is valid again
    other = SAETrainConfig(**{**SMALL.to_dict(), "k": 4})
    train_sae(tiny, other, corpus=corpus, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.rglob("trained_sae.json"))) == 2


def test_save_load_roundtrip(tiny, trained, tmp_path):
    path = trained.save(tmp_path / "sae")
    loaded = TrainedSAE.load(path, tiny)
    assert loaded.config == trained.config and loaded.quality == trained.quality and loaded.hook == trained.hook
    x = torch.randn(5, tiny.d_model)
    torch.testing.assert_close(loaded.encode(x), trained.encode(x))
    trained.save(path)  # overwriting a saved SAE is fine
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(LensMemoryError, match="refusing to overwrite"):
        trained.save(tmp_path / "other")


def _save_old_layout(t, path):
    """A directory as TrainedSAE.save wrote it before the persistence layer: no manifest, a "files" map of hashes."""
    path.mkdir(parents=True)
    weights, cfg = t.sae.save_model(path)
    write_json(path / "trained_sae.json", {
        "kind": "lens_memory.TrainedSAE", "hook": t.hook, "layer": t.layer, "config": t.config.to_dict(),
        "quality": t.quality.to_dict(), "provenance": t.provenance,
        "files": {weights.name: sha256_file(weights), cfg.name: sha256_file(cfg)}})
    return path


def test_save_writes_an_artifact_with_a_manifest_that_sae_lens_can_load(tiny, trained, tmp_path):
    from sae_lens import SAE

    path = trained.save(tmp_path / "sae")
    assert sorted(p.name for p in path.iterdir()) == ["cfg.json", "sae_weights.safetensors", "trained_sae.json"]
    meta, tensors = load_artifact(path, "trained_sae")
    assert meta["format"] == "lens_memory.trained_sae/1" and tensors == {} and "files" not in meta
    assert set(meta["manifest"]["files"]) == {"cfg.json", "sae_weights.safetensors"}
    loaded = TrainedSAE.load(path, tiny)
    assert loaded.provenance == trained.provenance and loaded.layer == trained.layer
    x = torch.randn(5, tiny.d_model)
    torch.testing.assert_close(loaded.encode(x), trained.encode(x))
    torch.testing.assert_close(SAE.load_from_disk(path).encode(x), trained.encode(x))  # plain sae-lens reads it
    weights = path / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight, same size
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactMismatchError, match="sae_weights.safetensors does not match"):
        load_artifact(path, "trained_sae")
    with pytest.raises(ArtifactMismatchError, match="sae_weights.safetensors does not match"):
        TrainedSAE.load(path)


def test_load_reads_the_old_layout_and_save_replaces_it(tiny, trained, tmp_path):
    old = _save_old_layout(trained, tmp_path / "old")
    loaded = TrainedSAE.load(old, tiny)
    assert loaded.config == trained.config and loaded.quality == trained.quality and loaded.hook == trained.hook
    assert loaded.provenance == trained.provenance
    x = torch.randn(5, tiny.d_model)
    torch.testing.assert_close(loaded.encode(x), trained.encode(x))
    bad = _save_old_layout(trained, tmp_path / "bad")
    weights = bad / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40] + b"\0" * 40)
    with pytest.raises(ArtifactMismatchError, match="missing or corrupt"):  # old-layout hashes still verified
        TrainedSAE.load(bad)
    trained.save(old)  # e.g. a stale cache entry retrained: the new layout replaces the old one
    meta, _ = load_artifact(old, "trained_sae")
    assert "files" not in meta and "kind" not in meta
    assert sorted(p.name for p in old.iterdir()) == ["cfg.json", "sae_weights.safetensors", "trained_sae.json"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left aside
    torch.testing.assert_close(TrainedSAE.load(old, tiny).encode(x), trained.encode(x))
    mine = _save_old_layout(trained, tmp_path / "mine")
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(LensMemoryError, match="refusing to overwrite"):  # a file the old save did not write
        trained.save(mine)
    assert (mine / "notes.txt").read_text() == "mine"
    assert "manifest" not in json.loads((mine / "trained_sae.json").read_text())


def test_cache_in_the_old_layout_is_reused(tiny, corpus, tmp_path):
    a = train_sae(tiny, SMALL, corpus=corpus, cache_dir=tmp_path, progress=False)
    (d,) = [p.parent for p in tmp_path.rglob("trained_sae.json")]
    shutil.rmtree(d)
    _save_old_layout(a, d)
    b = train_sae(tiny, SMALL, corpus=corpus, cache_dir=tmp_path, progress=False)
    assert b.provenance == a.provenance and b.quality == a.quality  # loaded, not retrained
    for k, v in a.sae.state_dict().items():
        assert torch.equal(v, b.sae.state_dict()[k]), k


def test_old_module_name_warns_and_returns_the_new_objects():
    import lens_memory.sae as new
    import lens_memory.steer.sae as old

    msg = r"^lens_memory\.steer\.sae\.TrainedSAE moved to lens_memory\.sae\.TrainedSAE$"
    with pytest.warns(DeprecationWarning, match=msg):
        assert old.TrainedSAE is new.TrainedSAE
    with pytest.warns(DeprecationWarning, match=msg.replace("TrainedSAE", "train_sae")):
        from lens_memory.steer.sae import train_sae as old_train_sae
    assert old_train_sae is train_sae
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        old.not_a_name


# -- refusals ------------------------------------------------------------------------------

def test_check_sae_refuses_width_hook_and_model(tiny, trained):
    hook = CFG.hook
    assert check_sae(tiny, trained.sae, hook) == hook
    assert check_sae(tiny, trained.sae) == hook  # the recorded hook
    with pytest.raises(SAEMismatchError, match=r"'blocks\.1\.hook_resid_post', not at 'blocks\.2\.hook_resid_post'"):
        check_sae(tiny, trained.sae, "blocks.2.hook_resid_post")
    with pytest.raises(SAEMismatchError, match="'blocks.9.hook_resid_post' does not exist"):
        check_sae(tiny, _identity_sae(tiny.d_model, "blocks.9.hook_resid_post"), "blocks.9.hook_resid_post")
    with pytest.raises(SAEMismatchError, match="d_in=32 does not match the width 64"):
        check_sae(tiny, _identity_sae(32, hook), hook)
    with pytest.raises(SAEMismatchError, match="d_in=64 does not match the width 128"):
        check_sae(tiny, _identity_sae(64, "blocks.1.mlp.hook_post"), "blocks.1.mlp.hook_post")  # d_mlp
    with pytest.raises(SAEMismatchError, match="trained on model 'google/gemma-3-270m', not on 'tiny'"):
        check_sae(tiny, _identity_sae(tiny.d_model, hook, model="google/gemma-3-270m"), hook)
    with pytest.raises(SAEMismatchError, match="d_in=32"):
        sae_quality(tiny, _identity_sae(32, hook), hook, torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(SAEMismatchError, match="trained on model"):
        feature_acts(tiny, _identity_sae(tiny.d_model, hook, model="gemma-3-270m"), torch.zeros(1, 4, dtype=torch.long))


def test_pretrained_names_are_checked_offline(monkeypatch):
    ids = pretrained_sae_ids()
    assert "layer_5_width_16k_l0_small" in ids and len(ids) >= 40
    with pytest.raises(LensMemoryError, match="'gemma-scope-9'"):
        load_pretrained_sae("gemma-scope-9", "layer_5_width_16k_l0_small")
    with pytest.raises(LensMemoryError, match="'layer_6_width_16k_l0_small'"):
        load_pretrained_sae(sae_id="layer_6_width_16k_l0_small")
    from sae_lens import SAE

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(SAE, "from_pretrained", offline)
    with pytest.raises(ModelUnavailableError, match="needs the network"):
        load_pretrained_sae(sae_id="layer_5_width_16k_l0_small")
