"""What a traced run scores: a metric of the last position's logits, one value per noised row.

Causal tracing (Meng et al. 2022) scores a run by the probability of the true answer at the last
position; the indirect effect of a restoration is how much of that probability it recovers. Like
TransformerLens' ``generic_activation_patch(..., patching_metric=...)``, the tracers take the score
as a callable, so the same engine measures other quantities:

``metric(logits, prep) -> scores``: ``logits`` is ``[batch d_vocab]`` (float32, the last position of
each run), ``prep`` the :class:`~lens_memory.trace.corrupt.PreparedFact` (``prep.answer_id``,
``prep.fact``), ``scores`` is ``[batch]``. The tracer averages it over the noise samples, exactly as
it averages the probability. The default, :func:`answer_probability`, is ROME's score; the result
records the metric's name in its provenance.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from jaxtyping import Float

__all__ = ["answer_probability", "answer_log_probability", "answer_logit", "METRICS", "resolve_metric", "metric_name"]

Metric = Callable[[Float[torch.Tensor, "batch d_vocab"], Any], Float[torch.Tensor, "batch"]]


def answer_probability(logits: Float[torch.Tensor, "batch d_vocab"], prep: Any) -> Float[torch.Tensor, "batch"]:
    """``softmax(logits)[answer]`` as ``exp(z_a - logsumexp(z))`` (ROME's score; the default)."""
    return torch.exp(logits[:, prep.answer_id] - torch.logsumexp(logits, dim=-1))


def answer_log_probability(logits: Float[torch.Tensor, "batch d_vocab"], prep: Any) -> Float[torch.Tensor, "batch"]:
    """``log softmax(logits)[answer]``."""
    return logits[:, prep.answer_id] - torch.logsumexp(logits, dim=-1)


def answer_logit(logits: Float[torch.Tensor, "batch d_vocab"], prep: Any) -> Float[torch.Tensor, "batch"]:
    """The answer's raw logit (no normalisation over the vocabulary)."""
    return logits[:, prep.answer_id]


#: metrics by name (the CLI's and the config's vocabulary)
METRICS: dict[str, Metric] = {"prob": answer_probability, "logprob": answer_log_probability, "logit": answer_logit}


def resolve_metric(metric: str | Metric | None) -> Metric:
    """``None`` -> :func:`answer_probability`; a name from :data:`METRICS`; or any callable."""
    if metric is None:
        return answer_probability
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown trace metric {metric!r}; known: {sorted(METRICS)} (or pass a callable)")
        return METRICS[metric]
    if not callable(metric):
        raise ValueError(f"metric must be a name or a callable(logits, prep) -> scores, got {metric!r}")
    return metric


def metric_name(metric: Metric) -> str:
    """The name recorded in provenance: the registry key, else the callable's qualified name."""
    for k, v in METRICS.items():
        if v is metric:
            return k
    return getattr(metric, "__qualname__", None) or repr(metric)
