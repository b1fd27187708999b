"""The persistence layer and the artifact protocol: what every artifact kind shares.

Persistence: a manifest with hashes, whole-directory atomic swaps, foreign files never deleted,
readable modes, leftovers of killed writers swept or recovered. Protocol: one Handle, idempotent
remove, registration on the model, identity by weight hash, refusals of double application.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
import torch

from lens_memory.artifacts import Handle, applied, check_identity, load_artifact, save_artifact
from lens_memory.errors import ArtifactMismatchError, LensMemoryError
from lens_memory.io import write_json
from lens_memory.steer import SteeringVector


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_round_trip_and_manifest(tmp_path):
    t = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, 1)[:, 0]}
    out = save_artifact(tmp_path / "x", "thing", {"n": 3, "names": ["p", "q"]}, t)
    meta, back = load_artifact(out, "thing")
    assert meta["n"] == 3 and meta["format"] == "lens_memory.thing/1"
    assert set(meta["manifest"]["files"]) == {"thing.safetensors"}
    assert all(torch.equal(back[k], v) for k, v in t.items())


def test_files_are_readable_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        save_artifact(tmp_path / "x", "thing", {"n": 1}, {"a": torch.zeros(2)})
        write_json(tmp_path / "s.json", {"a": 1})
    finally:
        os.umask(old)
    for p in [tmp_path / "x", tmp_path / "x" / "thing.json", tmp_path / "x" / "thing.safetensors", tmp_path / "s.json"]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o044 == 0o044, (p, oct(mode))


def test_foreign_directory_is_refused_and_untouched(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("precious")
    with pytest.raises(ArtifactMismatchError, match="not a lens_memory thing"):
        save_artifact(d, "thing", {"n": 1})
    assert (d / "notes.txt").read_text() == "precious" and {p.name for p in d.iterdir()} == {"notes.txt"}
    save_artifact(tmp_path / "a", "other", {"n": 1})
    with pytest.raises(ArtifactMismatchError, match="not a lens_memory thing"):
        save_artifact(tmp_path / "a", "thing", {"n": 1})
    with pytest.raises(ArtifactMismatchError, match="it is a file"):
        (tmp_path / "f").write_text("x")
        save_artifact(tmp_path / "f", "thing", {"n": 1})


def test_user_file_added_to_an_artifact_blocks_replacement(tmp_path):
    save_artifact(tmp_path / "a", "thing", {"n": 1})
    (tmp_path / "a" / "mine.csv").write_text("1,2")
    with pytest.raises(ArtifactMismatchError, match="mine.csv"):
        save_artifact(tmp_path / "a", "thing", {"n": 2})
    assert (tmp_path / "a" / "mine.csv").exists()


def test_same_kind_is_replaced_whole(tmp_path):
    save_artifact(tmp_path / "a", "thing", {"n": 1}, {"old": torch.zeros(1)})
    save_artifact(tmp_path / "a", "thing", {"n": 2})
    meta, t = load_artifact(tmp_path / "a", "thing")
    assert meta["n"] == 2 and t == {} and not (tmp_path / "a" / "thing.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary or old directory left


def test_a_mixed_artifact_is_detected(tmp_path):
    """Defect 6: tensors of one save with the metadata of another must not load."""
    save_artifact(tmp_path / "a", "thing", {"n": 1}, {"x": torch.zeros(3)})
    save_artifact(tmp_path / "b", "thing", {"n": 2}, {"x": torch.ones(3)})
    (tmp_path / "a" / "thing.safetensors").write_bytes((tmp_path / "b" / "thing.safetensors").read_bytes())
    with pytest.raises(ArtifactMismatchError, match="does not match the manifest"):
        load_artifact(tmp_path / "a", "thing")
    (tmp_path / "a" / "thing.safetensors").unlink()
    with pytest.raises(ArtifactMismatchError, match="missing"):
        load_artifact(tmp_path / "a", "thing")


def test_failed_write_leaves_the_old_result(tmp_path):
    save_artifact(tmp_path / "a", "thing", {"n": 1})

    def boom(d):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_artifact(tmp_path / "a", "thing", {"n": 2}, extra=boom)
    assert load_artifact(tmp_path / "a", "thing")[0]["n"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_kill_between_renames_is_recovered(tmp_path):
    save_artifact(tmp_path / "a", "thing", {"n": 1})
    (tmp_path / "a").rename(tmp_path / f".a.{_dead_pid()}-deadbeef.old")  # the state a kill leaves
    assert load_artifact(tmp_path / "a", "thing")[0]["n"] == 1


def test_orphans_of_killed_writers_are_swept_live_ones_kept(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".s.json.{dead}-abc.part").write_text("half")
    (tmp_path / f".a.{dead}-abc.tmp").mkdir()
    live = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / f".s.json.{live.pid}-abc.part").write_text("writing")
        write_json(tmp_path / "s.json", {"a": 1})
        save_artifact(tmp_path / "a", "thing", {"n": 1})
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted(["a", "s.json", f".s.json.{live.pid}-abc.part"])
    finally:
        live.kill()


def test_reserved_and_missing_keys(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_artifact(tmp_path / "a", "thing", {"format": "x"})
    vec = SteeringVector("caa", {1: torch.ones(4)}, "toy")
    vec.save(tmp_path / "v")
    p = tmp_path / "v" / "steering_vector.json"
    meta = json.loads(p.read_text())
    del meta["behavior"]
    p.write_text(json.dumps(meta))
    with pytest.raises(ArtifactMismatchError, match="'behavior'"):
        SteeringVector.load(tmp_path / "v")


# -- the protocol --------------------------------------------------------------------------------

def test_identity_is_by_weight_hash_not_name(tiny):
    rec = tiny.identity.to_dict()
    check_identity({**rec, "name": "renamed-copy"}, tiny, "thing")  # same weights: accepted
    with pytest.raises(ArtifactMismatchError, match="weights 000000000000"):
        check_identity({**rec, "weight_hash": "0" * 64}, tiny, "thing")  # same name, other weights


def test_steering_twice_is_refused_and_handles_register(tiny):
    v = SteeringVector("caa", {1: torch.randn(tiny.d_model)}, "toy", model=tiny.identity.to_dict())
    before = tiny.next_token_probs("The capital of France is")
    with v.apply(tiny, 2.0) as h:
        assert tiny.handles == [h] and h.kind == "steering"
        with pytest.raises(LensMemoryError, match="already applied"):
            v.apply(tiny, 1.0)
        with v.scaled(0.5).apply(tiny, 1.0):  # another vector at the same hook adds: allowed
            assert len(tiny.handles) == 2
    assert tiny.handles == [] and not h.active
    h.remove()  # idempotent
    assert torch.equal(tiny.next_token_probs("The capital of France is"), before)


def test_applied_removes_in_reverse_after_an_exception(tiny):
    a = SteeringVector("caa", {1: torch.randn(tiny.d_model)}, "a")
    b = SteeringVector("caa", {2: torch.randn(tiny.d_model)}, "b")
    before = tiny.next_token_probs("The capital of France is")
    with pytest.raises(RuntimeError):
        with applied(tiny, a, b, strength=3.0) as hs:
            assert [h.artifact for h in hs] == [a, b]
            raise RuntimeError("user code failed")
    assert tiny.handles == []
    assert torch.equal(tiny.next_token_probs("The capital of France is"), before)


def test_every_handle_is_a_handle(tiny):
    from lens_memory.edit import EditHandle
    from lens_memory.memory.attach import MemoryHandle
    from lens_memory.rag import ContextArtifact, ContextHandle
    from lens_memory.steer.vector import SteeringHandle

    assert all(issubclass(c, Handle) for c in (EditHandle, MemoryHandle, ContextHandle, SteeringHandle))
    with ContextArtifact(["Paris is in France."]).apply(tiny) as h:
        assert h.kind == "context" and tiny.handles == [h]
    assert tiny.handles == []
