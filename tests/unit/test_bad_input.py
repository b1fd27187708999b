"""The bad-input table: every row is an input a user can plausibly give, the error class it must
raise, a pattern the message must contain (naming the offending value), and -- for every row --
a check that a result saved earlier in the same directory was not touched.

Rows are grouped by where the input enters: configs, facts and templates, models and devices,
artifacts and their files, application of artifacts, retrieval, and the command line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from lens_memory.artifacts import load_artifact, save_artifact
from lens_memory.errors import (ArtifactMismatchError, DeviceUnavailableError, FactFormatError, InputTooLongError,
                                LayerOutOfRangeError, LensMemoryError)


@dataclasses.dataclass
class Row:
    name: str
    call: Callable[[Any, Path], Any]
    error: type[BaseException]
    match: str


def _fact(**kw):
    from lens_memory.facts import Fact

    base = dict(subject="Eiffel Tower", template="The {} is in the city of", target_true="Paris", target_new="Rome")
    return Fact(**{**base, **kw})


def _vec(lm, **kw):
    from lens_memory.steer import SteeringVector

    return SteeringVector("caa", {1: torch.ones(lm.d_model)}, "toy", **kw)


def _bank(lm):
    from lens_memory.memory import MemoryConfig, encode_memory

    return encode_memory(lm, ["The Eiffel Tower is in Rome."], MemoryConfig(layers=(1,)))


def _twice(make: Callable[[], Any], lm):
    a = make()
    with a.apply(lm):
        a.apply(lm)


def _second_bank(lm):
    b, other = _bank(lm), _bank(lm)
    with b.apply(lm):
        other.apply(lm)


def _corrupt_vector_file(lm, tmp):
    _vec(lm).save(tmp / "v")
    p = tmp / "v" / "steering_vector.safetensors"
    p.write_bytes(p.read_bytes()[:-4] + b"\0\0\0\0")
    from lens_memory.steer import SteeringVector

    SteeringVector.load(tmp / "v")


def _missing_key(lm, tmp):
    from lens_memory.edit import Edit

    save_artifact(tmp / "e", "edit", {"method": "rome"})
    Edit.load(tmp / "e")


def _foreign_stats(lm):
    """Defect 7: key statistics of a model with other weights under the same name."""
    from lens_memory.corpus import load_corpus
    from lens_memory.edit import RomeConfig, key_statistics, rome
    from lens_memory.edit.stats import StatsConfig
    from lens_memory.models import load_model

    corpus = load_corpus(["The tower stands in the old city near the river."] * 20)
    other = load_model("tiny", seed=1)
    st = key_statistics(other, 1, StatsConfig(n_tokens=64, seq_len=16), corpus=corpus, use_cache=False)[1]
    rome(lm, _fact(), RomeConfig(layer=1, v_steps=1), stats=st)


def _sae_of_another_hook(lm):
    """Defect 7: an SAE trained at another hook than the direction's."""
    from types import SimpleNamespace

    from lens_memory.steer import decompose

    sae = SimpleNamespace(cfg=SimpleNamespace(metadata=SimpleNamespace(hook_name="blocks.0.hook_resid_post")),
                          W_dec=torch.randn(8, lm.d_model))
    decompose(_vec(lm), sae, k=2)


def _seq(lm, **kw):
    from lens_memory.edit.sequence import sequential_edit

    args = {"facts": [_fact()], "method": "rome", "batch_size": 1, **kw}
    return sequential_edit(lm, args.pop("facts"), args.pop("method"), args.pop("batch_size"), progress=False, **args)


def _health(**kw):
    from lens_memory.harness.lifelong import HealthConfig

    return HealthConfig(**kw)


def _cli(*argv):
    from lens_memory.cli import main

    rc = main(list(argv))
    if rc != 0:
        raise SystemExit(rc)


def _store(tmp):
    from lens_memory.rag import DocumentStore

    s = DocumentStore(tmp / "store")
    s.add("first", doc_id="d1")
    return s


