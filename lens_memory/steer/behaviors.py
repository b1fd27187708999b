"""Behaviour data: contrast pairs for fitting steering vectors, held-out prompts for evaluating them.

A :class:`Behavior` is what CAA, STA and LM-Steer are fitted on and evaluated against:

* ``train`` -- contrast pairs ``(prompt, positive, negative)``: the same prompt continued once
  with the target behaviour and once with its opposite (CAA's "matched" pairs, written as
  completions because the embedded model is a base model, not a chat model);
* ``eval_prompts`` -- held-out prompts (no overlap with the training prompts) whose
  continuations are scored;
* ``positive_tokens`` / ``negative_tokens`` -- single next tokens that signal the behaviour,
  for the cheap "target-behaviour probability" ``P(pos) / (P(pos) + P(neg))`` at the prompt's end;
* ``scorer`` -- how generated continuations are scored (``"vader"`` sentiment, ``"topic"``
  embedding similarity; see :mod:`.scorers`);
* ``prompting`` -- instructions for the prompting baseline.

Two built-in behaviours, written for this project (no third-party text): ``sentiment``
(positive vs negative reviews of everyday things; 120 pairs, 50 held-out prompts) and
``ocean`` (a topic behaviour: continuations about the sea vs matched continuations on land;
120 pairs, 50 held-out prompts). Users' own pairs load from JSON or CSV with :func:`load_behavior`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from ..errors import LensMemoryError

__all__ = ["ContrastPair", "Behavior", "BehaviorFormatError", "builtin_behaviors", "load_behavior"]

FORMAT = "lens_memory.behavior/1"
BUILTIN = ("sentiment", "ocean")


class BehaviorFormatError(LensMemoryError, ValueError):
    """Contrast data is empty, unbalanced or malformed; the message names the record or count."""


@dataclass(frozen=True)
class ContrastPair:
    """One prompt continued with the target behaviour (``positive``) and with its opposite."""

    prompt: str
    positive: str
    negative: str


@dataclass
class Behavior:
    """Contrast pairs plus held-out evaluation prompts for one behaviour (see the module docstring)."""

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

    def __post_init__(self) -> None:
        if not self.train:
            raise BehaviorFormatError(f"behaviour {self.name!r} has no contrast pairs")
        for i, p in enumerate(self.train):
            for side in ("prompt", "positive", "negative"):
                v = getattr(p, side)
                if side != "prompt" and (not isinstance(v, str) or not v.strip()):
                    raise BehaviorFormatError(
                        f"behaviour {self.name!r}, pair {i}: empty {side} continuation {v!r} (pairs must be balanced)")
            if p.positive == p.negative:
                raise BehaviorFormatError(f"behaviour {self.name!r}, pair {i}: positive equals negative ({p.positive!r})")
        if (self.positive_tokens == []) != (self.negative_tokens == []):
            raise BehaviorFormatError(
                f"behaviour {self.name!r}: {len(self.positive_tokens)} positive and {len(self.negative_tokens)} "
                "negative tokens (give both or neither)")

    def __repr__(self) -> str:
        return f"Behavior({self.name!r}, {len(self.train)} pairs, {len(self.eval_prompts)} eval prompts)"

    def texts(self) -> list[str]:
        """Every training example as text (prompt + positive, prompt + negative), e.g. to label SAE features."""
        return [p.prompt + c for p in self.train for c in (p.positive, p.negative)]

    def split(self, n_train: int | None = None) -> "Behavior":
        """A copy with only the first ``n_train`` pairs (for quick runs)."""
        if n_train is None:
            return self
        d = self.to_dict()
        d["train"] = d["train"][:n_train]
        return Behavior.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "name": self.name, "description": self.description, "scorer": self.scorer,
                "positive_label": self.positive_label, "negative_label": self.negative_label,
                "train": [{"prompt": p.prompt, "positive": p.positive, "negative": p.negative} for p in self.train],
                "eval_prompts": list(self.eval_prompts), "positive_tokens": list(self.positive_tokens),
                "negative_tokens": list(self.negative_tokens), "prompting": dict(self.prompting),
                "topic_labels": dict(self.topic_labels)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, name: str | None = None) -> "Behavior":
        """Build from our JSON layout, or from ``{"positive": [...], "negative": [...]}`` lists of texts."""
        if not isinstance(d, dict):
            raise BehaviorFormatError(f"behaviour data must be a JSON object, got {type(d).__name__}")
        name = str(d.get("name") or name or "custom")
        if "train" in d:
            pairs = [_pair(r, i, name) for i, r in enumerate(d["train"])]
        elif "positive" in d or "negative" in d:
            pos, neg = list(d.get("positive") or []), list(d.get("negative") or [])
            if len(pos) != len(neg):
                raise BehaviorFormatError(
                    f"behaviour {name!r} is unbalanced: {len(pos)} positive vs {len(neg)} negative examples")
            prompts = list(d.get("prompts") or [""] * len(pos))
            if len(prompts) != len(pos):
                raise BehaviorFormatError(f"behaviour {name!r}: {len(prompts)} prompts for {len(pos)} pairs")
            pairs = [_pair({"prompt": a, "positive": b, "negative": c}, i, name)
                     for i, (a, b, c) in enumerate(zip(prompts, pos, neg))]
        else:
            raise BehaviorFormatError(f"behaviour {name!r} has neither 'train' pairs nor 'positive'/'negative' lists")
        return cls(name=name, train=pairs, eval_prompts=[str(p) for p in d.get("eval_prompts", [])],
                   positive_tokens=list(d.get("positive_tokens", [])), negative_tokens=list(d.get("negative_tokens", [])),
                   scorer=str(d.get("scorer", "vader")), description=str(d.get("description", "")),
                   positive_label=str(d.get("positive_label", "positive")),
                   negative_label=str(d.get("negative_label", "negative")),
                   prompting=dict(d.get("prompting", {})), topic_labels=dict(d.get("topic_labels", {})))

    def save(self, path: str | Path) -> Path:
        from ..io import write_json

        return write_json(path, self.to_dict())


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

    CSV files need columns ``positive`` and ``negative`` (and optionally ``prompt``); rows with
    ``split == "eval"`` (optional column) give evaluation prompts. ``eval_prompts`` overrides them.
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
        b.eval_prompts = [str(p) for p in eval_prompts]
    return b


def _from_csv(path: Path) -> Behavior:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise BehaviorFormatError(f"{path} has no rows")
    cols = set(rows[0])
    if not {"positive", "negative"} <= cols:
        raise BehaviorFormatError(f"{path} needs columns 'positive' and 'negative', has {sorted(cols)}")
    train = [r for r in rows if r.get("split", "train") != "eval"]
    evals = [r.get("prompt", "") for r in rows if r.get("split") == "eval"]
    for i, r in enumerate(train):
        if not (r.get("positive") or "").strip() or not (r.get("negative") or "").strip():
            raise BehaviorFormatError(f"{path}, row {i + 2}: empty positive or negative (pairs must be balanced): {r!r}")
    return Behavior.from_dict({"name": path.stem, "train": train, "eval_prompts": evals})
