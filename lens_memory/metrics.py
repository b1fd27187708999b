"""Metrics shared by every memory mechanism: CounterFact scores, fluency, a TF-IDF text similarity.

Each metric is named after, and computed as, the paper or code that defines it; deviations are
stated where they occur.

**CounterFact** (Meng et al. 2022, "Locating and Editing Factual Associations in GPT" (ROME), section 3.3
and appendix; Meng et al. 2023, "Mass-Editing Memory in a Transformer" (MEMIT), section 5.2) measures a
change to a fact ``(s, r, o -> o*)`` on three prompt sets:

* **efficacy** -- the edit prompt itself;
* **paraphrase** (generalisation) -- other phrasings of the same subject and relation;
* **neighbourhood** (specificity) -- *other* subjects whose true object is ``o``.

The probability of a (multi-token) target is ROME's and MEMIT's: ``P(o) = exp(-NLL(o))`` with ``NLL`` the
*mean* per-token negative log-probability of the teacher-forced target tokens (``test_batch_prediction``
in ROME's ``eval_utils_counterfact.py`` divides the summed NLL by the number of target tokens), so
``P = exp(mean log-prob)``, not the product of the token probabilities.

Per prompt set, three numbers (each a mean over the set's prompts; a fact's value, averaged over facts):

* ``*_success`` -- ROME's ES / PS / NS: the fraction of prompts with ``P(o*) > P(o)`` (efficacy,
  paraphrase) or ``P(o) > P(o*)`` (neighbourhood), strict inequality on the mean NLLs as in ROME's
  ``summarize.py`` (``*_success`` there).
* ``*_magnitude`` -- ROME's and MEMIT's EM / PM / NM: ``P(o*) - P(o)`` (efficacy, paraphrase) and
  ``P(o) - P(o*)`` on neighbourhood prompts (MEMIT section 5.2; ``*_diff`` in ``summarize.py``).
* ``*_accuracy`` -- the teacher-forced top-1 token accuracy that EasyEdit (Wang et al. 2024,
  ``test_prediction_acc``) reports as ``rewrite_acc`` / ``rephrase_acc`` and MEMIT as zsRE accuracy: the
  fraction of the target's tokens that are the argmax given the prompt and the preceding target tokens,
  for ``o*`` (efficacy, paraphrase) and for ``o`` on neighbourhood prompts. (EasyEdit's *locality*
  compares post- to pre-edit argmax tokens instead; that is not computed here.) For single-token targets
  it is plain top-1 accuracy; :attr:`TargetScores.top1` keeps the stricter "every token is the argmax".

ROME's **score S** (:func:`score_s`) is the harmonic mean of the three success means (MEMIT's
``summarize.py``: ``hmean([ES, PS, NS])``).

**Fluency** is ROME's generation entropy GE (:func:`ngram_entropy`, :func:`generation_entropy`).

:func:`tfidf_similarity` is a plain TF-IDF cosine; it is *not* ROME's reference score RS (see there).

Scoring runs right-padded batches (exact under a causal mask) with logits only at target positions.
"""

from __future__ import annotations

import functools
import math
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["TargetScores", "score_targets", "target_probability", "prompt_set_metrics", "fact_scores", "score_s",
           "word_tokenize", "fluency_tokenizer", "ngram_entropy", "generation_entropy", "rome_generation_text",
           "tfidf_similarity", "mean_ci", "proportion_ci", "KINDS"]

#: the three CounterFact prompt sets, in the order of every table
KINDS = ("efficacy", "paraphrase", "neighborhood")


@dataclass
class TargetScores:
    """Per (prompt, target), teacher-forced over the target tokens.

    ``mean_logprob`` (= -NLL of ROME/MEMIT), ``total_logprob``, ``token_accuracy`` (fraction of target
    tokens that are the argmax; EasyEdit's accuracy) and ``top1`` (every target token is the argmax).
    """

    mean_logprob: np.ndarray
    total_logprob: np.ndarray
    top1: np.ndarray
    token_accuracy: np.ndarray


