"""Behaviour data: contrast pairs for fitting steering vectors, held-out prompts for evaluating them.

A :class:`Behavior` is what CAA, STA and LM-Steer are fitted on and evaluated against:

* ``train`` -- contrast pairs ``(prompt, positive, negative)``: the same prompt continued once
  with the target behaviour and once with its opposite (written as completions because the
  embedded model is a base model, not a chat model; what EasyEdit2's CAA averages over);
* ``ab_train`` -- the same pairs as A/B multiple-choice questions (:class:`ABItem`), the format
  of Rimsky et al. (2024)'s CAA datasets: ``question`` lists both continuations as ``(A)`` and
  ``(B)``, ``answer_matching_behavior`` is the letter of the behaviour-matching one. Built from
  ``train`` by :func:`make_ab_items` (letters balanced, shuffled with a fixed seed) and stored
  with the built-in behaviours, so the paper's form of CAA runs offline;
* ``eval_prompts`` -- held-out prompts (no overlap with the training prompts) whose
  continuations are scored, each labelled ``"dev"`` or ``"test"`` (``eval_split_labels``):
  choose layers, strengths and thresholds on :meth:`Behavior.split` ``("dev")``, report on
  ``("test")``. The labels of the built-in behaviours are recorded in their JSON files; prompts
  without recorded labels get :func:`assign_splits` (a stable hash of the prompt text);
* ``positive_tokens`` / ``negative_tokens`` -- single next tokens that signal the behaviour,
  for the cheap "target-behaviour probability" ``P(pos) / (P(pos) + P(neg))`` at the prompt's end;
* ``scorer`` -- how generated continuations are scored (``"vader"`` sentiment, ``"topic"``
  embedding similarity; see :mod:`.scorers`);
* ``prompting`` -- instructions for the prompting baseline.

Two built-in behaviours, written for this project (no third-party text): ``sentiment``
(positive vs negative reviews of everyday things; 120 pairs, 50 held-out prompts: 25 dev, 25
test) and ``ocean`` (a topic behaviour: continuations about the sea vs matched continuations on
land; 120 pairs, 50 held-out prompts: 25 dev, 25 test). Users' own pairs load from JSON or CSV
with :func:`load_behavior`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from ..errors import LensMemoryError

__all__ = ["ContrastPair", "ABItem", "Behavior", "BehaviorFormatError", "builtin_behaviors", "load_behavior",
           "make_ab_items", "assign_splits", "SPLITS"]

FORMAT = "lens_memory.behavior/1"
BUILTIN = ("sentiment", "ocean")
#: the evaluation splits; ``"all"`` is both
SPLITS = ("dev", "test", "all")
#: how an A/B item is shown to a base model (Rimsky et al.'s ``tokenize_llama_base``: "Input: ... Response: (")
AB_TEMPLATE = "Input: {question}\nResponse: ("
AB_HEADER = "Which continuation comes next?"


class BehaviorFormatError(LensMemoryError, ValueError):
    """Contrast data is empty, unbalanced or malformed; the message names the record or count."""


@dataclass(frozen=True)
class ContrastPair:
    """One prompt continued with the target behaviour (``positive``) and with its opposite."""

    prompt: str
    positive: str
    negative: str


@dataclass(frozen=True)
class ABItem:
    """An A/B question (Rimsky et al. 2024's dataset format): ``matching`` is the behaviour's letter.

    ``question`` contains the choices (``"(A) ..."``, ``"(B) ..."``); ``matching`` and
    ``not_matching`` are the letters ``"A"``/``"B"`` (stored as ``"(A)"``/``"(B)"`` in JSON).
    """

    question: str
    matching: str
    not_matching: str

    def contrast_pair(self) -> ContrastPair:
        """The item as a pair whose two continuations are the single answer letters.

        The prompt ends in ``"("`` so the continuation is exactly the letter token: its
        activation is what CAA's A/B form reads (the paper's ``[-2]``: the letter before ``")"``;
        causal attention makes the ``")"`` irrelevant to it).
        """
        return ContrastPair(AB_TEMPLATE.format(question=self.question.strip()), self.matching, self.not_matching)


def make_ab_items(pairs: Sequence[ContrastPair], *, seed: int = 0, header: str = AB_HEADER) -> list[ABItem]:
    """A/B questions from contrast pairs: both continuations as choices, letters balanced and shuffled.

    Exactly ``len(pairs) // 2`` items put the behaviour-matching continuation under ``(A)``
    (which ones is a ``random.Random(seed)`` shuffle), so the letter itself carries no signal
    and the mean difference of A/B activations cancels the letter identity, as in the paper's
    datasets.
    """
    n = len(pairs)
    a_first = [i < n // 2 for i in range(n)]
    random.Random(seed).shuffle(a_first)
    items = []
    for p, first in zip(pairs, a_first):
        a, b = (p.positive, p.negative) if first else (p.negative, p.positive)
        text = f"{p.prompt} ..." if p.prompt else "..."
        q = f"{header}\n\nText: {text}\n\nChoices:\n (A) {a.strip()}\n (B) {b.strip()}"
        items.append(ABItem(q, "A" if first else "B", "B" if first else "A"))
    return items


def _split_key(text: str) -> str:
    return hashlib.sha256(("lens_memory.split/1\0" + text).encode()).hexdigest()


def assign_splits(prompts: Sequence[str]) -> list[str]:
    """``"dev"``/``"test"`` per prompt: the half with the smallest SHA-256 of the text is dev.

    Deterministic, balanced (``len // 2`` dev) and independent of the prompts' order.
    """
    order = sorted(range(len(prompts)), key=lambda i: (_split_key(prompts[i]), i))
    labels = ["test"] * len(prompts)
    for i in order[: len(prompts) // 2]:
        labels[i] = "dev"
    return labels


@dataclass
class Behavior:
    """Contrast pairs plus held-out evaluation prompts for one behaviour (see the module docstring).

    ``eval_split`` is which evaluation prompts this object holds (``"all"``, or ``"dev"``/``"test"``
    after :meth:`split`); ``eval_split_labels`` labels each of ``eval_prompts``.
    """

    name: str
    train: list[ContrastPair]
    eval_prompts: list[str]
    positive_tokens: list[str] = field(default_factory=list)
    negative_tokens: list[str] = field(default_factory=list)
    scorer: str = "vader"
    description: str = ""
    positive_label: str = "positive"
    negative_label: str = "negative"
    prompting: dict[str, str] = field(default_factory=dict)
    topic_labels: dict[str, Any] = field(default_factory=dict)
    ab_train: list[ABItem] = field(default_factory=list)
    eval_split_labels: list[str] = field(default_factory=list)
    eval_split: str = "all"

    def __post_init__(self) -> None:
        if not self.train:
            raise BehaviorFormatError(f"behaviour {self.name!r} has no contrast pairs")
        for i, p in enumerate(self.train):
            for side in ("positive", "negative"):
                v = getattr(p, side)
                if not isinstance(v, str) or not v.strip():
                    raise BehaviorFormatError(
                        f"behaviour {self.name!r}, pair {i}: empty {side} continuation {v!r} (pairs must be balanced)")
            if p.positive == p.negative:
                raise BehaviorFormatError(f"behaviour {self.name!r}, pair {i}: positive equals negative ({p.positive!r})")
        if (self.positive_tokens == []) != (self.negative_tokens == []):
            raise BehaviorFormatError(
                f"behaviour {self.name!r}: {len(self.positive_tokens)} positive and {len(self.negative_tokens)} "
                "negative tokens (give both or neither)")
        self._check_splits()

    def _check_splits(self) -> None:
        if self.eval_split not in SPLITS:
            raise BehaviorFormatError(f"behaviour {self.name!r}: eval_split must be one of {SPLITS}, "
                                      f"got {self.eval_split!r}")
        if not self.eval_split_labels:
            self.eval_split_labels = assign_splits(self.eval_prompts)
        if len(self.eval_split_labels) != len(self.eval_prompts):
            raise BehaviorFormatError(f"behaviour {self.name!r}: {len(self.eval_split_labels)} split labels for "
                                      f"{len(self.eval_prompts)} evaluation prompts")
        bad = sorted({l for l in self.eval_split_labels if l not in ("dev", "test")})
        if bad:
            raise BehaviorFormatError(f"behaviour {self.name!r}: split labels must be 'dev' or 'test', got {bad}")
        for i, it in enumerate(self.ab_train):
            if {it.matching, it.not_matching} != {"A", "B"}:
                raise BehaviorFormatError(f"behaviour {self.name!r}, A/B item {i}: answers must be (A) and (B), "
                                          f"got {it.matching!r} and {it.not_matching!r}")

    def __repr__(self) -> str:
        split = "" if self.eval_split == "all" else f" ({self.eval_split})"
        return f"Behavior({self.name!r}, {len(self.train)} pairs, {len(self.eval_prompts)} eval prompts{split})"

    def texts(self) -> list[str]:
        """Every training example as text (prompt + positive, prompt + negative), e.g. to label SAE features."""
        return [p.prompt + c for p in self.train for c in (p.positive, p.negative)]

    def ab_items(self) -> list[ABItem]:
        """The A/B training questions: the stored ones, else :func:`make_ab_items` of ``train`` (seed 0)."""
        return list(self.ab_train) if self.ab_train else make_ab_items(self.train)

    def ab_pairs(self) -> list[ContrastPair]:
        """:meth:`ab_items` as contrast pairs whose continuations are the answer letters."""
        return [it.contrast_pair() for it in self.ab_items()]

    def split(self, name: str) -> "Behavior":
        """A copy holding only the ``"dev"`` or ``"test"`` evaluation prompts (``"all"``: this object).

        Training pairs are shared by both splits (they are never evaluated on).
        """
        if name not in SPLITS:
            raise BehaviorFormatError(f"split must be one of {SPLITS}, got {name!r}")
        if name == "all" or name == self.eval_split:
            return self
        if self.eval_split != "all":
            raise BehaviorFormatError(f"behaviour {self.name!r} holds only its {self.eval_split!r} prompts; "
                                      f"cannot take the {name!r} split of it")
        labels = self.eval_split_labels
        if len(labels) != len(self.eval_prompts):  # eval_prompts replaced after construction
            labels = assign_splits(self.eval_prompts)
        keep = [i for i, l in enumerate(labels) if l == name]
        return replace(self, eval_prompts=[self.eval_prompts[i] for i in keep],
                       eval_split_labels=[name] * len(keep), eval_split=name)

    def head(self, n_pairs: int | None = None) -> "Behavior":
        """A copy with only the first ``n_pairs`` training pairs and A/B items (for quick runs)."""
        if n_pairs is None:
            return self
        return replace(self, train=self.train[:n_pairs], ab_train=self.ab_train[:n_pairs])

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "name": self.name, "description": self.description, "scorer": self.scorer,
                "positive_label": self.positive_label, "negative_label": self.negative_label,
                "train": [{"prompt": p.prompt, "positive": p.positive, "negative": p.negative} for p in self.train],
                "ab_train": [{"question": it.question, "answer_matching_behavior": f"({it.matching})",
                              "answer_not_matching_behavior": f"({it.not_matching})"} for it in self.ab_train],
                "eval_prompts": list(self.eval_prompts), "eval_split": list(self.eval_split_labels),
                "split": self.eval_split, "positive_tokens": list(self.positive_tokens),
                "negative_tokens": list(self.negative_tokens), "prompting": dict(self.prompting),
                "topic_labels": dict(self.topic_labels)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, name: str | None = None) -> "Behavior":
        """Build from our JSON layout, or from ``{"positive": [...], "negative": [...]}`` lists of texts."""
        if not isinstance(d, dict):
            raise BehaviorFormatError(f"behaviour data must be a JSON object, got {type(d).__name__}")
        name = str(d.get("name") or name or "custom")
        return cls(name=name, train=_pairs_of(d, name), eval_prompts=[str(p) for p in d.get("eval_prompts", [])],
                   positive_tokens=list(d.get("positive_tokens", [])), negative_tokens=list(d.get("negative_tokens", [])),
                   scorer=str(d.get("scorer", "vader")), description=str(d.get("description", "")),
                   positive_label=str(d.get("positive_label", "positive")),
                   negative_label=str(d.get("negative_label", "negative")),
                   prompting=dict(d.get("prompting", {})), topic_labels=dict(d.get("topic_labels", {})),
                   ab_train=[_ab_item(r, i, name) for i, r in enumerate(d.get("ab_train", []))],
                   eval_split_labels=[str(x) for x in d.get("eval_split", [])], eval_split=str(d.get("split", "all")))

    def save(self, path: str | Path) -> Path:
        from ..io import write_json

        return write_json(path, self.to_dict())


def _pairs_of(d: dict[str, Any], name: str) -> list[ContrastPair]:
    if "train" in d:
        return [_pair(r, i, name) for i, r in enumerate(d["train"])]
    if "positive" in d or "negative" in d:
        pos, neg = list(d.get("positive") or []), list(d.get("negative") or [])
        if len(pos) != len(neg):
            raise BehaviorFormatError(
                f"behaviour {name!r} is unbalanced: {len(pos)} positive vs {len(neg)} negative examples")
        prompts = list(d.get("prompts") or [""] * len(pos))
        if len(prompts) != len(pos):
            raise BehaviorFormatError(f"behaviour {name!r}: {len(prompts)} prompts for {len(pos)} pairs")
        return [_pair({"prompt": a, "positive": b, "negative": c}, i, name)
                for i, (a, b, c) in enumerate(zip(prompts, pos, neg))]
    raise BehaviorFormatError(f"behaviour {name!r} has neither 'train' pairs nor 'positive'/'negative' lists")


_LETTER = re.compile(r"^\s*\(?\s*([AB])\s*\)?\s*$")


def _ab_item(r: Any, i: int, name: str) -> ABItem:
    keys = {"question", "answer_matching_behavior", "answer_not_matching_behavior"}
    if not isinstance(r, dict) or not keys <= set(r):
        raise BehaviorFormatError(f"behaviour {name!r}, A/B item {i}: needs 'question', 'answer_matching_behavior' "
                                  f"and 'answer_not_matching_behavior', got {r!r}")
    letters = [_LETTER.match(str(r[k])) for k in ("answer_matching_behavior", "answer_not_matching_behavior")]
    if not all(letters):
        raise BehaviorFormatError(f"behaviour {name!r}, A/B item {i}: answers must be '(A)' or '(B)', got {r!r}")
    return ABItem(str(r["question"]), letters[0].group(1), letters[1].group(1))


def _pair(r: Any, i: int, name: str) -> ContrastPair:
    if not isinstance(r, dict):
        raise BehaviorFormatError(f"behaviour {name!r}, pair {i}: expected an object, got {r!r}")
    missing = [k for k in ("positive", "negative") if k not in r]
    if missing:
        raise BehaviorFormatError(f"behaviour {name!r}, pair {i} lacks {missing} (pairs must be balanced): {r!r}")
    return ContrastPair(str(r.get("prompt", "")), str(r["positive"]), str(r["negative"]))


def builtin_behaviors() -> dict[str, Behavior]:
    """The built-in behaviours by name: ``sentiment`` and ``ocean``."""
    return {n: load_behavior(n) for n in BUILTIN}


def load_behavior(spec: str | Path | Behavior, *, eval_prompts: Sequence[str] | None = None) -> Behavior:
    """A behaviour by built-in name, or from a JSON or CSV file.

    CSV files need columns ``positive`` and ``negative`` (and optionally ``prompt``); rows whose
    optional ``split`` column is ``"eval"``, ``"dev"`` or ``"test"`` give evaluation prompts (``"eval"``
    rows are assigned by :func:`assign_splits`). ``eval_prompts`` overrides them (re-split by hash).
    """
    if isinstance(spec, Behavior):
        return spec
    spec_s = str(spec)
    if spec_s in BUILTIN:
        text = resources.files("lens_memory").joinpath(f"data/behavior_{spec_s}.json").read_text()
        b = Behavior.from_dict(json.loads(text))
    else:
        path = Path(spec_s).expanduser()
        if not path.exists():
            raise BehaviorFormatError(f"unknown behaviour {spec_s!r}: not a built-in ({', '.join(BUILTIN)}) nor a file")
        if path.suffix.lower() == ".csv":
            b = _from_csv(path)
        else:
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise BehaviorFormatError(f"{path} is not valid JSON ({exc})") from None
            b = Behavior.from_dict(data, name=path.stem)
    if eval_prompts is not None:
        prompts = [str(p) for p in eval_prompts]
        b = replace(b, eval_prompts=prompts, eval_split_labels=assign_splits(prompts), eval_split="all")
    return b


def _from_csv(path: Path) -> Behavior:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise BehaviorFormatError(f"{path} has no rows")
    cols = set(rows[0])
    if not {"positive", "negative"} <= cols:
        raise BehaviorFormatError(f"{path} needs columns 'positive' and 'negative', has {sorted(cols)}")
    train = [r for r in rows if (r.get("split") or "train") not in ("eval", "dev", "test")]
    ev = [r for r in rows if (r.get("split") or "train") in ("eval", "dev", "test")]
    for i, r in enumerate(train):
        if not (r.get("positive") or "").strip() or not (r.get("negative") or "").strip():
            raise BehaviorFormatError(f"{path}, row {i + 2}: empty positive or negative (pairs must be balanced): {r!r}")
    prompts = [r.get("prompt", "") for r in ev]
    labels = [r["split"] if r["split"] in ("dev", "test") else auto for r, auto in zip(ev, assign_splits(prompts))]
    return Behavior.from_dict({"name": path.stem, "train": train, "eval_prompts": prompts, "eval_split": labels})
