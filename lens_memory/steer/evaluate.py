"""One evaluation for every steering method: behaviour, fluency and side effects over strengths.

:func:`evaluate_steering` takes any artifact with ``apply(lm, strength)`` -- a CAA or STA
:class:`~lens_memory.steer.vector.SteeringVector`, an :class:`~lens_memory.steer.lm_steer.LMSteer`
map, or the :class:`PromptingBaseline` -- and measures, per strength (0 = the unsteered model):

* ``behavior_score`` -- the behaviour's scorer (VADER sentiment, topic similarity; see
  :mod:`.scorers`) on continuations generated from the held-out prompts, mean and 95% interval;
* ``target_prob`` -- ``P(pos) / (P(pos) + P(neg))`` over the behaviour's signal tokens at the
  end of each held-out prompt (one forward pass, logits at the last position only);
* fluency -- ``perplexity`` of the continuations under the *unsteered* model (given their
  prompts): exp of the mean over continuations of their per-token negative log-likelihood; and ``distinct_1/2/3`` (unique word n-grams / all n-grams over the continuations);
* side effects -- ``kl_neutral``: KL(unsteered || steered) of next-token distributions on neutral
  text (the offline corpus) with the steering applied at every position.

Generation uses the same seed at every strength, so differences come from the steering.
Prompts come from one evaluation split of the behaviour (``SteerEvalConfig.split``, default
``"test"``; choose strengths and layers on ``"dev"``), recorded as ``SteeringEvaluation.split``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..artifacts import Handle, load_artifact, require, save_artifact
from ..errors import LensMemoryError
from ..generation import generate, left_pad
from ..metrics import mean_ci
from .behaviors import SPLITS, Behavior, load_behavior
from .scorers import get_scorer

__all__ = ["SteerEvalConfig", "SteeringEvaluation", "evaluate_steering", "behavior_probability", "PromptingBaseline",
           "continuation_nll", "distinct_n", "neutral_kl", "is_monotonic"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SteerEvalConfig:
    """Evaluation settings (recorded with every result).

    Attributes:
        strengths: multipliers to evaluate; 0 (unsteered) is always added.
        n_prompts: held-out prompts used (``None``: all).
        gen_tokens: tokens generated per prompt.
        top_k: top-k sampling for generation (``None``: greedy).
        seed: generation seed (the same at every strength).
        n_neutral_tokens: neutral-text positions for the KL side effect (0 skips it).
        positions: where steering vectors are added during generation (``"after_prompt"``/``"all"``).
        batch_size: prompts per generation batch.
        split: the behaviour's evaluation prompts used: ``"test"`` (report), ``"dev"`` (choose
            strengths, layers, thresholds) or ``"all"``; see :meth:`Behavior.split`.
    """

    strengths: tuple[float, ...] = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
    n_prompts: int | None = 50
    gen_tokens: int = 30
    top_k: int | None = 20
    seed: int = 0
    n_neutral_tokens: int = 256
    positions: str = "after_prompt"
    batch_size: int = 16
    split: str = "test"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise LensMemoryError(f"SteerEvalConfig.split must be one of {SPLITS}, got {self.split!r}")
        s = tuple(float(x) for x in self.strengths)
        for x in s:
            if not math.isfinite(x):
                raise LensMemoryError(f"SteerEvalConfig.strengths must be finite, got {x!r}")
        object.__setattr__(self, "strengths", tuple(sorted(set(s) | {0.0})))
        if self.gen_tokens < 1:
            raise LensMemoryError(f"SteerEvalConfig.gen_tokens must be >= 1, got {self.gen_tokens!r}")
        if self.n_prompts is not None and self.n_prompts < 1:
            raise LensMemoryError(f"SteerEvalConfig.n_prompts must be >= 1 or None, got {self.n_prompts!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PromptingBaseline:
    """The prompting baseline: strength +1 prepends the behaviour's positive instruction, -1 the negative.

    Any other non-zero strength uses the instruction of its sign; 0 is the plain prompt.
    """

    method = "prompting"

    def __init__(self, behavior: Behavior | str):
        self.behavior = load_behavior(behavior)
        p = self.behavior.prompting
        if not p.get("positive_instruction") or not p.get("negative_instruction"):
            raise LensMemoryError(f"behaviour {self.behavior.name!r} has no prompting instructions")
        self.layers: list[int] = []

    def transform_prompt(self, prompt: str, strength: float) -> str:
        if strength == 0:
            return prompt
        key = "positive_instruction" if strength > 0 else "negative_instruction"
        return self.behavior.prompting[key] + prompt

    def apply(self, lm: Any, strength: float = 1.0, positions: str = "after_prompt") -> Handle:
        """Changes nothing in the model (the instruction goes into the prompt); a no-op :class:`Handle`."""
        return Handle(self, lm, kind="prompting")._activate()


# -- metrics -----------------------------------------------------------------------------------

def _signal_ids(lm: Any, tokens: Sequence[str]) -> list[int]:
    ids = []
    for t in tokens:
        enc = lm.tokenizer(t, add_special_tokens=False)["input_ids"]
        if enc:
            ids.append(enc[0])
    return sorted(set(ids))


@torch.no_grad()
def behavior_probability(lm: Any, behavior: Behavior, prompts: Sequence[str], *, batch_size: int = 16,
                         per_prompt: bool = False) -> float | list[float]:
    """Mean over prompts of ``P(pos) / (P(pos) + P(neg))`` for the behaviour's next-token signal sets.

    Prompts are left-padded so that every prompt's last token is the batch's last column (where
    ``"after_prompt"`` steering acts); logits are computed for that position only.
    """
    pos, neg = _signal_ids(lm, behavior.positive_tokens), _signal_ids(lm, behavior.negative_tokens)
    if not pos or not neg:
        raise LensMemoryError(f"behaviour {behavior.name!r} has no positive/negative signal tokens")
    out: list[float] = []
    for b in range(0, len(prompts), batch_size):
        ids, mask = left_pad(lm, prompts[b:b + batch_size])
        pos_ids = (mask.cumsum(-1) - 1).clamp_min(0)
        h = lm.hf.base_model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                             position_ids=pos_ids.to(lm.device)).last_hidden_state[:, -1]
        p = lm.unembed(h).double().softmax(-1)
        pp, pn = p[:, pos].sum(-1), p[:, neg].sum(-1)
        out.extend((pp / (pp + pn)).tolist())
    return out if per_prompt else float(np.mean(out))


@torch.no_grad()
def continuation_nll(lm: Any, prompts: Sequence[str], continuations: Sequence[str], *,
                     batch_size: int = 8) -> list[float]:
    """Mean negative log-likelihood per token of each continuation given its prompt (current model)."""
    from .activations import encode_pair_side

    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    for b in range(0, len(prompts), batch_size):
        seqs = []
        for p, c in zip(prompts[b:b + batch_size], continuations[b:b + batch_size]):
            if not lm.tokenizer(c, add_special_tokens=False)["input_ids"]:
                seqs.append(None)
                continue
            seqs.append(encode_pair_side(lm, p, c))
        live = [s for s in seqs if s is not None]
        if not live:
            out.extend([float("nan")] * len(seqs))
            continue
        width = max(len(s[0]) for s in live)
        ids = torch.full((len(live), width), pad, dtype=torch.long)
        rows, cols, tgt, owner = [], [], [], []
        for j, (s, start) in enumerate(live):
            ids[j, :len(s)] = s
            for t in range(start, len(s)):
                rows.append(j)
                cols.append(t - 1)
                tgt.append(int(s[t]))
                owner.append(j)
        h = lm.hf.base_model(input_ids=ids.to(lm.device)).last_hidden_state
        logp = lm.unembed(h[torch.tensor(rows), torch.tensor(cols)]).double().log_softmax(-1)
        nll = -logp[torch.arange(len(tgt)), torch.tensor(tgt)].cpu()
        per = torch.zeros(len(live), dtype=torch.float64).index_add_(0, torch.tensor(owner), nll)
        cnt = torch.bincount(torch.tensor(owner), minlength=len(live)).double()
        vals = iter((per / cnt).tolist())
        out.extend(next(vals) if s is not None else float("nan") for s in seqs)
    return out


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams / all word n-grams over ``texts`` (Li et al. 2016's distinct-n)."""
    grams = [tuple(w[i:i + n]) for w in (t.lower().split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


_NEUTRAL_IDS: dict[tuple[str, int], torch.Tensor] = {}


def _neutral_ids(lm: Any, n_tokens: int) -> torch.Tensor:
    key = (lm.identity.weight_hash, n_tokens)
    if key not in _NEUTRAL_IDS:
        from ..corpus import load_corpus, token_blocks

        _NEUTRAL_IDS[key] = torch.cat(list(token_blocks(lm, load_corpus("offline", max_texts=200), n_tokens,
                                                        seq_len=32)))
    return _NEUTRAL_IDS[key]


@torch.no_grad()
def neutral_kl(lm: Any, artifact: Any, strength: float, n_tokens: int = 256) -> float:
    """Mean KL(unsteered || steered) of next-token distributions on neutral corpus text (steering at all positions)."""
    ids = _neutral_ids(lm, n_tokens).to(lm.device)
    base = lm.unembed(lm.hf.base_model(input_ids=ids).last_hidden_state).double().log_softmax(-1)
    with artifact.apply(lm, strength, positions="all"):
        steered = lm.unembed(lm.hf.base_model(input_ids=ids).last_hidden_state).double().log_softmax(-1)
    return float((base.exp() * (base - steered)).sum(-1)[:, 1:].mean())


def is_monotonic(values: Sequence[float], increasing: bool = True) -> bool:
    """True when ``values`` strictly increase (or decrease)."""
    d = np.diff(np.asarray(values, dtype=float))
    return bool(np.all(d > 0) if increasing else np.all(d < 0))


# -- the evaluation ------------------------------------------------------------------------------

@dataclass
class SteeringEvaluation:
    """Per strength: behaviour score, target probability, fluency and side effects (see the module docstring)."""

    method: str
    behavior: str
    layers: list[int]
    hook: str
    strengths: list[float]
    rows: list[dict[str, float]]
    samples: dict[str, list[str]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    artifact_config: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    split: str = "all"  # the behaviour's evaluation split the prompts came from

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows).assign(method=self.method, behavior=self.behavior, split=self.split)

    def metric(self, name: str) -> dict[str, float]:
        """``{strength: value}`` for one metric (strength keys as strings, e.g. ``"0.0"``)."""
        return {str(r["strength"]): r[name] for r in self.rows}

    @property
    def monotonic(self) -> bool:
        """Whether the behaviour score rises strictly with strength."""
        return is_monotonic([r["behavior_score"] for r in self.rows])

    def summary(self) -> dict[str, Any]:
        return {"method": self.method, "behavior": self.behavior, "split": self.split, "layers": self.layers,
                "hook": self.hook,
                "behavior_score": self.metric("behavior_score"), "target_prob": self.metric("target_prob"),
                "fluency": self.metric("perplexity"), "distinct_2": self.metric("distinct_2"),
                "kl_neutral": self.metric("kl_neutral"), "monotonic": self.monotonic, "seconds": self.seconds}

    def plot(self, axes=None):
        from ..viz import plot_steering_tradeoff

        return plot_steering_tradeoff([self], axes=axes)

    def save(self, path: str | Path) -> Path:
        """Write ``steering_evaluation.json`` into directory ``path`` atomically."""
        return save_artifact(path, "steering_evaluation", asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "SteeringEvaluation":
        d, _ = load_artifact(path, "steering_evaluation")
        names = {f.name for f in fields(cls)}
        require(d, tuple(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING), path)
        return cls(**{k: v for k, v in d.items() if k in names})

def evaluate_steering(lm: Any, behavior: Behavior | str, artifact: Any, cfg: SteerEvalConfig | None = None, *,
                      progress: bool = True, executor: Any = None) -> SteeringEvaluation:
    """Evaluate ``artifact`` (anything with ``apply(lm, strength)``) on ``behavior``'s ``cfg.split`` prompts.

    Each strength is an item of the execution seam (``executor``, :mod:`lens_memory.parallel`; default
    ``lm.parallel``'s, else this process); the rows are the same either way.
    """
    from ..parallel import executor_for

    cfg = cfg or SteerEvalConfig()
    b = load_behavior(behavior).split(cfg.split)
    if not b.eval_prompts:
        raise LensMemoryError(f"behaviour {b.name!r} has no evaluation prompts in split {cfg.split!r}")
    prompts = b.eval_prompts[:cfg.n_prompts] if cfg.n_prompts else list(b.eval_prompts)
    get_scorer(b)  # an unknown scorer fails here, before any work
    strengths = (-1.0, 0.0, 1.0) if getattr(artifact, "transform_prompt", None) is not None else cfg.strengths
    t0 = time.perf_counter()
    got = executor_for(lm, executor).map(lm, _strength_item, list(strengths), shared=(b, artifact, prompts, cfg),
                                         desc=f"steering eval {getattr(artifact, 'method', '?')}", progress=progress)
    rows = [row for row, _ in got]
    samples = {str(s): texts for s, (_, texts) in zip(strengths, got)}
    layers = list(getattr(artifact, "layers", []))
    hook = artifact.hook_name(layers[0]) if layers and hasattr(artifact, "hook_name") else getattr(artifact, "hook", "")
    return SteeringEvaluation(method=getattr(artifact, "method", type(artifact).__name__), behavior=b.name,
                              layers=layers, hook=hook, strengths=list(strengths), rows=rows, samples=samples,
                              config=cfg.to_dict(), artifact_config=dict(getattr(artifact, "config", {}) or {}),
                              model=lm.identity.to_dict(), seconds=time.perf_counter() - t0, split=cfg.split)


def _strength_item(lm: Any, s: float, shared: tuple) -> tuple[dict[str, Any], list[str]]:
    """The execution seam's item: generations and scores of the prompts with ``artifact`` at strength ``s``."""
    b, artifact, prompts, cfg = shared
    transform = getattr(artifact, "transform_prompt", None)
    shown = [transform(p, s) for p in prompts] if transform is not None else prompts
    with artifact.apply(lm, s, positions=cfg.positions) if s != 0 else _null():
        texts = generate(lm, shown, max_new_tokens=cfg.gen_tokens, top_k=cfg.top_k, seed=cfg.seed,
                         batch_size=cfg.batch_size)
        prob = behavior_probability(lm, b, shown, batch_size=cfg.batch_size) if b.positive_tokens else float("nan")
    m, lo, hi = mean_ci(get_scorer(b)(texts))
    nll = [x for x in continuation_nll(lm, prompts, texts) if x == x]
    kl = 0.0 if s == 0 or transform is not None or cfg.n_neutral_tokens == 0 else neutral_kl(
        lm, artifact, s, cfg.n_neutral_tokens)
    return ({"strength": s, "behavior_score": m, "behavior_lo": lo, "behavior_hi": hi, "target_prob": prob,
             "perplexity": math.exp(float(np.mean(nll))) if nll else float("nan"),
             "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
             "distinct_3": distinct_n(texts, 3), "kl_neutral": kl}, texts[:5])


def _null():
    import contextlib

    return contextlib.nullcontext()
