"""What does a model know? :func:`check_knowledge` scores facts on a model and returns a :class:`KnowledgeResult`.

A model *knows* a fact when its top-1 next token after the prompt is the first token of the true
target; the result keeps that token, its probability and the target's probability per fact.
:func:`lens_memory.facts.sample_known_facts` uses it to pick facts a model knows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .fact import Fact

__all__ = ["KnowledgeResult", "check_knowledge"]


@dataclass
class KnowledgeResult:
    """Per fact: the model's top-1 next token and the probability of the true target's first token."""

    model: dict[str, Any]
    facts: list[Fact]
    top1: list[str]
    top1_prob: list[float]
    target_prob: list[float]
    known: list[bool] = field(default_factory=list)

    @property
    def n_known(self) -> int:
        return int(sum(self.known))

    @property
    def fraction_known(self) -> float:
        return self.n_known / max(1, len(self.facts))

    def known_facts(self) -> list[Fact]:
        return [f for f, k in zip(self.facts, self.known) if k]

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame({
            "case_id": [f.case_id for f in self.facts],
            "relation_id": [f.relation_id for f in self.facts],
            "prompt": [f.prompt for f in self.facts],
            "target_true": [f.target_true for f in self.facts],
            "top1": self.top1,
            "top1_prob": self.top1_prob,
            "target_prob": self.target_prob,
            "known": self.known,
        })


@torch.no_grad()
def check_knowledge(lm: Any, facts: Sequence[Fact], batch_size: int = 32) -> KnowledgeResult:
    """Which facts ``lm`` knows: top-1 next token after the prompt equals the target's first token.

    Prompts of equal token length are batched; logits are computed at the last position only.
    """
    encoded = [lm.encode(f.prompt) for f in facts]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    top1 = [""] * len(facts)
    top1_p = [0.0] * len(facts)
    tgt_p = [0.0] * len(facts)
    known = [False] * len(facts)
    st = lm.stack
    for _, idx in sorted(groups.items()):
        for b in range(0, len(idx), batch_size):
            chunk = idx[b:b + batch_size]
            ids = torch.stack([encoded[i] for i in chunk]).to(lm.device)
            probs = st.logits(st.run(st.embed(ids))[:, -1]).softmax(-1)
            p_top, i_top = probs.max(-1)
            for row, i in enumerate(chunk):
                t0 = lm.continuation_ids(facts[i].target_true)[0]
                top1[i] = lm.decode(int(i_top[row]))
                top1_p[i] = float(p_top[row])
                tgt_p[i] = float(probs[row, t0])
                known[i] = int(i_top[row]) == t0
    return KnowledgeResult(model=lm.identity.to_dict(), facts=list(facts), top1=top1, top1_prob=top1_p,
                           target_prob=tgt_p, known=known)
