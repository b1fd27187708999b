"""Metrics shared by every memory mechanism: CounterFact-style fact scores, fluency, consistency.

CounterFact (Meng et al. 2022, section 3.2 and appendix) measures a change to a fact
``(s, r, o -> o*)`` on three prompt sets:

* **efficacy** -- the edit prompt itself;
* **paraphrase** (generalisation) -- other phrasings of the same subject and relation;
* **neighbourhood** (specificity) -- *other* subjects whose true object is ``o``.

Each in two variants: **success** -- ``P(o*) > P(o)`` (``P(o) > P(o*)`` for neighbourhood), comparing
the targets' mean per-token log-probabilities as ROME's evaluation does, so multi-token targets are
scored as whole teacher-forced sequences -- and top-1 **accuracy** (every target token is the argmax).
The **magnitude** is the difference of the sequences' probabilities.

Fluency is ROME's generation entropy: the weighted mean of bigram and trigram entropies (weights
2/3 and 4/3, in bits) of a generated text (words split on ``\\w+``, where ROME used NLTK).
Consistency is the TF-IDF cosine similarity between text generated about the subject and reference
texts about the new object.

Scoring runs right-padded batches (exact under a causal mask) with logits only at target positions.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["TargetScores", "score_targets", "fact_scores", "ngram_entropy", "tfidf_similarity", "mean_ci"]


@dataclass
class TargetScores:
    """Per (prompt, target): mean and total log-probability of the target tokens, and top-1 correctness."""

    mean_logprob: np.ndarray
    total_logprob: np.ndarray
    top1: np.ndarray


@torch.no_grad()
def score_targets(lm: Any, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int = 32) -> TargetScores:
    """Teacher-forced log-probabilities of ``targets[i]`` after ``prompts[i]``."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    seqs, spans = [], []
    for p, t in zip(prompts, targets):
        base = lm.encode(p)
        cont = torch.tensor(lm.continuation_ids(t), dtype=torch.long)
        seqs.append(torch.cat([base, cont]))
        spans.append((len(base) - 1, cont))
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    n = len(seqs)
    mean_lp, tot_lp, top1 = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
    order = sorted(range(n), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
    for b in range(0, n, batch_size):
        idx = order[b:b + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(seqs[i])] = seqs[i]
        h = lm.hf.base_model(input_ids=ids.to(lm.device)).last_hidden_state
        rr, pp, tt = [], [], []
        for r, i in enumerate(idx):
            start, cont = spans[i]
            rr += [r] * len(cont)
            pp += list(range(start, start + len(cont)))
            tt += cont.tolist()
        logits = lm.unembed(h[torch.tensor(rr), torch.tensor(pp)])
        lp = torch.log_softmax(logits.double(), -1)
        tok_lp = lp[torch.arange(len(tt)), torch.tensor(tt)]
        hit = lp.argmax(-1) == torch.tensor(tt)
        k = 0
        for r, i in enumerate(idx):
            m = len(spans[i][1])
            mean_lp[i] = float(tok_lp[k:k + m].mean())
            tot_lp[i] = float(tok_lp[k:k + m].sum())
            top1[i] = bool(hit[k:k + m].all())
            k += m
    return TargetScores(mean_lp, tot_lp, top1)


def fact_scores(lm: Any, facts: Sequence[Any], *, batch_size: int = 32) -> list[dict[str, float]]:
    """Efficacy, paraphrase and neighbourhood success / magnitude / accuracy of each fact (one batch pass)."""
    prompts, targets, where = [], [], []
    for i, f in enumerate(facts):
        for kind, ps in (("efficacy", [f.prompt]), ("paraphrase", list(f.paraphrases)),
                         ("neighborhood", list(f.neighborhood))):
            for p in ps:
                for which, t in (("new", f.target_new), ("true", f.target_true)):
                    prompts.append(p)
                    targets.append(t)
                    where.append((i, kind, p, which))
    s = score_targets(lm, prompts, targets, batch_size=batch_size)
    acc: dict[tuple[int, str, str], dict[str, Any]] = {}
    for j, (i, kind, p, which) in enumerate(where):
        acc.setdefault((i, kind, p), {})[which] = (s.mean_logprob[j], s.total_logprob[j], s.top1[j])
    out = []
    for i, f in enumerate(facts):
        row: dict[str, float] = {}
        for kind in ("efficacy", "paraphrase", "neighborhood"):
            items = [v for (fi, k, _), v in acc.items() if fi == i and k == kind]
            if not items:
                row.update({f"{kind}_score": float("nan"), f"{kind}_magnitude": float("nan"),
                            f"{kind}_accuracy": float("nan")})
                continue
            keep = "true" if kind == "neighborhood" else "new"
            other = "new" if keep == "true" else "true"
            row[f"{kind}_score"] = float(np.mean([v[keep][0] > v[other][0] for v in items]))
            row[f"{kind}_magnitude"] = float(np.mean([math.exp(v[keep][1]) - math.exp(v[other][1]) for v in items]))
            row[f"{kind}_accuracy"] = float(np.mean([v[keep][2] for v in items]))
        eff = acc[(i, "efficacy", f.prompt)]
        row["p_new"], row["p_true"] = math.exp(eff["new"][1]), math.exp(eff["true"][1])
        out.append(row)
    return out


_WORD = re.compile(r"\w+", re.UNICODE)


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's generation entropy: mean over n of ``weight_n * H(n-gram distribution)`` in bits."""
    words = _WORD.findall(text.lower())
    ents = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        if total == 0:
            ents.append(0.0)
            continue
        p = np.array(list(grams.values()), dtype=float) / total
        ents.append(w * float(-(p * np.log2(p)).sum()))
    return float(np.mean(ents))


def tfidf_similarity(texts: Sequence[str], references: Sequence[str]) -> float:
    """Cosine similarity of the mean TF-IDF vectors of ``texts`` and ``references`` (fit on both)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not texts or not references:
        return float("nan")
    vec = TfidfVectorizer().fit(list(texts) + list(references))
    a = np.asarray(vec.transform(texts).mean(0)).ravel()
    b = np.asarray(vec.transform(references).mean(0)).ravel()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 0.0


def mean_ci(x: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean and normal-approximation 95% interval (NaNs ignored)."""
    a = np.asarray([v for v in x if v is not None and not np.isnan(v)], dtype=float)
    if len(a) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(a.mean())
    h = float(z * a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0
    return m, m - h, m + h
