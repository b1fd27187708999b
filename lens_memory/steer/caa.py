"""Contrastive Activation Addition (CAA), in the paper's A/B form and in EasyEdit2's completion form.

Rimsky, Gabrieli, Schulz, Tong, Hubinger & Turner (2024), "Steering Llama 2 via Contrastive
Activation Addition" (ACL 2024; also published under Panickssery et al.); reference code
``nrimsky/CAA`` (``generate_vectors.py``). For matched pairs that differ only in whether the
answer shows a behaviour, CAA averages the difference of residual-stream activations at layer
``L``::

    v_L = mean_i ( a_L(x_i, matching answer) - a_L(x_i, non-matching answer) )

What ``a_L`` is differs between the paper and EasyEdit2, so both are offered, each under its own
name (``CAAConfig.form``) and recorded in the vector's ``config`` and ``info["form"]``:

* ``"ab_letter"`` -- **the paper's form**: each item is an A/B multiple-choice question whose two
  options are the pair's continuations (:class:`~lens_memory.steer.behaviors.ABItem`, letters
  balanced); ``a_L`` is the activation at the answer *letter* token (the reference code's
  ``[0, -2]`` of ``"... (A)"``), once with the behaviour-matching letter and once with the other.
  The prompt is laid out as the reference's base-model template, ``"Input: {question}\nResponse: ("``.
* ``"completion_mean"`` -- **EasyEdit2's form** (``zjunlp/EasyEdit``,
  ``steer/vector_generators/caa``, ``multiple_choice=False``): the prompt continued with the
  positive and with the negative completion, ``a_L`` the mean over the completion tokens
  (``position="answer_last"`` reads the completion's last token instead; ours, recorded).

**Default: ``"completion_mean"``**, because the built-in behaviours are open-ended completion
behaviours of a small *base* model and are evaluated by steering free generation after the
prompt: the completion form reads activations on exactly that kind of text, while the A/B form
presupposes a model that follows a multiple-choice format (the paper used Llama 2 Chat, mostly).
Use ``form="ab_letter"`` to reproduce the paper. Measured on Gemma 3 270M (layer 10, the 25 dev
prompts, target probability ``P(pos) / (P(pos) + P(neg))``): the base model picks the matching
letter of the built-in A/B items with probability 0.53 (sentiment) and 0.52 (ocean), i.e. at
chance; the A/B vector is nearly orthogonal to the completion vector (cosine -0.11 / -0.06) and,
even rescaled to the completion vector's norm, moves sentiment from 0.96 only to 0.84 / 0.99 at
∓2 (completion form: 0.24 / 1.00) and ocean from 0.43 to 0.39 / 0.46 (completion form: 0.11 /
0.88). At its own norm (29 vs 523 for sentiment) it has no measurable effect at ±2.

Deviations from the reference code, and why:

* the prompt and the answer are tokenized separately (the answer tokens are exactly the
  continuation's tokens whatever the tokenizer would merge across the boundary); EasyEdit2
  tokenizes ``question + answer`` jointly and slices at the question's length;
* A/B questions are built from our completion pairs (no third-party data): a neutral header, the
  prompt and the two continuations as ``(A)``/``(B)``; the paper's questions are Anthropic's
  model-written evaluations with their own wording.

Adding ``alpha * v_L`` to the residual stream at layer ``L`` on the positions after the prompt
steers generation towards (``alpha > 0``) or away from (``alpha < 0``) the behaviour. The vector is
unnormalised, so ``alpha = 1`` adds the raw mean difference; record and compare strengths in
that unit.

Helpers: :func:`caa_layer_sweep` fits every candidate layer from one forward pass and ranks them
by the shift of the target-behaviour probability on the behaviour's *dev* prompts (choose on
dev, report on test); the multiplier sweep is :func:`lens_memory.steer.evaluate.evaluate_steering`
over strengths.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import torch

from ..hooks import hook_name
from ..errors import LensMemoryError
from .activations import POSITIONS, ContrastActivations, contrast_activations
from .behaviors import Behavior, ContrastPair, load_behavior
from .vector import POSITION_MODES, SteeringVector

__all__ = ["CAAConfig", "caa", "caa_from_activations", "caa_layer_sweep", "LayerSweep", "resid_hook", "FORMS",
           "caa_pairs"]

log = logging.getLogger(__name__)

#: the two CAA forms (see the module docstring); the first is the default
FORMS = ("completion_mean", "ab_letter")


def resid_hook(layer: int) -> str:
    """The residual stream after block ``layer`` (TL's ``blocks.L.hook_resid_post``)."""
    return hook_name(layer, "resid_post")


@dataclass(frozen=True)
class CAAConfig:
    """CAA settings.

    Attributes:
        layers: layers whose ``hook_resid_post`` gets a vector (``None``: :func:`default_layer`).
        form: ``"completion_mean"`` (EasyEdit2: completion pairs; the default) or ``"ab_letter"``
            (the paper: A/B questions, activation at the answer letter).
        position: for ``"completion_mean"``: ``"answer_mean"`` (mean over the completion tokens) or
            ``"answer_last"``; ignored by ``"ab_letter"``, whose answer is the single letter token.
        apply_positions: where the vector is added by default (``"after_prompt"`` or ``"all"``).
        n_pairs: use only the first ``n_pairs`` training pairs (``None``: all).
        batch_size: sequences per forward pass.
    """

    layers: tuple[int, ...] | None = None
    form: str = "completion_mean"
    position: str = "answer_mean"
    apply_positions: str = "after_prompt"
    n_pairs: int | None = None
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
            if not self.layers:
                raise LensMemoryError("CAAConfig.layers is empty")
        if self.form not in FORMS:
            raise LensMemoryError(f"CAAConfig.form must be one of {FORMS}, got {self.form!r}")
        if self.position not in POSITIONS:
            raise LensMemoryError(f"CAAConfig.position must be one of {POSITIONS}, got {self.position!r}")
        if self.apply_positions not in POSITION_MODES:
            raise LensMemoryError(f"CAAConfig.apply_positions must be one of {POSITION_MODES}, got {self.apply_positions!r}")
        if self.n_pairs is not None and (not isinstance(self.n_pairs, int) or self.n_pairs < 1):
            raise LensMemoryError(f"CAAConfig.n_pairs must be a positive int or None, got {self.n_pairs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise LensMemoryError(f"CAAConfig.batch_size must be a positive int, got {self.batch_size!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d


#: Default layers, chosen on the DEV half of the sentiment prompts by ``analyses/bench_caa_dev.py`` (25 dev
#: prompts, 20 tokens, strength ±2; rule fixed before the run: the largest swing score(+2) - score(-2) among
#: layers whose perplexity at ±2 stays within 1.5x the unsteered 9.0). Gemma 3 270M, VADER at -2 / +2 and swing:
#: layer 6 0.21 / 0.67 (0.46), 8 -0.07 / 0.65 (0.72), 10 -0.34 / 0.79 (1.13), 12 -0.35 / 0.86 (1.21, ppl ratio
#: 1.55: out), 14 -0.40 / 0.87 (1.26, ratio 1.51: out) -> 10. Test half (25): -0.19 [-0.38, -0.01] / 0.39 unsteered /
#: 0.80 [0.72, 0.87], perplexity 12.0 / 8.8 / 10.4.
MODEL_DEFAULT_LAYER = {"gemma-3-270m": 10}


def default_layer(lm: Any) -> int:
    """The measured default for known models (layer 10 of Gemma 3 270M's 18), else the middle layer."""
    return MODEL_DEFAULT_LAYER.get(lm.name, lm.n_layers // 2)


def caa_pairs(b: Behavior, cfg: CAAConfig) -> tuple[list[ContrastPair], str]:
    """The contrast pairs and the read position of ``cfg.form``: completions, or A/B letters (last token)."""
    if cfg.form == "ab_letter":
        pairs = b.ab_pairs()
        return (pairs[:cfg.n_pairs] if cfg.n_pairs else pairs), "answer_last"
    return (b.train[:cfg.n_pairs] if cfg.n_pairs else b.train), cfg.position


def _check_letters(lm: Any, pairs: list[ContrastPair]) -> None:
    for letter in {p.positive for p in pairs} | {p.negative for p in pairs}:
        if len(lm.tokenizer(letter, add_special_tokens=False)["input_ids"]) != 1:
            raise LensMemoryError(f"the answer letter {letter!r} is not one token for {lm.name}; ab_letter needs it")


def caa_from_activations(lm: Any, acts: dict[int, ContrastActivations], behavior: str, cfg: CAAConfig,
                         info: dict[str, Any] | None = None) -> SteeringVector:
    """The CAA vector (mean difference) from already collected contrast activations."""
    vectors = {layer: a.mean_difference().float() for layer, a in acts.items()}
    for layer, v in vectors.items():
        if not torch.isfinite(v).all():
            raise LensMemoryError(f"CAA vector at layer {layer} is not finite")
    position = "letter" if cfg.form == "ab_letter" else cfg.position
    return SteeringVector("caa", vectors, behavior, config=cfg.to_dict(), model=lm.identity.to_dict(),
                          info={"form": cfg.form, "position": position, "n_pairs": next(iter(acts.values())).n_pairs,
                                "norms": {str(l): float(v.norm()) for l, v in vectors.items()}, **(info or {})})


def caa(lm: Any, behavior: Behavior | str, cfg: CAAConfig | None = None) -> SteeringVector:
    """Fit a CAA steering vector on ``behavior``'s training data in ``cfg.form`` (see the module docstring)."""
    cfg = cfg or CAAConfig()
    b = load_behavior(behavior)
    layers = cfg.layers or (default_layer(lm),)
    for layer in layers:
        lm.check_layer(layer)
    pairs, position = caa_pairs(b, cfg)
    if cfg.form == "ab_letter":
        _check_letters(lm, pairs)
    t0 = time.perf_counter()
    got = contrast_activations(lm, pairs, [resid_hook(l) for l in layers], position=position,
                               batch_size=cfg.batch_size)
    seconds = time.perf_counter() - t0
    log.info("CAA (%s) on %d pairs of %r at layers %s: %.1f s", cfg.form, len(pairs), b.name, list(layers), seconds)
    return caa_from_activations(lm, {l: got[resid_hook(l)] for l in layers}, b.name, cfg,
                                {"seconds": seconds, "tokens": int(sum(a.positive.shape[0] + a.negative.shape[0]
                                                                      for a in got.values()) // len(layers))})


@dataclass
class LayerSweep:
    """Per layer: the CAA vector's norm and the shift of the target-behaviour probability it causes.

    ``split`` is the evaluation split the probabilities were measured on (``"dev"`` by default:
    a layer chosen here is then reported on ``"test"``); ``form`` the CAA form.
    """

    behavior: str
    strength: float
    layers: list[int]
    norms: list[float]
    prob_base: float
    prob_plus: list[float]
    prob_minus: list[float]
    split: str = "dev"
    form: str = "completion_mean"

    @property
    def best_layer(self) -> int:
        """The layer with the largest ``P(+) - P(-)`` spread."""
        spread = [p - m for p, m in zip(self.prob_plus, self.prob_minus)]
        return self.layers[max(range(len(spread)), key=spread.__getitem__)]

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame({"layer": self.layers, "norm": self.norms, "prob_plus": self.prob_plus,
                             "prob_minus": self.prob_minus,
                             "spread": [p - m for p, m in zip(self.prob_plus, self.prob_minus)]})

    def plot(self, ax=None):
        from ..viz import plot_layer_sweep

        return plot_layer_sweep(self, ax=ax)


def _layer_item(lm: Any, item: tuple, shared: tuple) -> tuple[float, float, float]:
    """The execution seam's item: one layer's CAA vector, and ``P(target)`` at ``+strength`` and ``-strength``."""
    from .evaluate import behavior_probability

    layer, acts = item
    b, cfg, prompts, strength = shared
    vec = caa_from_activations(lm, {layer: acts}, b.name, replace(cfg, layers=(layer,)))
    with vec.apply(lm, strength):
        plus = behavior_probability(lm, b, prompts)
    with vec.apply(lm, -strength):
        minus = behavior_probability(lm, b, prompts)
    return vec.norm(), plus, minus


def caa_layer_sweep(lm: Any, behavior: Behavior | str, layers: Sequence[int] | None = None, *,
                    strength: float = 4.0, cfg: CAAConfig | None = None, n_eval: int | None = 20,
                    split: str = "dev", executor: Any = None) -> LayerSweep:
    """Fit CAA at every layer in one pass and measure ``P(target)`` on the ``split`` prompts at ``±strength``.

    The activations are collected in one pass here; each layer's vector and its two measurements are an
    item of the execution seam (``executor``, :mod:`lens_memory.parallel`).
    """
    from ..parallel import executor_for
    from .evaluate import behavior_probability

    b = load_behavior(behavior)
    layers = list(layers if layers is not None else range(lm.n_layers))
    cfg = cfg or CAAConfig()
    pairs, position = caa_pairs(b, cfg)
    got = contrast_activations(lm, pairs, [resid_hook(l) for l in layers], position=position,
                               batch_size=cfg.batch_size)
    held = b.split(split).eval_prompts
    prompts = held[:n_eval] if n_eval else held
    base = behavior_probability(lm, b, prompts)
    per_layer = executor_for(lm, executor).map(lm, _layer_item, [(layer, got[resid_hook(layer)]) for layer in layers],
                                               shared=(b, cfg, prompts, strength), desc="CAA layer sweep",
                                               progress=False)
    norms, plus, minus = (list(x) for x in zip(*per_layer))
    return LayerSweep(b.name, strength, layers, norms, base, plus, minus, split=split, form=cfg.form)
