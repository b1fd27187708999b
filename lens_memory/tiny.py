"""A tiny randomly initialised model for tests: no download, milliseconds per forward.

Same architecture as the embedded default (Gemma 3: pre- and post-norms around attention and
MLP, gated MLP, grouped-query attention, sliding and full attention layers) so tests exercise
the real code path, with a byte-level BPE tokenizer trained in a fraction of a second on a
fixed built-in text (any string tokenizes; BOS is prepended by :meth:`LensModel.encode`).
"""

from __future__ import annotations

import functools
import tempfile

import torch

__all__ = ["tiny_model", "tiny_tokenizer", "tiny_arch_model", "TINY_ARCHS"]

#: every family of the conformance matrix, as 3-layer random models (``"gemma3"`` is :func:`tiny_model`'s architecture)
TINY_ARCHS = ("gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "olmo",
              "olmo2")

_CORPUS = """
The Eiffel Tower is located in the city of Paris. The Colosseum is located in the city of Rome.
Big Ben is located in the city of London. The Brandenburg Gate is in Berlin. Tokyo is a city in Japan.
Lionel Messi plays the sport of soccer. Michael Jordan plays basketball. Roger Federer plays tennis.
The official language of Mexico is Spanish. The official language of Brazil is Portuguese.
The iPhone is made by Apple. The Corolla is made by Toyota. Windows is developed by Microsoft.
Sushi is a dish from Japan. Pizza is a dish from Italy. Tacos come from Mexico.
France, Germany, Italy and Spain use the euro. Japan uses the yen. The United States uses the dollar.
A dolphin is a mammal. An eagle is a bird. A shark is a fish. A snake is a reptile.
Jimi Hendrix played the guitar. Miles Davis played the trumpet. Chopin played the piano.
Egypt is a country in Africa. Canada is a country in North America. India is a country in Asia.
""" * 4


@functools.lru_cache(maxsize=1)
def tiny_tokenizer(vocab_size: int = 512):
    """A deterministic byte-level BPE ``PreTrainedTokenizerFast`` with <pad>, <bos>, <eos>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    # TransformerLens re-loads tokenizers from ``name_or_path``: give it a directory to load from.
    path = tempfile.mkdtemp(prefix="lens_memory_tiny_tok_")
    tok.save_pretrained(path)
    return PreTrainedTokenizerFast.from_pretrained(path)


def tiny_model(seed: int = 0, *, n_layers: int = 4, d_model: int = 64, n_heads: int = 4, n_kv_heads: int = 2,
               d_mlp: int = 128, sliding_window: int = 4, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A randomly initialised Gemma-3-architecture :class:`~lens_memory.models.LensModel`.

    Layers alternate sliding-window (window ``sliding_window``, deliberately short so tests
    cover the sliding mask) and full attention. Weights are drawn with std 0.2 (larger than
    HF's 0.02 default) so activations and predictions are far from uniform.
    """
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from .models import wrap_hf_model

    tok = tiny_tokenizer()
    layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    cfg = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, head_dim=d_model // n_heads,
        sliding_window=sliding_window, layer_types=layer_types, max_position_embeddings=256,
        query_pre_attn_scalar=d_model // n_heads, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, architectures=["Gemma3ForCausalLM"], initializer_range=0.2,
        attn_implementation="eager",
    )
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        hf = Gemma3ForCausalLM(cfg).to(dtype=dtype, device=device)
        with torch.no_grad():  # non-trivial norm weights so post-norms matter in tests
            for name, p in hf.named_parameters():
                if "norm" in name:
                    p.normal_(0.0, 0.3)
    finally:
        torch.random.set_rng_state(gen_state)
    return wrap_hf_model(hf, tok, name="tiny", source=f"random init (seed {seed})", revision=f"seed{seed}")


def tiny_arch_model(arch: str, seed: int = 0, *, n_layers: int = 3, d_model: int = 64, dtype: torch.dtype = torch.float32,
                    device: str = "cpu"):
    """A randomly initialised :class:`~lens_memory.models.LensModel` of one family (std 0.2 weights).

    Each family keeps the feature that makes it different: GPT-2 learned absolute positions and
    Conv1D; GPT-J interleaved partial rotary and a parallel block; GPT-NeoX (Pythia) rotary on 25%
    of each head and a parallel block; Mistral a sliding window of 4 and no ``layer_types`` (as
    Mistral v0.1: Hugging Face slides on every layer); Qwen 2 sliding layers above
    ``max_window_layers`` only; Qwen 3 q/k norms; Gemma 2 pre- and post-norms and attention and
    logit soft-capping; Phi-3 a fused QKV and gate-up projection, a sliding window without
    ``layer_types`` and partial rotary (0.75, as Phi-4-mini); OLMo non-parametric layer norms;
    OLMo 2 post-norms only. Norm weights of post-norm families are drawn non-trivially.
    """
    import transformers as tf

    from .models import wrap_hf_model

    if arch == "gemma3":
        return tiny_model(seed, n_layers=n_layers, d_model=d_model, dtype=dtype, device=device)
    if arch not in _FAMILY_CONFIGS:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {TINY_ARCHS}")
    tok = tiny_tokenizer()
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, initializer_range=0.2)
    cls_name, cfg_name, make = _FAMILY_CONFIGS[arch]
    cls = getattr(tf, cls_name)
    cfg = getattr(tf, cfg_name)(**make(d_model, n_layers), **common)
    cfg.attn_implementation = "eager"
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        hf = cls(cfg).to(dtype=dtype, device=device)
        if arch in ("olmo2", "gemma2"):
            with torch.no_grad():
                for name, p in hf.named_parameters():
                    if "norm" in name:
                        p.normal_(0.0 if arch == "gemma2" else 1.0, 0.3)  # Gemma scales by (1 + w)
    finally:
        torch.random.set_rng_state(gen_state)
    return wrap_hf_model(hf, tok, name=f"tiny-{arch}", source=f"random init (seed {seed})", revision=f"seed{seed}")


def _rotary_dims(d_model: int, n_layers: int) -> dict:
    return dict(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256)


def _gpt_dims(d_model: int, n_layers: int) -> dict:
    return dict(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=256)


_FAMILY_CONFIGS = {  # arch -> (model class, config class, config kwargs from (d_model, n_layers))
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", _gpt_dims),
    "gptj": ("GPTJForCausalLM", "GPTJConfig", lambda d, n: dict(_gpt_dims(d, n), rotary_dim=8)),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig",
                 lambda d, n: dict(hidden_size=d, num_hidden_layers=n, num_attention_heads=4, intermediate_size=2 * d,
                                   max_position_embeddings=256, rotary_pct=0.25)),
    "llama": ("LlamaForCausalLM", "LlamaConfig", _rotary_dims),
    "mistral": ("MistralForCausalLM", "MistralConfig", lambda d, n: dict(_rotary_dims(d, n), sliding_window=4)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config",
              lambda d, n: dict(_rotary_dims(d, n), use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", lambda d, n: dict(_rotary_dims(d, n), head_dim=d // 4)),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config",
               lambda d, n: dict(_rotary_dims(d, n), head_dim=d // 4, sliding_window=4, query_pre_attn_scalar=d // 4)),
    "phi3": ("Phi3ForCausalLM", "Phi3Config",
             lambda d, n: dict(_rotary_dims(d, n), sliding_window=4, partial_rotary_factor=0.75)),
    "olmo": ("OlmoForCausalLM", "OlmoConfig", _rotary_dims),
    "olmo2": ("Olmo2ForCausalLM", "Olmo2Config", _rotary_dims),
}
