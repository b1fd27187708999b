"""The hookable model handle: :class:`LensModel`, a TransformerLens bridge plus tokenizer and identity.

BOS and leading-space conventions live here and nowhere else: :meth:`LensModel.encode` prepends
BOS, :meth:`LensModel.continuation_ids` tokenizes a target as the continuation of a prompt (with
its leading space). Loading a model is :func:`lens_memory.models.load_model`.
"""

from __future__ import annotations

import hashlib
import numbers
from typing import Any

import torch
from jaxtyping import Int

from .errors import InputTooLongError, LayerOutOfRangeError, SubjectNotFoundError
from .model_identity import ModelIdentity, state_dict_sha256

__all__ = ["LensModel"]


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
        self.spec: dict[str, Any] | None = None  # load_model's arguments, so a worker can load the same model
        self.executor: Any = None  # set by parallel(): where the suite's loops run (None: in this process)

    def parallel(self, address: str | None = None, workers: int = 2, **options: Any) -> Any:
        """Context manager: the suite's loops on this model run on ``workers`` Ray actors.

        ``address=None`` starts a local Ray instance; ``"auto"`` or ``"ray://host:10001"`` joins a cluster.
        See :mod:`lens_memory.parallel` (results equal a serial run's) and :class:`~lens_memory.parallel.RayExecutor`.
        """
        from .parallel import parallel

        return parallel(self, address, workers, **options)

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
