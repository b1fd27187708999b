"""The conformance matrix: every capability on a tiny random model of every family, each measured against
an independent reference (the model's own Hugging Face forward, the reference tracing engine, the update
equations), and the README's family x capability table is the one these measurements generate."""

import re
from pathlib import Path

import pytest
import torch

from lens_memory.conformance import COLUMNS, ConformanceMatrix, check_family, conformance_matrix, verdicts
from lens_memory.families import FAMILIES, LLAMA_LAYOUT, UnsupportedArchitectureError, family_of
from lens_memory.stack import attention_layer_types
from lens_memory.tiny import TINY_ARCHS, tiny_arch_model
from lens_memory.trace import TraceConfig, engine_for

README = Path(__file__).resolve().parents[2] / "README.md"
_ROWS: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _stop_ray_afterwards():
    """The parallel column starts a local Ray instance and leaves it for the next family; stop it after this module."""
    yield
    import sys

    if sys.modules.get("ray") is not None and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


def _row(arch):
    if arch not in _ROWS:
        _ROWS[arch] = check_family(arch)
    return _ROWS[arch]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_family_conforms(arch):
    m = _row(arch)
    failed = [c for c, ok in verdicts(m).items() if not ok]
    assert not failed, (failed, m)
    # the thresholds, spelled out (verdicts() is what the README table shows)
    assert m["forward_max_diff"] <= 1e-5 and m["trace_max_diff"] <= 1e-5 and m["trace_fast_path"]
    assert m["atp_rel_err"] <= 0.1 and m["atp_rel_err"] <= m["atp_rel_err_coarse"] / 2 and m["atp_qk_active"]
    assert m["atp_graddrop_last_err"] <= 1e-5 and m["atp_graddrop_active"]
    assert m["memory_prefix_diff"] <= 1e-4 and m["rome_equation_err"] <= 1e-4
    assert m["lifelong_nullspace_err"] <= 1e-5 and m["lifelong_ordered"] and m["lifelong_restored"]
    if not m["memit_post_norm"]:
        assert m["memit_miss"] < 1e-4


def test_families_cover_every_layout_and_position_scheme():
    layouts = {a: _row(a)["layout"] for a in ("gpt2", "gptj", "gpt_neox", "llama", "phi3")}
    assert layouts == {"gpt2": "gpt2", "gptj": "gptj", "gpt_neox": "gpt_neox", "llama": LLAMA_LAYOUT.name,
                       "phi3": LLAMA_LAYOUT.name}
    assert {_row(a)["positions"] for a in ("gpt2", "gptj", "gpt_neox")} == {"absolute", "rotary_interleaved", "rotary"}
    assert {_row(a)["memit_post_norm"] for a in TINY_ARCHS} == {True, False}
    assert [a for a in TINY_ARCHS if _row(a)["memit_post_norm"]] == ["gemma2", "gemma3", "olmo2"]


def test_readme_table_is_the_generated_matrix(tmp_path):
    m = ConformanceMatrix([_row(a) for a in TINY_ARCHS])
    assert m.all_pass
    text = README.read_text()
    found = re.search(r"<!-- conformance:start -->\n(.*?)\n<!-- conformance:end -->", text, re.S)
    assert found, "README lacks the conformance table markers"
    assert found.group(1).strip() == m.to_markdown()
    back = ConformanceMatrix.load(m.save(tmp_path / "c"))
    assert back.verdicts() == m.verdicts() and list(m.to_dataframe().columns[:4]) == ["family", "device", "dtype", "architecture"]


def test_unknown_layouts_are_refused_by_name_not_silently_slow():
    class Config:
        model_type = "mamba"

    class Model:
        config = Config()

    with pytest.raises(UnsupportedArchitectureError, match="mamba.*FAMILIES"):
        family_of(Model())
    lm_bad = type("Bad", (), {"hf": Model(), "_stack": None, "stack": property(lambda s: family_of(s.hf))})()
    with pytest.raises(UnsupportedArchitectureError, match="engine='reference'"):
        engine_for(lm_bad, TraceConfig())
    assert engine_for(lm_bad, TraceConfig(engine="reference")).__name__ == "reference_scores"
    assert set(FAMILIES) == {"gpt2", "gptj", "gpt_neox"}


def test_conformance_rejects_unknown_families():
    with pytest.raises(ValueError, match="'bert'"):
        conformance_matrix(["bert"])
    assert COLUMNS[0] == "forward"


def test_mistral_without_layer_types_slides_on_every_layer():
    lm = tiny_arch_model("mistral")
    assert getattr(lm.hf.config, "layer_types", None) in (None, [])
    assert lm.stack.layer_types == ["sliding_attention"] * lm.n_layers
    assert attention_layer_types(tiny_arch_model("llama").hf.config) == ["full_attention"] * 3


@torch.no_grad()
def test_gpt2_memory_moves_the_query_not_the_keys():
    """Absolute positions: the query after BOS runs at positions L_mem.., BOS stays at 0, and detaching undoes it."""
    from lens_memory.memory import MemoryConfig, encode_memory

    lm = tiny_arch_model("gpt2")
    bank = encode_memory(lm, ["The Colosseum is in Rome."], MemoryConfig(layers="all"))
    seen = []
    h = lm.stack.pos_embed.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
    try:
        ids = lm.encode("It is in")[None]
        with bank.apply(lm) as handle:
            lm.hf(input_ids=ids)
        lm.hf(input_ids=ids)
    finally:
        h.remove()
    n = ids.shape[1]
    shift = handle.n_positions
    assert shift == bank.n_positions() - 1 > 0
    assert seen[0][0].tolist() == [0] + [i + shift for i in range(1, n)]
    assert seen[1][0].tolist() == list(range(n))


@pytest.mark.parametrize("arch", ("olmo", "gpt_neox"))
def test_bfloat16_partial_forward_is_the_hf_forward_and_steering_restores(arch):
    """OLMo's float32 rotary tables made bf16 partial forwards fail (dtype mix without a cache); LM-Steer trained
    float32 maps against a bf16 unembedding. Both now run, and the partial forward stays bit-identical."""
    from lens_memory.conformance import check_forward, check_steering

    lm = tiny_arch_model(arch, dtype=torch.bfloat16)
    assert check_forward(lm)["forward_max_diff"] == 0.0
    assert all(check_steering(lm).values())
