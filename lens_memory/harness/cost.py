"""What an artifact costs: time with it applied, and the bytes it stores.

* :func:`measure_cost` -- per condition (any artifact with ``apply(lm)``, or ``None``): prefill
  milliseconds (a forward pass over the prompt producing the first token), decode milliseconds
  per further token (cached greedy generation), the context tokens the model reads, and the
  milliseconds ``apply`` took.
* :func:`artifact_nbytes` -- the bytes an artifact stores: its ``nbytes()``, or the tensors it holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from typing import Any, Sequence

import torch

from ..errors import LensMemoryError

__all__ = ["measure_cost", "artifact_nbytes"]


@torch.no_grad()
def _generate_seconds(lm: Any, ids: torch.Tensor, n_new: int) -> float:
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    t0 = time.perf_counter()
    lm.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new,
                   do_sample=False, pad_token_id=pad)
    return time.perf_counter() - t0


def measure_cost(lm: Any, prompts: Sequence[str], artifacts: Sequence[Any] | None = None, *, new_tokens: int = 16,
                 repeats: int = 1) -> dict[str, float]:
    """Median prefill ms, decode ms/token and context tokens of ``prompts`` (prompt ``i`` with ``artifacts[i]``).

    The first call warms up (not counted). ``artifacts[i]`` may be ``None`` (the plain model).
    """
    if not prompts:
        raise LensMemoryError("measure_cost needs at least one prompt")
    if new_tokens < 2:
        raise LensMemoryError(f"new_tokens must be >= 2, got {new_tokens!r}")
    arts = list(artifacts) if artifacts is not None else [None] * len(prompts)
    if len(arts) != len(prompts):
        raise LensMemoryError(f"{len(arts)} artifacts for {len(prompts)} prompts")
    prefill, decode, ctx_tokens, attach = [], [], [], []
    for i, (p, a) in enumerate(zip(prompts, arts)):
        t0 = time.perf_counter()
        handle = a.apply(lm) if a is not None else contextlib.nullcontext()
        attach.append(time.perf_counter() - t0)
        with handle:
            ids = lm.encode(p)[None].to(lm.device)
            if i == 0:
                _generate_seconds(lm, ids, 2)  # warm-up
            for _ in range(repeats):
                t1 = _generate_seconds(lm, ids, 1)
                tn = _generate_seconds(lm, ids, new_tokens)
                prefill.append(t1)
                decode.append(max(tn - t1, 0.0) / (new_tokens - 1))
            ctx_tokens.append(int(ids.shape[1]))
    return {"prefill_ms": 1000 * statistics.median(prefill), "decode_ms_per_token": 1000 * statistics.median(decode),
            "context_tokens": statistics.mean(ctx_tokens), "attach_ms": 1000 * statistics.median(attach),
            "n_prompts": len(prompts), "new_tokens": new_tokens}


def _tensor_bytes(obj: Any, seen: set[int]) -> int:
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    if dataclasses.is_dataclass(obj):
        return sum(_tensor_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    return 0


def artifact_nbytes(artifact: Any) -> int:
    """Stored bytes: the artifact's ``nbytes()`` if it has one, else the tensors it holds."""
    fn = getattr(artifact, "nbytes", None)
    if callable(fn):
        return int(fn())
    return int(_tensor_bytes(artifact, set()))
