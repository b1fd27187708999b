"""ROME: Rank-One Model Editing (Meng, Bau, Andonian & Belinkov 2022, "Locating and Editing
Factual Associations in GPT", NeurIPS).

Causal tracing finds that a subject's facts are recalled by mid-layer MLPs at the subject's
last token. ROME treats one such MLP's output projection ``W`` as a key-value memory and
rewrites a single association:

1. **k*** -- the key at the subject's last token (input of ``W``, hook ``blocks.L.mlp.out.hook_in``),
   averaged over the edit prompt preceded by short generated contexts;
2. **v*** -- ``W k* + δ``, where ``δ`` is optimised so that adding it to ``W``'s output at the
   subject's last token makes the model say the new object (with the KL "essence" term, weight
   decay and norm clamp; see :mod:`lens_memory.edit.targets`). Gemma's post-MLP RMSNorm sits
   between ``W`` and the residual stream, so ``δ`` is optimised *through* that norm;
3. the rank-one closed form ``W' = W + δ (C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k*)`` with ``C = E[k kᵀ]``
   (:mod:`lens_memory.edit.stats`), so ``W' k* = v*`` exactly.

Three key modes (``RomeConfig.key_mode``), all with ``v* = W k_plain + b + δ`` where ``k_plain``
is the key of the plain edit prompt and ``k̄`` the key averaged over the context-prefixed prompts:

* ``"original"`` (default) -- kmeng01/rome's code: direction ``C⁻¹k̄`` (``compute_u``) but the
  plain prompt's key in the denominator (``compute_v``), ``ΔW = δ (C⁻¹k̄)ᵀ / ((C⁻¹k̄)ᵀ k_plain)``,
  so ``W' k_plain = v*``. Gupta et al. (2024) trace ROME's "disabling edits" to this asymmetry.
* ``"prome"`` -- **p-ROME**, Gupta, Baskaran & Anumanchipalli's (2024, "Rebuilding ROME") name for the
  variant with the plain prompt's key in both places (rebuilding-rome's ``enable_prompt_keys`` with
  ``original_implementation=False``): ``ΔW = δ (C⁻¹k_plain)ᵀ / ((C⁻¹k_plain)ᵀ k_plain)``.
* ``"rrome"`` -- **r-ROME**, the paper's fix: the prefix-averaged key ``k̄`` in both places (the equation of
  rebuilding-rome's README, ``k_* = (1/N) Σ_j k(x_j + s)``; ``rome_hparams.enable_random_prefix_keys``,
  its default, and EasyEdit's R-ROME), the target measured from the averaged outputs as ``compute_v`` does
  (``target_init`` is the plain prompt's MLP output, ``cur_output`` the prefix average):
  ``ΔW = (W k_plain + δ - W k̄)(C⁻¹k̄)ᵀ / ((C⁻¹k̄)ᵀ k̄)``, so ``W' k̄ = v*``.

Before issue 29 these two were called ``"rrome"`` (now ``"prome"``) and ``"rrome_prefix"`` (now ``"rrome"``);
``"rrome_prefix"`` is refused with a message saying so. Sequential editing names the methods the same way
(:data:`ROME_METHODS`: ``"rome"``, ``"prome"``, ``"rrome"``).

The KL "essence" term is read at the subject's last token of ``"{subject} is a"``, as in the
reference code (``kl_position="subject_last"``); ``"prompt_last"`` reads it at the prompt's last
token. Measured against kmeng01/rome on Gemma 3 270M when issue 14 was filed (20 facts, same C, contexts and clamp):
with ``"prompt_last"`` ΔW has cosine 0.953 with the reference's; with ``"subject_last"`` cosine
≥ 0.99999999, norm ratio 1 ± 6e-7.

Deviations from the paper's code (README, fidelity table): the context prefixes are sampled
from MEMIT's seed words ("The", "Therefore", ...) rather than from ROME's ``<|endoftext|>``, and
fewer of them by default on CPU (``context_lengths``); Gemma/OLMo 2's post-MLP norm sits between
``W`` and the residual stream, and ``δ`` is optimised at ``W``'s output, *through* that norm.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import LensMemoryError
from ..facts import Fact
from .artifact import Edit
from .config import EditConfigBase
from .solve import regularise, rome_update
from .stats import StatsConfig, check_stats, key_statistics
from .targets import (EditRows, build_rows, check_requests, context_templates, lookup_activations, optimise_targets,
                      per_fact_mean)
from .weights import key_hook, linear_weight, out_proj, proj_weight, tensor_sha256, value_hook

__all__ = ["RomeConfig", "rome", "default_layer", "KEY_MODES", "ROME_METHODS"]

log = logging.getLogger(__name__)

KEY_MODES = ("original", "prome", "rrome")
#: edit method name -> its ROME key mode (``lens-memory edit --method``, sequential editing)
ROME_METHODS = {"rome": "original", "prome": "prome", "rrome": "rrome"}
#: spellings from before issue 29 that now mean something else, and what to write instead
_RENAMED = {"rrome_prefix": "'rrome_prefix' is now called 'rrome' (r-ROME, prefix-averaged keys, Gupta et al. 2024); "
                            "the plain-prompt-key variant formerly called 'rrome' is 'prome' (p-ROME)"}

#: fallback edit layer when nothing is traced: the MLP peak of causal tracing (3 dev facts in bench_rome_dev: 5)
_TRACED_LAYER = {"gemma-3-270m": 5}

#: per-model overrides of the paper defaults (README, "Editing"). Gemma's clamp 0.7 is re-chosen on the dev split
#: by ``analyses/bench_rome_dev.py`` (8 known dev facts, layer traced on dev; S = harmonic mean of ES, PS, NS):
#: clamp 0.5 -> S 0.893 (NS 0.97, PS 0.75), 0.7 -> 0.925, 1.0 -> 0.768 (NS 0.52), 4.0 (paper) -> 0.346 (NS 0.15).
#: Gemma 3 270M's subject keys are so alike that ROME's clamp of 4x spills the update onto neighbours;
#: C from text sampled from the model separates subjects better than C from documentation prose
#: (neighbour/subject response 0.2-0.6 vs 0.5-1.5).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma-3-270m": {"clamp_norm_factor": 0.7, "stats": StatsConfig(corpus="samples:16384", n_tokens=16384)},
}


def default_layer(lm: Any) -> int:
    """The layer to edit when none is given: the traced one for known models, else ~30% depth."""
    return _TRACED_LAYER.get(lm.name, max(0, round(0.3 * (lm.n_layers - 1))))


@dataclass(frozen=True)
class RomeConfig(EditConfigBase):
    """ROME hyperparameters (defaults: the paper's GPT-2 XL values, contexts shortened for CPU).

    Attributes:
        layer: the MLP to edit; ``None`` -> :func:`default_layer` or the trace suggestion.
        v_steps, v_lr, v_weight_decay, clamp_norm_factor, kl_factor, early_stop_loss: the target
            optimisation (:func:`~lens_memory.edit.targets.optimise_targets`).
        context_lengths: ``(tokens, count)`` of generated context prefixes (paper: (5, 10), (10, 10)).
        key_mode: ``"original"`` (ROME), ``"prome"`` (p-ROME) or ``"rrome"`` (r-ROME); see module docstring.
        kl_position: ``"subject_last"`` (reference code) or ``"prompt_last"``.
        ridge: extra diagonal regularisation of ``C`` (times its mean eigenvalue).
        stats: how ``C`` is estimated.
    """

    layer: int | None = None
    v_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    early_stop_loss: float = 0.05
    context_lengths: tuple[tuple[int, int], ...] = ((5, 5), (10, 5))
    key_mode: str = "original"
    kl_position: str = "subject_last"
    ridge: float = 0.0
    stats: StatsConfig = field(default_factory=StatsConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        self._validate(("v_steps", "v_lr", "clamp_norm_factor"),
                       ("v_weight_decay", "kl_factor", "early_stop_loss", "ridge"))
        if self.key_mode in _RENAMED:
            raise LensMemoryError(f"RomeConfig.key_mode {_RENAMED[self.key_mode]}")
        if self.key_mode not in KEY_MODES:
            raise LensMemoryError(f"RomeConfig.key_mode must be one of {KEY_MODES}, got {self.key_mode!r}")


RomeConfig.MODEL_DEFAULTS = MODEL_DEFAULTS


def rome(lm: Any, fact: Fact, config: RomeConfig | None = None, *, layer: int | None = None,
         stats: Any = None, contexts: list[str] | None = None, check: bool = True) -> Edit:
    """Compute (not apply) a ROME edit making ``fact.prompt`` answer ``fact.target_new``.

    Args:
        lm: the model; its current weights (edits applied included) are the ones edited.
        fact: a :class:`~lens_memory.facts.Fact` with ``target_new``.
        config: :class:`RomeConfig` (default: :meth:`RomeConfig.for_model`).
        layer: overrides ``config.layer`` (e.g. ``trace_result.suggest_layers().layer``).
        stats: a precomputed :class:`~lens_memory.edit.stats.KeyStats` for the layer.
        contexts: the context templates (default: generated on the current weights; a sequence of edits
            fixes them on the unedited model, as the reference code's cache does).
        check: refuse a fact the current model already answers with the new target (default). A sequence
            checks its facts once on the unedited model and then writes every one, as MEMIT's batches do, even
            when an earlier edit has already made the model give a later fact's new answer.

    Returns:
        an :class:`~lens_memory.edit.artifact.Edit`; apply it with ``with edit.apply(lm): ...``.
    """
    cfg = config or RomeConfig.for_model(lm)
    L = lm.check_layer(layer if layer is not None else (cfg.layer if cfg.layer is not None else default_layer(lm)))
    cfg = dataclasses.replace(cfg, layer=L)
    if check:
        check_requests(lm, [fact])
    t0 = time.perf_counter()
    st = stats if stats is not None else key_statistics(lm, L, cfg.stats)[L]
    check_stats(st, lm, L)
    t_stats = time.perf_counter() - t0
    contexts = list(contexts) if contexts is not None else context_templates(lm, cfg.context_lengths, cfg.seed)
    rows = build_rows(lm, [fact], contexts)
    acts = lookup_activations(lm, rows, [key_hook(L), value_hook(L)])
    init = acts[value_hook(L)][rows.first_row].float()
    res = optimise_targets(lm, rows, value_hook(L), L, init, steps=cfg.v_steps, lr=cfg.v_lr,
                           weight_decay=cfg.v_weight_decay, clamp_norm_factor=cfg.clamp_norm_factor,
                           kl_factor=cfg.kl_factor, early_stop_loss=cfg.early_stop_loss, facts=[fact],
                           kl_position=cfg.kl_position)
    C, ridge = regularise(st.mom2, cfg.ridge, name=f"C (layer {L})")
    U, V, k_star, k_dir = _rank_one(lm, L, C, acts, rows, res.delta[0].double(), cfg.key_mode)
    W = linear_weight(lm, L).double()
    bias = getattr(out_proj(lm, L), "bias", None)
    k_plain = acts[key_hook(L)][rows.first_row[0]].double()
    v_star = W @ k_plain + (bias.double() if bias is not None else 0) + res.delta[0].double()
    info = {"k_star": k_star.float(), "v_star": v_star.float(), "k_direction": k_dir.float()}
    edit = Edit(method="rome", factors={L: (U.float(), V.float())}, requests=[fact.to_dict()],
                config=cfg.to_dict(), model=lm.identity.to_dict(), base_hashes={L: tensor_sha256(proj_weight(lm, L))},
                info={"target_prob": res.target_prob, "loss": res.loss, "steps": res.steps,
                      "delta_norm": float(res.delta[0].norm()), "init_norm": float(init[0].norm()),
                      "ridge": ridge, "n_contexts": len(contexts), "contexts": contexts,
                      "stats_tokens": st.n_tokens, "stats_corpus": st.corpus, "stats_seconds": t_stats,
                      "seconds": time.perf_counter() - t0,
                      "k_star": info["k_star"].tolist(), "v_star": info["v_star"].tolist(),
                      "k_direction": info["k_direction"].tolist()})
    return edit


def _rank_one(lm: Any, L: int, C: torch.Tensor, acts: dict[str, torch.Tensor], rows: EditRows, delta: torch.Tensor,
              key_mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U, V, k*, k_dir)`` of the key mode: ``ΔW = U Vᵀ`` maps ``k*`` to ``v*``; ``C⁻¹k_dir`` is its direction."""
    keys = acts[key_hook(L)]
    k_plain = keys[rows.first_row[0]].double()
    k_bar = per_fact_mean(keys, rows)[0]
    if key_mode == "original":
        U, V = rome_update(C, k_bar, delta, k_denominator=k_plain)
        return U, V, k_plain, k_bar
    if key_mode == "prome":
        U, V = rome_update(C, k_plain, delta)
        return U, V, k_plain, k_plain
    # rrome: target W k_plain + δ, measured from the prefix-averaged output W k̄ (biases cancel)
    v_bar = per_fact_mean(acts[value_hook(L)], rows)[0]
    residual = acts[value_hook(L)][rows.first_row[0]].double() + delta - v_bar
    U, V = rome_update(C, k_bar, residual)
    return U, V, k_bar, k_bar
