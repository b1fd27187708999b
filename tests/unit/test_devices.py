"""Devices and dtypes by name: load_model, the CLI and the report accept them and refuse bad ones clearly."""

from __future__ import annotations

import pytest
import torch

from lens_memory.devices import resolve_device, resolve_dtype
from lens_memory.errors import DeviceUnavailableError

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("name, expected", [("float32", torch.float32), ("fp32", torch.float32),
                                            ("bfloat16", torch.bfloat16), ("BF16", torch.bfloat16),
                                            ("torch.float16", torch.float16), (torch.float16, torch.float16)])
def test_dtype_names(name, expected):
    assert resolve_dtype(name) is expected


@pytest.mark.parametrize("bad", ["float8", "int8", torch.int64, None])
def test_unknown_dtype_is_refused_by_name(bad):
    with pytest.raises(DeviceUnavailableError, match=repr(bad) if isinstance(bad, str) else "dtype"):
        resolve_dtype(bad)


def test_device_names():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(torch.device("cpu")) == "cpu"
    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceUnavailableError, match="'tpu9'"):
        resolve_device("tpu9")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("dev", ["cuda", "cuda:1", "CUDA:0"])
def test_cuda_asked_for_and_absent_is_one_clear_error(dev):
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        resolve_device(dev)


def test_load_model_takes_dtype_names_and_records_them():
    from lens_memory.models import load_model

    lm = load_model("tiny", dtype="bfloat16")
    assert lm.identity.dtype == "bfloat16" and next(lm.hf.parameters()).dtype is torch.bfloat16
    ref = load_model("tiny")
    ids = ref.encode("The Eiffel Tower is in")[None]
    with torch.no_grad():
        a, b = ref.hf(ids).logits, lm.hf(ids).logits.float()
    assert (a - b).abs().max() < 0.1 * a.abs().max()  # the same weights, rounded


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cli_refuses_an_absent_gpu_in_one_line(tmp_path, capsys):
    from lens_memory.cli import main

    assert main(["trace", "--model", "tiny", "--device", "cuda", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "CUDA is not available" in err


def test_report_config_keys_the_cache_on_a_non_default_dtype_only():
    from lens_memory.errors import LensMemoryError
    from lens_memory.report.pipeline import ReportConfig

    default, half = ReportConfig(), ReportConfig(dtype="bfloat16")
    assert "dtype" not in default.stage_config("rome")
    assert half.stage_config("rome")["dtype"] == "bfloat16" and half.stage_config("steer_caa")["dtype"] == "bfloat16"
    assert default.stage_config("rome") != half.stage_config("rome")
    with pytest.raises(LensMemoryError, match="'float8'"):
        ReportConfig(dtype="float8")


def test_device_map_loads_a_saved_model_through_accelerate_and_matches_the_plain_load(tmp_path):
    """device_map="auto" is passed through to from_pretrained and the model works as the plain load does.

    On a machine without a GPU transformers places everything on the CPU without accelerate's dispatch
    hooks (no ``hf_device_map``), so this checks the plumbing, not a multi-GPU split."""
    import transformers as tf

    from lens_memory.models import load_model
    from lens_memory.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = tf.GPTNeoXConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                           max_position_embeddings=256, rotary_pct=0.25, vocab_size=len(tok),
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, initializer_range=0.2)
    torch.manual_seed(0)
    d = tmp_path / "neox"
    tf.GPTNeoXForCausalLM(cfg).save_pretrained(d)  # a plain HF directory (bridge-wrapped models do not save)
    tok.save_pretrained(d)
    plain = load_model(str(d))
    mapped = load_model(str(d), device_map="auto")
    assert {str(p.device) for p in mapped.hf.parameters()} == {"cpu"}
    ids = plain.encode("The Eiffel Tower is in")[None]
    st_p, st_m = plain.stack, mapped.stack
    with torch.no_grad():
        a = st_p.logits(st_p.run(st_p.embed(ids)))
        b = st_m.logits(st_m.run(st_m.embed(ids.to(mapped.device))))
    assert torch.equal(a, b.to(a.device))
    with pytest.raises(ValueError, match="device_map='auto' applies to Hugging Face ids"):
        load_model("tiny", device_map="auto")
