"""Residual-stream activations on contrast pairs: what CAA averages and STA feeds through an SAE.

Each pair's prompt is continued once with the positive and once with the negative text; the
activations are read at the *answer* tokens (the continuation), in one batched forward pass per
batch that stops after the deepest requested hook (no later blocks, no logits). Two position
modes, recorded with every vector fitted from them:

* ``"answer_mean"`` -- every continuation token (an example's activation is their mean);
* ``"answer_last"`` -- the continuation's last token only (CAA's "answer token" for one-token answers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int

from ..hooks import capture
from .behaviors import BehaviorFormatError, ContrastPair

__all__ = ["ContrastActivations", "contrast_activations", "POSITIONS", "encode_pair_side"]

POSITIONS = ("answer_mean", "answer_last")


@dataclass
class ContrastActivations:
    """Answer-token activations at one hook for the positive and negative side of each pair."""

    hook: str
    position: str
    positive: Float[torch.Tensor, "n_tok d_model"]
    pos_index: Int[torch.Tensor, "n_tok"]  # which pair each row belongs to
    negative: Float[torch.Tensor, "n_tok d_model"]
    neg_index: Int[torch.Tensor, "n_tok"]
    n_pairs: int

    def per_example(self, side: str) -> Float[torch.Tensor, "n_pairs d_model"]:
        """One activation per pair: the mean over its answer tokens (or its only, last, token)."""
        x, idx = (self.positive, self.pos_index) if side == "positive" else (self.negative, self.neg_index)
        out = torch.zeros(self.n_pairs, x.shape[-1], dtype=torch.float64)
        out.index_add_(0, idx, x.double())
        counts = torch.bincount(idx, minlength=self.n_pairs).clamp_min(1).double()
        return out / counts[:, None]

    def mean_difference(self) -> Float[torch.Tensor, "d_model"]:
        """Mean over pairs of (positive - negative): the CAA vector."""
        return (self.per_example("positive") - self.per_example("negative")).mean(0)


def encode_pair_side(lm: Any, prompt: str, continuation: str) -> tuple[torch.Tensor, int]:
    """Token ids of ``prompt + continuation`` (BOS first) and the index of the first continuation token.

    The prompt and the continuation are tokenized separately, so the answer tokens are exactly
    the continuation's tokens whatever the tokenizer would merge across the boundary.
    """
    p = lm.encode(prompt) if prompt else lm.encode("")
    c = lm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not c:
        raise BehaviorFormatError(f"continuation {continuation!r} has no tokens")
    return torch.cat([p, torch.tensor(c, dtype=torch.long)]), len(p)


@torch.no_grad()
def contrast_activations(lm: Any, pairs: Sequence[ContrastPair], hooks: Sequence[str], *,
                         position: str = "answer_mean", batch_size: int = 16) -> dict[str, ContrastActivations]:
    """Answer-token activations at ``hooks`` for every pair (see the module docstring)."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if not pairs:
        raise BehaviorFormatError("no contrast pairs given")
    seqs: list[tuple[torch.Tensor, int, int, int]] = []  # ids, answer start, pair index, side (0 pos, 1 neg)
    for i, p in enumerate(pairs):
        for side, text in ((0, p.positive), (1, p.negative)):
            ids, start = encode_pair_side(lm, p.prompt, text)
            seqs.append((ids, start, i, side))
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    rows: dict[str, list[list[torch.Tensor]]] = {h: [[], []] for h in hooks}
    index: list[list[torch.Tensor]] = [[], []]
    for b in range(0, len(seqs), batch_size):
        chunk = seqs[b:b + batch_size]
        width = max(len(s[0]) for s in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # right padding: causal, so harmless
        r_idx, p_idx, sides, pairs_of = [], [], [], []
        for j, (s, start, i, side) in enumerate(chunk):
            ids[j, :len(s)] = s
            pos = range(start, len(s)) if position == "answer_mean" else [len(s) - 1]
            r_idx += [j] * len(pos)
            p_idx += list(pos)
            sides += [side] * len(pos)
            pairs_of += [i] * len(pos)
        got = capture(lm, ids, list(hooks), index=(torch.tensor(r_idx), torch.tensor(p_idx)))
        sides_t, pairs_t = torch.tensor(sides), torch.tensor(pairs_of)
        for side in (0, 1):
            m = sides_t == side
            index[side].append(pairs_t[m])
            for h in hooks:
                rows[h][side].append(got[h][m].float().cpu())
    out = {}
    for h in hooks:
        out[h] = ContrastActivations(hook=h, position=position, positive=torch.cat(rows[h][0]),
                                     pos_index=torch.cat(index[0]), negative=torch.cat(rows[h][1]),
                                     neg_index=torch.cat(index[1]), n_pairs=len(pairs))
    return out