def _batch_ids(seqs: list[torch.Tensor], idx: list[int], pad: int) -> torch.Tensor:
    width = max(len(seqs[i]) for i in idx)
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    for r, i in enumerate(idx):
        ids[r, :len(seqs[i])] = seqs[i]
    return ids


@torch.no_grad()
def score_targets(lm: Any, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int = 32) -> TargetScores:
    """Teacher-forced log-probabilities and argmax hits of ``targets[i]`` after ``prompts[i]``."""
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
    mean_lp, tot_lp, top1, tok_acc = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n)
    order = sorted(range(n), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
    for b in range(0, n, batch_size):
        idx = order[b:b + batch_size]
        h = lm.hf.base_model(input_ids=_batch_ids(seqs, idx, pad).to(lm.device)).last_hidden_state
        rr, pp, tt = [], [], []
        for r, i in enumerate(idx):
            start, cont = spans[i]
            rr += [r] * len(cont)
            pp += list(range(start, start + len(cont)))
            tt += cont.tolist()
        lp = torch.log_softmax(lm.unembed(h[torch.tensor(rr), torch.tensor(pp)]).double(), -1)
        tok_lp = lp[torch.arange(len(tt)), torch.tensor(tt)].cpu()
        hit = (lp.argmax(-1).cpu() == torch.tensor(tt))
        k = 0
        for i in idx:
            m = len(spans[i][1])
            mean_lp[i], tot_lp[i] = float(tok_lp[k:k + m].mean()), float(tok_lp[k:k + m].sum())
            top1[i], tok_acc[i] = bool(hit[k:k + m].all()), float(hit[k:k + m].double().mean())
            k += m
    return TargetScores(mean_lp, tot_lp, top1, tok_acc)


def target_probability(mean_logprob: float) -> float:
    """ROME's / MEMIT's probability of a target: ``exp(-mean NLL) = exp(mean token log-probability)``."""
    return math.exp(mean_logprob)


def prompt_set_metrics(kind: str, new_mean_logprob: Sequence[float], true_mean_logprob: Sequence[float],
                       new_accuracy: Sequence[float], true_accuracy: Sequence[float]) -> dict[str, float]:
    """Success, magnitude and accuracy of one fact on one prompt set (one entry per prompt).

    Efficacy and paraphrase favour the new object ``o*``, neighbourhood the true one ``o``:

    * ``success`` = mean over prompts of ``[mean_lp(fav) > mean_lp(other)]`` (ROME's ES/PS/NS);
    * ``magnitude`` = mean of ``exp(mean_lp(fav)) - exp(mean_lp(other))`` (ROME/MEMIT's EM/PM/NM);
    * ``accuracy`` = mean of the favoured target's token accuracy (EasyEdit; see the module docstring).

    With no prompts, all three are NaN.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if len(new_mean_logprob) == 0:
        return {"success": float("nan"), "magnitude": float("nan"), "accuracy": float("nan")}
    new, true = np.asarray(new_mean_logprob, float), np.asarray(true_mean_logprob, float)
    fav, other, acc = (true, new, true_accuracy) if kind == "neighborhood" else (new, true, new_accuracy)
    return {"success": float(np.mean(fav > other)),
            "magnitude": float(np.mean(np.exp(fav) - np.exp(other))),
            "accuracy": float(np.mean(np.asarray(acc, float)))}


def _fact_requests(facts: Sequence[Any]) -> tuple[list[str], list[str], list[tuple[int, str, str]]]:
    """Every (prompt, target) pair to score: per fact, prompt set and prompt, ``o*`` then ``o``."""
    prompts, targets, where = [], [], []
    for i, f in enumerate(facts):
        for kind, ps in zip(KINDS, ([f.prompt], list(f.paraphrases), list(f.neighborhood))):
            for p in ps:
                for which, t in (("new", f.target_new), ("true", f.target_true)):
                    prompts.append(p)
                    targets.append(t)
                    where.append((i, kind, which))
    return prompts, targets, where


def fact_scores(lm: Any, facts: Sequence[Any], *, batch_size: int = 32) -> list[dict[str, float]]:
    """Per fact: ``{kind}_success``, ``{kind}_magnitude``, ``{kind}_accuracy`` for the three prompt sets,
    and ``p_new`` / ``p_true`` (ROME's ``exp(-mean NLL)`` of ``o*`` and ``o`` on the edit prompt).

    All prompts of all facts are scored in one batched pass (:func:`score_targets`).
    """
    prompts, targets, where = _fact_requests(facts)
    s = score_targets(lm, prompts, targets, batch_size=batch_size)
    lp: dict[tuple[int, str, str], list[float]] = {}
    acc: dict[tuple[int, str, str], list[float]] = {}
    for j, key in enumerate(where):
        lp.setdefault(key, []).append(float(s.mean_logprob[j]))
        acc.setdefault(key, []).append(float(s.token_accuracy[j]))
    out = []
    for i in range(len(facts)):
        row: dict[str, float] = {}
        for kind in KINDS:
            m = prompt_set_metrics(kind, lp.get((i, kind, "new"), []), lp.get((i, kind, "true"), []),
                                   acc.get((i, kind, "new"), []), acc.get((i, kind, "true"), []))
            row.update({f"{kind}_{k}": v for k, v in m.items()})
        row["p_new"] = target_probability(lp[(i, "efficacy", "new")][0])
        row["p_true"] = target_probability(lp[(i, "efficacy", "true")][0])
        out.append(row)
    return out


def score_s(efficacy_success: float, paraphrase_success: float, neighborhood_success: float) -> float:
    """ROME's score S: the harmonic mean of the ES, PS and NS means (MEMIT's ``summarize.py``).

    ``3 / (1/ES + 1/PS + 1/NS)``; 0 when any of them is 0 (as ``scipy.stats.hmean``), NaN when any is NaN.
    """
    xs = [float(efficacy_success), float(paraphrase_success), float(neighborhood_success)]
    if any(math.isnan(x) for x in xs):
        return float("nan")
    if any(x < 0 for x in xs):
        raise ValueError(f"success rates must be >= 0, got {xs}")
    if any(x == 0 for x in xs):
        return 0.0
    return 3.0 / sum(1.0 / x for x in xs)


@functools.lru_cache(maxsize=1)
def _tokenizer() -> tuple[str, Any]:
    """``nltk.word_tokenize`` when NLTK's English Punkt model is installed, else untrained Punkt + the same
    word tokenizer (no data files needed)."""
    import nltk
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    try:
        nltk.word_tokenize("Punkt. Check.")
        return "nltk.word_tokenize", nltk.word_tokenize
    except LookupError:
        sents, words = PunktSentenceTokenizer(), NLTKWordTokenizer()
        return ("nltk.NLTKWordTokenizer+untrained_punkt",
                lambda text: [w for s in sents.tokenize(text) for w in words.tokenize(s)])


def fluency_tokenizer() -> str:
    """Which word tokenizer :func:`word_tokenize` uses here (recorded with every fluency number)."""
    return _tokenizer()[0]


def word_tokenize(text: str) -> list[str]:
    """Word tokens as ROME's ``compute_freq`` takes them: ``nltk.word_tokenize`` (case preserved).

    ``nltk.word_tokenize`` = Punkt sentence split (English model) + ``NLTKWordTokenizer`` per sentence.
    Offline machines usually lack the Punkt model (``nltk.download("punkt_tab")``); then Punkt runs
    *untrained* (same algorithm, no learned abbreviation list), which differs only where a sentence-internal
    abbreviation or initial such as ``"Dr."``, ``"U.S."`` or ``"J."`` is split off as a sentence (its final
    ``"."`` becomes a separate token). :func:`fluency_tokenizer` says which one ran.
    """
    return _tokenizer()[1](text)


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's ``compute_n_gram_entropy`` of one text (ROME section 3.3: generation entropy, "fluency").

    Over the word tokens (:func:`word_tokenize`), for ``n`` in ``ns``: the entropy in bits of the n-gram
    frequency distribution, ``H_n = -sum_g f(g) log2 f(g)``; returns the arithmetic mean of
    ``weight_n * H_n`` (default ``(2/3 H_2 + 4/3 H_3) / 2``). Texts too short for an n-gram give NaN
    (ROME divides 0 by 0 there).
    """
    words = word_tokenize(text)
    ents = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        if total == 0:
            return float("nan")
        p = np.array(list(grams.values()), dtype=float) / total
        ents.append(w * float(-(p * np.log2(p)).sum()))
    return float(np.mean(ents))


def generation_entropy(texts: Sequence[str]) -> float:
    """ROME's ``n_gram_entropy`` ("GE") of one fact's generations: the arithmetic mean of
    :func:`ngram_entropy` over ``texts`` (each the prompt followed by its generation,
    :func:`rome_generation_text`)."""
    if not texts:
        return float("nan")
    return float(np.mean([ngram_entropy(t) for t in texts]))


def rome_generation_text(prompt: str, continuation: str) -> str:
    """The text ROME scores: prompt + generation, NFKD-normalised, ``"\\n\\n"`` replaced by a space
    (ROME's ``generate_fast`` decodes the whole sequence, prompt included)."""
    return unicodedata.normalize("NFKD", prompt + continuation).replace("\n\n", " ")


def tfidf_similarity(texts: Sequence[str], references: Sequence[str]) -> float:
    """Cosine similarity of the mean TF-IDF vectors of ``texts`` and ``references`` (fit on both).

    Not ROME's reference score RS: RS fits the vectorizer on Wikipedia snippets about CounterFact's
    objects and compares the joined generations with the joined snippets about the new object.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not texts or not references:
        return float("nan")
    vec = TfidfVectorizer().fit(list(texts) + list(references))
    a = np.asarray(vec.transform(texts).mean(0)).ravel()
    b = np.asarray(vec.transform(references).mean(0)).ravel()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 0.0


def proportion_ci(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float, float]:
    """A proportion ``successes / n`` with its Wilson score interval (Wilson 1927; statsmodels'
    ``proportion_confint(method="wilson")``): never outside ``[0, 1]``, never zero-width for ``0 < n``,
    and accurate for small ``n`` and proportions near 0 or 1, where the normal approximation is not."""
    from statsmodels.stats.proportion import proportion_confint

    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    lo, hi = proportion_confint(int(successes), int(n), alpha=alpha, method="wilson")
    return successes / n, max(0.0, float(lo)), min(1.0, float(hi))


def mean_ci(x: Sequence[float], *, seed: int = 0, n_resamples: int = 2000) -> tuple[float, float, float]:
    """Mean and 95% interval of ``x`` (NaNs and ``None`` ignored), the interval chosen by what ``x`` is.

    * every value 0 or 1 -- a **proportion** (e.g. ROME's efficacy success per fact): the Wilson interval
      (:func:`proportion_ci`);
    * otherwise -- a mean of non-binary values (a fact's paraphrase success over two prompts, a rewrite score,
      a Spearman correlation): the BCa bootstrap interval (``scipy.stats.bootstrap``, ``n_resamples``
      resamples, seeded: the same ``x`` gives the same interval), the percentile interval where BCa is
      undefined (e.g. all values equal: then the interval is the value itself).

    With one non-binary value there is no interval (NaN bounds).
    """
    from scipy.stats import bootstrap

    a = np.asarray([v for v in x if v is not None and not np.isnan(v)], dtype=float)
    if len(a) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(a.mean())
    if np.isin(a, (0.0, 1.0)).all():
        return m, *proportion_ci(int(a.sum()), len(a))[1:]
    if len(a) == 1:
        return m, float("nan"), float("nan")
    if np.all(a == a[0]):
        return m, m, m
    for method in ("BCa", "percentile"):
        ci = bootstrap((a,), np.mean, n_resamples=n_resamples, method=method, vectorized=True,
                       rng=np.random.default_rng(seed)).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            break
    return m, float(ci.low), float(ci.high)
