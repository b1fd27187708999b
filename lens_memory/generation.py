"""Text generation for evaluations: batched, seeded, the prompt conventions of :mod:`lens_memory.models`.

Used for ROME's context prefixes, generation fluency and consistency, and steering evaluations.
Prompts are encoded with :meth:`LensModel.encode` (BOS included) and left-padded into batches;
sampling is top-k (``top_k=None`` means greedy) under a fixed seed, with the global RNG
restored afterwards. Generation goes through the Hugging Face model whose blocks the
TransformerLens bridge wraps, so hooks and applied edits act during generation.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .errors import InputTooLongError

__all__ = ["generate", "left_pad"]


def left_pad(lm: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode ``prompts`` (BOS included) and left-pad them: ``(ids, attention_mask)``, each ``[batch pos]``.

    Every prompt's last token lands in the last column.
    """
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    encs = [lm.encode(p) for p in prompts]
    width = max(len(e) for e in encs)
    ids = torch.full((len(encs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, width - len(e):] = e
        mask[i, width - len(e):] = 1
    return ids, mask


@torch.no_grad()
def generate(lm: Any, prompts: Sequence[str], *, max_new_tokens: int = 50, top_k: int | None = 5, seed: int = 0,
             batch_size: int = 8, resume: tuple[Sequence[str], torch.Tensor] | None = None,
             on_batch: Callable[[list[str], torch.Tensor], None] | None = None) -> list[str]:
    """Continuations (prompt excluded) of each prompt, ``max_new_tokens`` tokens long.

    ``on_batch(done, rng_state)`` is called after every batch with the continuations so far and the
    generator state; passing them back as ``resume=(done, rng_state)`` continues the run where it stopped
    and gives the same continuations, bit for bit, as an uninterrupted run (long samples checkpoint this way).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    out: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if resume is not None:
            out = list(resume[0])
            if len(out) % batch_size or len(out) > len(prompts):
                raise ValueError(f"resume holds {len(out)} continuations: not a whole number of batches of "
                                 f"{batch_size} within {len(prompts)} prompts")
            torch.set_rng_state(resume[1])
        for b in range(len(out), len(prompts), batch_size):
            ids, mask = left_pad(lm, prompts[b:b + batch_size])
            width = ids.shape[1]
            if width + max_new_tokens > lm.n_ctx:
                raise InputTooLongError(f"prompt of {width} tokens + max_new_tokens={max_new_tokens} exceeds the "
                                        f"context of {lm.name} ({lm.n_ctx} positions)")
            kwargs: dict[str, Any] = {"do_sample": top_k is not None, "max_new_tokens": max_new_tokens,
                                      "min_new_tokens": max_new_tokens, "pad_token_id": pad}
            if top_k is not None:
                kwargs.update(top_k=top_k, top_p=1.0, temperature=1.0)
            gen = lm.hf.generate(ids.to(lm.device), attention_mask=mask.to(lm.device), **kwargs)
            out.extend(tok.decode(g[width:], skip_special_tokens=True) for g in gen)
            if on_batch is not None:
                on_batch(out, torch.get_rng_state())
    return out
