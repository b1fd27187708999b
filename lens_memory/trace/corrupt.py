"""The corrupted input of causal tracing: Gaussian noise on the subject tokens' embeddings.

Meng et al. (2022) corrupt a factual prompt by adding noise ``eps ~ N(0, nu^2)`` to the input
embedding of every subject token, with ``nu`` three times the empirical standard deviation of
subject-token embeddings over the fact set. The same noise (fixed seed) is used for every
restored cell of a fact, so cells are directly comparable; ``n_samples`` independent draws are
averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int

from ..errors import LensMemoryError
from ..facts import Fact
from .config import TraceConfig

__all__ = ["PreparedFact", "subject_embedding_std", "noise_scale", "prepare_fact"]


@dataclass
class PreparedFact:
    """A fact ready to trace: tokens, subject range, answer token and the fixed noise."""

    fact: Fact
    ids: Int[torch.Tensor, "pos"]
    subject_range: tuple[int, int]
    answer_id: int
    noise: Float[torch.Tensor, "n_samples n_subject d_model"]

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])


@torch.no_grad()
def subject_embedding_std(lm: Any, facts: Sequence[Fact]) -> float:
    """Standard deviation of all embedding values of the subject tokens (in context) over ``facts``."""
    if not facts:
        raise LensMemoryError("cannot measure the embedding standard deviation of an empty fact set")
    vals = []
    for f in facts:
        s0, s1 = lm.fact_subject_range(f)
        ids = lm.encode(f.prompt)[s0:s1].to(lm.device)
        vals.append(lm.stack.token_embed(ids[None])[0].flatten())  # hook_embed: no positions (ROME: wte)
    return float(torch.cat(vals).std())


def noise_scale(lm: Any, facts: Sequence[Fact], cfg: TraceConfig) -> float:
    """The noise scale ``nu`` a config asks for: fixed, or multiplier x subject-embedding std."""
    if cfg.noise == "auto":
        return cfg.noise_multiplier * subject_embedding_std(lm, facts)
    return float(cfg.noise)


def prepare_fact(lm: Any, fact: Fact, cfg: TraceConfig, scale: float) -> PreparedFact:
    """Tokenize, locate the subject, pick the answer (first token of the true target), draw the noise."""
    ids = lm.encode(fact.prompt)
    s0, s1 = lm.fact_subject_range(fact)
    answer = lm.continuation_ids(fact.target_true)[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn((cfg.n_samples, s1 - s0, lm.d_model), generator=gen, dtype=torch.float32) * scale
    return PreparedFact(fact=fact, ids=ids, subject_range=(s0, s1), answer_id=int(answer),
                        noise=noise.to(device=lm.device, dtype=next(lm.hf.parameters()).dtype))