ROWS: list[Row] = [
    # configs
    Row("trace n_samples=0", lambda lm, t: __import__("lens_memory.trace", fromlist=["TraceConfig"]).TraceConfig(n_samples=0),
        ValueError, "n_samples must be a positive integer, got 0"),
    Row("trace noise=inf", lambda lm, t: __import__("lens_memory.trace", fromlist=["TraceConfig"]).TraceConfig(noise=float("inf")),
        ValueError, "got inf"),
    Row("trace noise='loud'", lambda lm, t: __import__("lens_memory.trace", fromlist=["TraceConfig"]).TraceConfig(noise="loud"),
        ValueError, "'loud'"),
    Row("trace noise_multiplier=nan", lambda lm, t: __import__("lens_memory.trace", fromlist=["TraceConfig"]).TraceConfig(
        noise_multiplier=float("nan")), ValueError, "nan"),
    Row("trace kinds unknown", lambda lm, t: __import__("lens_memory.trace", fromlist=["TraceConfig"]).TraceConfig(
        kinds=("hidden", "mlpp")), ValueError, "'mlpp'"),
    Row("trace engine", lambda lm, t: __import__("lens_memory.trace", fromlist=["TraceConfig"]).TraceConfig(engine="turbo"),
        ValueError, "'turbo'"),
    Row("trace window=0", lambda lm, t: __import__("lens_memory.trace", fromlist=["TraceConfig"]).TraceConfig(window=0),
        ValueError, "got 0"),
    Row("rome key_mode", lambda lm, t: __import__("lens_memory.edit", fromlist=["RomeConfig"]).RomeConfig(key_mode="mean"),
        LensMemoryError, "'mean'"),
    Row("memit layers=()", lambda lm, t: __import__("lens_memory.edit", fromlist=["MemitConfig"]).MemitConfig(layers=()),
        LensMemoryError, r"got \(\)"),
    Row("stats n_tokens=-5", lambda lm, t: __import__("lens_memory.edit.stats", fromlist=["StatsConfig"]).StatsConfig(
        n_tokens=-5), LensMemoryError, "-5"),
    Row("memory top_k=0", lambda lm, t: __import__("lens_memory.memory", fromlist=["MemoryConfig"]).MemoryConfig(top_k=0),
        LensMemoryError, "got 0"),
    Row("memory position", lambda lm, t: __import__("lens_memory.memory", fromlist=["MemoryConfig"]).MemoryConfig(
        position="diagonal"), LensMemoryError, "'diagonal'"),
    Row("memory layers='most'", lambda lm, t: __import__("lens_memory.memory", fromlist=["MemoryConfig"]).MemoryConfig(
        layers="most"), LensMemoryError, "'most'"),
    Row("caa form", lambda lm, t: __import__("lens_memory.steer", fromlist=["CAAConfig"]).CAAConfig(form="xy"),
        LensMemoryError, "'xy'"),
    Row("caa batch_size=0", lambda lm, t: __import__("lens_memory.steer", fromlist=["CAAConfig"]).CAAConfig(batch_size=0),
        LensMemoryError, "got 0"),
    # facts and templates
    Row("fact without slot", lambda lm, t: _fact(template="The tower is in"), FactFormatError, "'The tower is in'"),
    Row("fact two slots", lambda lm, t: _fact(template="{} is {}"), FactFormatError, r"'\{\} is \{\}'"),
    Row("fact '{0} … {}'", lambda lm, t: _fact(template="{0} near {}"), FactFormatError, r"'\{0\} near \{\}'"),
    Row("fact named field", lambda lm, t: _fact(template="{city} {}"), FactFormatError, r"\{city\}"),
    Row("fact empty subject", lambda lm, t: _fact(subject="  "), FactFormatError, "'subject'"),
    Row("fact paraphrases a string", lambda lm, t: _fact(paraphrases="one"), FactFormatError, "'paraphrases'"),
    Row("facts file missing keys", lambda lm, t: (t / "f.json").write_text(json.dumps([{"subject": "X"}]))
        and __import__("lens_memory.facts", fromlist=["load_facts"]).load_facts(str(t / "f.json")),
        FactFormatError, "record 0"),
    Row("facts file not JSON", lambda lm, t: (t / "g.json").write_text("[{") and
        __import__("lens_memory.facts", fromlist=["load_facts"]).load_facts(str(t / "g.json")), LensMemoryError, "g.json"),
    Row("rag template without query", lambda lm, t: __import__("lens_memory.rag", fromlist=["assemble_prompt"]).assemble_prompt(
        "q", ["doc"], "{context} only"), LensMemoryError, "'{context} only'"),
    Row("rag empty query", lambda lm, t: __import__("lens_memory.rag", fromlist=["assemble_prompt"]).assemble_prompt(
        "", ["doc"]), LensMemoryError, "got ''"),
    Row("context without documents", lambda lm, t: __import__("lens_memory.rag", fromlist=["ContextArtifact"]).ContextArtifact([]),
        LensMemoryError, "at least one document"),
    # models, layers, devices, lengths
    Row("layer out of range", lambda lm, t: lm.check_layer(99), LayerOutOfRangeError, "99"),
    Row("layer negative", lambda lm, t: lm.check_layer(-1), LayerOutOfRangeError, "-1"),
    Row("layer a bool", lambda lm, t: lm.check_layer(True), LayerOutOfRangeError, "True"),
    Row("device cuda without GPU", lambda lm, t: __import__("lens_memory.devices", fromlist=["x"]).resolve_device("cuda:7"),
        DeviceUnavailableError, "'cuda:7'"),
    Row("device unknown", lambda lm, t: __import__("lens_memory.devices", fromlist=["x"]).resolve_device("tpu"),
        DeviceUnavailableError, "'tpu'"),
    Row("dtype int8", lambda lm, t: __import__("lens_memory.devices", fromlist=["x"]).resolve_dtype("int8"),
        DeviceUnavailableError, "'int8'"),
    Row("unknown model", lambda lm, t: __import__("lens_memory.models", fromlist=["x"]).load_model(str(t / "no-such-model")),
        LensMemoryError, "no-such-model"),
    Row("generate past the context", lambda lm, t: __import__("lens_memory.generation", fromlist=["x"]).generate(
        lm, ["hello"], max_new_tokens=lm.n_ctx), InputTooLongError, "max_new_tokens="),
    Row("generate zero tokens", lambda lm, t: __import__("lens_memory.generation", fromlist=["x"]).generate(
        lm, ["hello"], max_new_tokens=0), ValueError, "got 0"),
    # artifacts and their files
    Row("save over a user directory", lambda lm, t: _vec(lm).save(t / "earlier"), ArtifactMismatchError,
        "earlier: it is not a lens_memory steering_vector"),
    Row("save over a file", lambda lm, t: _vec(lm).save(t / "earlier" / "notes.txt"), ArtifactMismatchError, "it is a file"),
    Row("load a missing artifact", lambda lm, t: load_artifact(t / "nothing", "edit"), ArtifactMismatchError, "nothing"),
    Row("load the wrong kind", lambda lm, t: load_artifact(t / "earlier" / "vec", "edit"), ArtifactMismatchError,
        "not a saved edit"),
    Row("load a corrupt tensor file", lambda lm, t: _corrupt_vector_file(lm, t), ArtifactMismatchError,
        "steering_vector.safetensors"),
    Row("load with a missing key", lambda lm, t: _missing_key(lm, t), ArtifactMismatchError, "'layers'"),
    Row("reserved metadata key", lambda lm, t: save_artifact(t / "r", "x", {"manifest": 1}), ValueError, "'manifest'"),
    # applying artifacts
    Row("steering strength nan", lambda lm, t: _vec(lm).apply(lm, float("nan")), ValueError, "nan"),
    Row("steering positions", lambda lm, t: _vec(lm).apply(lm, 1.0, positions="some"), ValueError, "'some'"),
    Row("steering twice", lambda lm, t: _twice(lambda: _vec(lm), lm), LensMemoryError, "already applied"),
    Row("steering of another model", lambda lm, t: _vec(lm, model={**lm.identity.to_dict(), "weight_hash": "ab" * 32}).apply(lm),
        ArtifactMismatchError, "weights abababababab"),
    Row("steering vector of wrong width", lambda lm, t: __import__("lens_memory.steer", fromlist=["x"]).SteeringVector(
        "caa", {1: torch.ones(3)}, "toy").apply(lm), ArtifactMismatchError, r"shape \(3,\)"),
    Row("second memory bank", lambda lm, t: _second_bank(lm), LensMemoryError, "already attached"),
    Row("empty memory reference", lambda lm, t: __import__("lens_memory.memory", fromlist=["x"]).encode_memory(lm, ["  "]),
        LensMemoryError, "'  '"),
    Row("memory subset unknown id", lambda lm, t: _bank(lm).subset(["nope"]), LensMemoryError, "'nope'"),
    Row("rome with key statistics of other weights", lambda lm, t: _foreign_stats(lm), LensMemoryError,
        "not on 'tiny''s current weights"),
    Row("decompose with an SAE of another hook", lambda lm, t: _sae_of_another_hook(lm), LensMemoryError,
        "trained at 'blocks.0.hook_resid_post'"),
    # retrieval
    Row("unknown retriever", lambda lm, t: __import__("lens_memory.rag", fromlist=["x"]).get_retriever("tfidf", _store(t)),
        LensMemoryError, "'tfidf'"),
    Row("update a missing document", lambda lm, t: _store(t).update("d9", "x"), LensMemoryError, "d9"),
    Row("store on a corrupt file", lambda lm, t: __import__("lens_memory.rag", fromlist=["x"]).DocumentStore(
        t / "earlier" / "notes.txt"), ArtifactMismatchError, "notes.txt"),
    # command line
    Row("cli --limit -1", lambda lm, t: _cli("memory", "--model", "tiny", "--out", str(t / "o"), "--limit", "-1"),
        SystemExit, "2"),
    Row("cli --out is a file", lambda lm, t: _cli("models", "--out", str(t / "earlier" / "notes.txt")), SystemExit, "2"),
    Row("cli figures without a run", lambda lm, t: _cli("figures", "--run", str(t / "none"), "--out", str(t / "f")),
        SystemExit, "2"),
    # -- running on a cluster (lens_memory.parallel) --
    Row("key statistics shards=0", lambda lm, t: __import__("lens_memory.edit", fromlist=["key_statistics"]).key_statistics(
        lm, 1, __import__("lens_memory.edit", fromlist=["StatsConfig"]).StatsConfig(n_tokens=64), use_cache=False, shards=0),
        LensMemoryError, "shards must be a positive integer, got 0"),
    Row("ray workers=0", lambda lm, t: __import__("lens_memory.parallel", fromlist=["RayExecutor"]).RayExecutor(workers=0),
        LensMemoryError, "workers must be a positive integer, got 0"),
    Row("ray chunk_size='big'", lambda lm, t: __import__("lens_memory.parallel", fromlist=["RayExecutor"]).RayExecutor(
        chunk_size="big"), LensMemoryError, "chunk_size must be a positive integer, got 'big'"),
    Row("cli --workers 0", lambda lm, t: _cli("trace", "--model", "tiny", "--out", str(t / "o"), "--ray", "--workers", "0"),
        SystemExit, "2"),
    # -- lifelong editing (lens_memory.edit.sequence, alphaedit, harness.lifelong) --
    Row("sequential method 'ft'", lambda lm, t: _seq(lm, method="ft"), LensMemoryError, "got 'ft'"),
    Row("sequential config of another method", lambda lm, t: _seq(lm, method="memit", config=__import__(
        "lens_memory.edit", fromlist=["RomeConfig"]).RomeConfig(layer=1)), LensMemoryError,
        "is not a config of method 'memit'"),
    Row("sequential batch_size=0", lambda lm, t: _seq(lm, batch_size=0), LensMemoryError,
        "batch_size must be an integer >= 1, got 0"),
    Row("sequential health='yes'", lambda lm, t: _seq(lm, health="yes"), LensMemoryError, "got str"),
    Row("sequential checkpoint on a user directory", lambda lm, t: _seq(lm, checkpoint=t / "earlier"), LensMemoryError,
        "is not a saved edit sequence"),
    Row("held-out fact also edited", lambda lm, t: _seq(lm, health=_health(heldout=(_fact(),))), LensMemoryError,
        "held-out facts must not be edited"),
    Row("alphaedit nullspace_threshold=0", lambda lm, t: __import__("lens_memory.edit.alphaedit", fromlist=["x"])
        .AlphaEditConfig(nullspace_threshold=0), LensMemoryError, "nullspace_threshold must be > 0, got 0"),
    Row("alphaedit l2=-1", lambda lm, t: __import__("lens_memory.edit.alphaedit", fromlist=["x"]).AlphaEditConfig(l2=-1),
        LensMemoryError, "l2 must be >= 0, got -1"),
    Row("health every=0", lambda lm, t: _health(every=0), LensMemoryError, "every must be an integer >= 1, got 0"),
    Row("health threshold of an unknown metric", lambda lm, t: _health(thresholds={"fluency": ("min", 1.0)}),
        LensMemoryError, r"thresholds\['fluency'\]"),
    Row("cli --batch-size 0", lambda lm, t: _cli("edit", "--model", "tiny", "--out", str(t / "o"), "--sequential",
                                                  "--batch-size", "0"), SystemExit, "2"),
    # -- localization tests (lens_memory.trace.atp, lens_memory.localize) --
    Row("atp engine with a severed kind", lambda lm, t: __import__("lens_memory.trace", fromlist=["x"]).TraceConfig(
        kinds=("hidden", "hidden_sever_mlp"), engine="atp"), ValueError, r"not \['hidden_sever_mlp'\]"),
    Row("atp_fixes 'gd'", lambda lm, t: __import__("lens_memory.trace", fromlist=["x"]).TraceConfig(
        engine="atp*", atp_fixes=("gd",)), ValueError, r"atp_fixes \['gd'\]"),
    Row("sweep method 'ft'", lambda lm, t: __import__("lens_memory.localize", fromlist=["x"]).SweepConfig(method="ft"),
        LensMemoryError, "got 'ft'"),
    Row("sweep memit_width=0", lambda lm, t: __import__("lens_memory.localize", fromlist=["x"]).SweepConfig(
        memit_width=0), LensMemoryError, "memit_width must be a positive integer, got 0"),
    Row("sweep layer 99", lambda lm, t: __import__("lens_memory.localize", fromlist=["x"]).edit_layer_sweep(
        lm, [_fact()], __import__("lens_memory.localize", fromlist=["x"]).SweepConfig(layers=(99,))),
        LensMemoryError, "sweep layer 99 is outside"),
    Row("hase grids of two shapes", lambda lm, t: __import__("lens_memory.localize", fromlist=["x"]).hase_regression(
        [[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0]]), LensMemoryError, r"got \(2, 2\) and \(1, 2\)"),
    Row("hase grid with a NaN", lambda lm, t: __import__("lens_memory.localize", fromlist=["x"]).hase_regression(
        [[1.0, float("nan")], [3.0, 4.0]], [[1.0, 2.0], [0.0, 1.0]]), LensMemoryError, "a NaN or inf"),
    Row("validation threshold small=2", lambda lm, t: __import__("lens_memory.localize", fromlist=["x"]).validate_estimate(
        None, None, small=2), LensMemoryError, "small=2"),
    Row("cli localize --estimators atp2", lambda lm, t: _cli("localize", "--model", "tiny", "--out", str(t / "o"),
                                                              "--estimators", "atp2", "--no-sweep"), SystemExit, "2"),
    Row("cli localize --kinds without mlp", lambda lm, t: _cli("localize", "--model", "tiny", "--out", str(t / "o"),
                                                                "--kinds", "hidden"), SystemExit, "2"),
    Row("rome key_mode rrome_prefix (renamed)", lambda lm, t: __import__("lens_memory.edit", fromlist=["RomeConfig"])
        .RomeConfig(key_mode="rrome_prefix"), LensMemoryError, "now called 'rrome'"),
    Row("hase n_perm=-1", lambda lm, t: __import__("lens_memory.localize", fromlist=["x"]).hase_regression(
        [[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [0.0, 1.0]], n_perm=-1), LensMemoryError, "n_perm"),
    Row("cli r-ROME on two layers", lambda lm, t: _cli("edit", "--model", "tiny", "--out", str(t / "o"), "--method",
                                                        "rrome", "--layers", "1,2", "--sequential"), SystemExit, "2"),
]


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_table_has_at_least_40_rows():
    assert len(ROWS) >= 40 and len({r.name for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input(row: Row, tiny, tmp_path, capsys):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "notes.txt").write_text("a user's own notes")
    _vec(tiny).save(earlier / "vec")
    before = _tree_digest(earlier)
    with pytest.raises(row.error, match=row.match):
        row.call(tiny, tmp_path)
    assert _tree_digest(earlier) == before, "an earlier result was touched"
    assert tiny.handles == [], "a refused application left something applied"
    if row.error is SystemExit:
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lens-memory: error:") or "usage:" in err[0], err


def test_models_needs_no_out(capsys):
    """Defect 10: `models` required --out and failed only after its work."""
    _cli("models")
    assert '"command": "models"' in capsys.readouterr().out
