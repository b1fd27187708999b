"""MEMIT: Mass-Editing Memory in a Transformer (Meng, Sen Sharma, Andonian, Belinkov & Bau 2023, ICLR).

ROME writes one fact into one layer. MEMIT writes many facts at once, spread over a range of
critical MLP layers ``L_1 < ... < L_R`` (the causal-tracing window):

1. for every fact, a target hidden state ``z = h + δ`` at the last edit layer's output
   (``blocks.L_R.hook_resid_post``) at the subject's last token, with ``δ`` optimised as in ROME
   -- batched over facts, exact because each ``δ`` only touches its own prompts;
2. for each layer ``L_i`` in order: the keys ``K`` (recomputed on the model with the lower layers
   already updated; averaged within each context-template group -- the plain prompt, the
   generated prefixes -- and then across groups, as ``compute_ks`` does, so the plain prompt
   weighs 1/2), the remaining residual ``R = (z - h_cur) / (R - i + 1)``
   (spread evenly over the layers not yet updated), and the least-squares update
   ``ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹`` (:func:`~lens_memory.edit.solve.memit_update`).

For models with an RMSNorm after the MLP (Gemma 2/3, OLMo 2: ``post_feedforward_layernorm``), the
residual-stream change ``R`` is mapped to the output projection's own output space with
:func:`~lens_memory.edit.weights.residual_to_value`. Without a post-norm that map is the identity,
and the update is MEMIT's. With one, MEMIT is **approximate by construction** (a deviation the
paper, written for GPT-J, never met): the norm fixes the size of the MLP's contribution, so a
layer can only reach the closest contribution of that size, and later layers see what is left.
Measured with one layer and λ → 0: on tiny random models the miss is 0.60 (Gemma 3) and 0.61
(OLMo 2) of the requested change (0.73 / 0.88 with the norm ignored); on Gemma 3 270M (8 dev facts)
0.29 at layer 4 and 0.17 at layer 6, where ignoring the norm overshoots the change 5.4x / 9.2x.

Context prefixes are MEMIT's (five texts of 10 tokens from the seed words "The", "Therefore",
"Because", "I", "You", sampled top-5). λ and the layer window are chosen per model on dev facts
(``analyses/bench_memit_generalisation.py``), as the paper's λ = 15000 and layers 3-8 were for GPT-J.

Facts are processed in chunks of ``batch_facts`` (bounded memory for thousands of edits); the
optimisation can also run one fact at a time (``batch_facts=1``) for comparison.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..hooks import hook_name
from ..errors import LensMemoryError
from ..facts import Fact
from .artifact import Edit, WeightPatch
from .config import EditConfigBase
from .rome import default_layer
from .solve import memit_update, regularise
from .stats import StatsConfig, check_stats, key_statistics
from .targets import (build_rows, check_requests, context_groups, context_templates, lookup_activations,
                      optimise_targets, per_fact_mean)
from .weights import key_hook, proj_weight, residual_to_value, tensor_sha256, value_hook

__all__ = ["MemitConfig", "memit", "memit_targets", "MemitTargets", "default_layers", "layer_keys", "memit_solver",
           "memit_layers", "window_stats", "window_edit", "MODEL_DEFAULTS"]

#: per-model overrides of the paper defaults (see :data:`lens_memory.edit.rome.MODEL_DEFAULTS`). MEMIT's
#: λ = 15000 was set for GPT-J (d_mlp 16384); a typical key's whitened norm kᵀC⁻¹k grows with d_mlp, so
#: λ is scaled by d_mlp / 16384 (Gemma 3 270M, 10 facts: efficacy 0.0 at λ = 15000, 0.9 at λ = 2000).
#: Re-chosen on dev facts (``analyses/bench_memit_generalisation.py``, 16 dev facts, traced window 2-6):
#: S = 0.877 at λ = 2000 vs 0.737 at λ = 6000 (4-8: 0.803 / 0.682), so 2000 stays.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma-3-270m": {"mom2_update_weight": 2000.0, "stats": StatsConfig(corpus="samples:16384", n_tokens=16384)},
}

log = logging.getLogger(__name__)


def default_layers(lm: Any, width: int = 5) -> list[int]:
    """A window of ``width`` layers centred on :func:`~lens_memory.edit.rome.default_layer`."""
    usable = max(1, lm.n_layers - 1)  # the window may not end at the last layer
    width = min(width, usable)
    start = min(max(0, default_layer(lm) - width // 2), usable - width)
    return list(range(start, start + width))


@dataclass(frozen=True)
class MemitConfig(EditConfigBase):
    """MEMIT hyperparameters (defaults: the paper's GPT-J values, contexts shortened for CPU).

    Attributes:
        layers: the MLPs to edit; ``None`` -> :func:`default_layers` or the trace suggestion.
        mom2_update_weight: ``λ`` weighting the preserved keys' second moment against the new keys.
        batch_facts: facts per optimisation batch / key chunk.
        kl_position: where the KL term is read (:func:`~lens_memory.edit.targets.optimise_targets`).
    """

    layers: tuple[int, ...] | None = None
    v_steps: int = 25
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    early_stop_loss: float = 0.05
    context_lengths: tuple[tuple[int, int], ...] = ((10, 5),)
    kl_position: str = "subject_last"
    mom2_update_weight: float = 15000.0
    ridge: float = 0.0
    batch_facts: int = 16
    stats: StatsConfig = field(default_factory=StatsConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        self._validate(("v_steps", "v_lr", "clamp_norm_factor", "batch_facts"),
                       ("v_weight_decay", "kl_factor", "early_stop_loss", "ridge", "mom2_update_weight"))
        if self.layers is not None:
            layers = tuple(sorted(set(int(x) for x in self.layers)))
            if not layers:
                raise LensMemoryError(f"MemitConfig.layers must list at least one layer, got {self.layers!r}")
            object.__setattr__(self, "layers", layers)


MemitConfig.MODEL_DEFAULTS = MODEL_DEFAULTS


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


@dataclass
class MemitTargets:
    """MEMIT's step 1: per fact the target residual ``z`` at ``blocks.{z_layer}.hook_resid_post``."""

    z_layer: int
    z: torch.Tensor  # [fact d_model]
    target_prob: list[float]
    loss: list[float]
    steps: list[int]


def memit_targets(lm: Any, facts: Sequence[Fact], cfg: MemitConfig, contexts: Sequence[str] | None = None
                  ) -> MemitTargets:
    """Optimise the target residuals ``z`` (batched, ``cfg.batch_facts`` facts at a time) at ``cfg.layers[-1]``."""
    contexts = list(contexts) if contexts is not None else context_templates(lm, cfg.context_lengths, cfg.seed)
    z_layer = max(cfg.layers) if cfg.layers else default_layers(lm)[-1]
    z_hook = hook_name(z_layer, "resid_post")
    zs, probs, losses, steps = [], [], [], []
    for ch in tqdm(_chunks(len(facts), cfg.batch_facts), desc="MEMIT targets", leave=False):
        sub = [facts[i] for i in ch]
        rows = build_rows(lm, sub, contexts)
        init = lookup_activations(lm, rows, [z_hook])[z_hook][rows.first_row].float()
        res = optimise_targets(lm, rows, z_hook, z_layer, init, steps=cfg.v_steps, lr=cfg.v_lr,
                               weight_decay=cfg.v_weight_decay, clamp_norm_factor=cfg.clamp_norm_factor,
                               kl_factor=cfg.kl_factor, early_stop_loss=cfg.early_stop_loss, facts=sub,
                               kl_position=cfg.kl_position)
        zs.append(init + res.delta)
        probs += res.target_prob
        losses += res.loss
        steps += res.steps
    return MemitTargets(z_layer=z_layer, z=torch.cat(zs), target_prob=probs, loss=losses, steps=steps)


def _layer_residuals(lm: Any, facts: list[Fact], j: int, i: int, Ls: list[int], z: torch.Tensor, cfg: MemitConfig,
                     contexts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys ``K_j`` ``[d_mlp fact]`` and the value change ``D_j`` ``[d_model fact]`` layer ``j`` must carry:
    its share ``1 / (layers left)`` of the residual from the current output of the last layer to ``z``."""
    z_hook = hook_name(Ls[-1], "resid_post")
    groups = context_groups(cfg.context_lengths)
    K, D = [], []
    for ch in _chunks(len(facts), cfg.batch_facts):
        rows = build_rows(lm, [facts[c] for c in ch], contexts, kl_prompts=())
        acts = lookup_activations(lm, rows, [key_hook(j), value_hook(j), z_hook])
        K.append(per_fact_mean(acts[key_hook(j)], rows, groups))
        first = rows.first_row
        resid = (z[list(ch)].double() - acts[z_hook][first].double()) / (len(Ls) - i)
        D.append(residual_to_value(lm, j, acts[value_hook(j)][first].double(), resid))
    return torch.cat(K).T, torch.cat(D).T


def layer_keys(lm: Any, facts: Sequence[Fact], Ls: Sequence[int], cfg: MemitConfig, contexts: Sequence[str]
               ) -> dict[int, torch.Tensor]:
    """MEMIT's keys ``K_j`` ``[d_mlp fact]`` of every layer in ``Ls`` on the current weights (one pass per chunk)."""
    groups = context_groups(cfg.context_lengths)
    out: dict[int, list[torch.Tensor]] = {j: [] for j in Ls}
    for ch in _chunks(len(facts), cfg.batch_facts):
        rows = build_rows(lm, [facts[c] for c in ch], contexts, kl_prompts=())
        acts = lookup_activations(lm, rows, [key_hook(j) for j in Ls])
        for j in Ls:
            out[j].append(per_fact_mean(acts[key_hook(j)], rows, groups))
    return {j: torch.cat(k).T for j, k in out.items()}


def memit_solver(stats: dict[int, Any], cfg: MemitConfig) -> Callable:
    """MEMIT's per-layer solve ``(j, K, D) -> ((U, V), info)``: ``ΔW = D Kᵀ (λC + KKᵀ)⁻¹``.

    ``info`` holds the ridge added to ``C`` and the condition number of ``λC + KKᵀ`` (the matrix inverted).
    """
    def solve(j: int, K: torch.Tensor, D: torch.Tensor) -> tuple[tuple, dict[str, float]]:
        C, ridge = regularise(stats[j].mom2, cfg.ridge, name=f"C (layer {j})")
        ev = torch.linalg.eigvalsh(cfg.mom2_update_weight * C + K.double() @ K.double().T)
        cond = float(ev[-1] / ev[0]) if ev[0] > 0 else float("inf")
        return memit_update(C, K, D, cfg.mom2_update_weight), {"ridge": ridge, "condition": cond}
    return solve


def _spread(lm: Any, facts: list[Fact], Ls: list[int], z: torch.Tensor, solve: Callable, cfg: MemitConfig,
            contexts: Sequence[str], method: str = "memit") -> tuple[dict, dict, dict]:
    """MEMIT's layer loop: solve each layer's update on the model with the lower layers' updates applied.

    ``solve(j, K_j, D_j) -> ((U, V), info)`` is the method's closed form (:func:`memit_solver`, AlphaEdit's).
    Returns ``(factors, infos, base_hashes)``; the model's weights are restored before returning.
    """
    factors: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    base_hashes = {j: tensor_sha256(proj_weight(lm, j)) for j in Ls}
    patches: list[WeightPatch] = []
    infos = {}
    try:
        for i, j in enumerate(Ls):
            K_j, D_j = _layer_residuals(lm, facts, j, i, Ls, z, cfg, contexts)
            (U, V), infos[j] = solve(j, K_j, D_j)
            factors[j] = (U.float(), None if V is None else V.float())
            delta = U if V is None else U @ V.T
            if not torch.isfinite(delta).all():
                raise LensMemoryError(f"{method} update for layer {j} is not finite; no weights were changed")
            patches.append(WeightPatch(lm, {j: delta}))
    finally:
        for p in reversed(patches):
            p.restore()
    return factors, infos, base_hashes


def memit_layers(lm: Any, cfg: MemitConfig, layers: Sequence[int] | None) -> tuple[MemitConfig, list[int]]:
    """The edited window (``layers``, else ``cfg.layers``, else :func:`default_layers`) and ``cfg`` with it set."""
    Ls = list(layers) if layers is not None else (list(cfg.layers) if cfg.layers else default_layers(lm))
    Ls = sorted({lm.check_layer(int(x)) for x in Ls})
    if Ls[-1] == lm.n_layers - 1:
        raise LensMemoryError(
            f"MEMIT layers {Ls} end at the last layer ({lm.n_layers - 1}): such a window gave ΔW = 0 (the target z "
            f"is read at the window's last residual output); end the window below it")
    return dataclasses.replace(cfg, layers=tuple(Ls)), Ls


def window_stats(lm: Any, Ls: Sequence[int], stats: dict[int, Any] | None, cfg: MemitConfig) -> dict[int, Any]:
    """``stats`` checked against the current weights, completed with :func:`key_statistics` where missing."""
    stats = dict(stats or {})
    for j, st in stats.items():
        check_stats(st, lm, j)
    missing = [j for j in Ls if j not in stats]
    if missing:
        stats.update(key_statistics(lm, missing, cfg.stats))
    return stats


def memit(lm: Any, facts: Sequence[Fact], config: MemitConfig | None = None, *,
          layers: Sequence[int] | None = None, stats: dict[int, Any] | None = None,
          targets: MemitTargets | None = None) -> Edit:
    """Compute (not apply) one MEMIT edit inserting all ``facts``.

    Args:
        lm: the model (current weights are the ones edited).
        facts: facts with ``target_new``.
        config: :class:`MemitConfig`.
        layers: overrides ``config.layers`` (e.g. ``trace_result.suggest_layers().layers``).
        stats: precomputed :class:`~lens_memory.edit.stats.KeyStats` per layer.
        targets: precomputed :func:`memit_targets` for the same facts, settings and last layer (e.g. a λ sweep).
    """
    cfg, Ls = memit_layers(lm, config or MemitConfig.for_model(lm), layers)
    facts = list(facts)
    check_requests(lm, facts)
    t0 = time.perf_counter()
    stats = window_stats(lm, Ls, stats, cfg)
    info = {"stats_tokens": {j: stats[j].n_tokens for j in Ls}, "stats_corpus": stats[Ls[0]].corpus,
            "stats_seconds": time.perf_counter() - t0}
    return window_edit(lm, facts, cfg, memit_solver(stats, cfg), "memit", targets=targets, info=info)


def window_edit(lm: Any, facts: list[Fact], cfg: MemitConfig, solve: Callable, method: str, *,
                contexts: Sequence[str] | None = None, targets: MemitTargets | None = None,
                info: dict[str, Any] | None = None) -> Edit:
    """MEMIT's two steps on ``cfg.layers`` with the per-layer closed form ``solve`` (MEMIT's or AlphaEdit's)."""
    t0 = time.perf_counter()
    Ls = list(cfg.layers)
    contexts = list(contexts) if contexts is not None else context_templates(lm, cfg.context_lengths, cfg.seed)
    # 1. target hidden states z per fact (reused when given: they depend on z_layer, not on λ or lower layers)
    tg = targets if targets is not None else memit_targets(lm, facts, cfg, contexts)
    if tg.z_layer != Ls[-1] or tg.z.shape[0] != len(facts):
        raise LensMemoryError(f"MEMIT targets are for layer {tg.z_layer} and {tg.z.shape[0]} facts, "
                              f"not layer {Ls[-1]} and {len(facts)} facts")
    t_targets = time.perf_counter() - t0
    # 2. spread the residual over the layers, lowest first
    factors, infos, base_hashes = _spread(lm, facts, Ls, tg.z, solve, cfg, contexts, method)
    per_layer = {k: {j: infos[j][k] for j in Ls} for k in infos[Ls[0]]}
    info = {**(info or {}), "target_prob": tg.target_prob, "loss": tg.loss, "steps": tg.steps,
            "n_contexts": len(contexts), "contexts": contexts, "targets_seconds": t_targets, "z_layer": Ls[-1],
            "z": tg.z.tolist(), **{("solve_condition" if k == "condition" else k): v for k, v in per_layer.items()}}
    info["seconds"] = info.get("stats_seconds", 0.0) + time.perf_counter() - t0
    return Edit(method=method, factors=factors, requests=[f.to_dict() for f in facts], config=cfg.to_dict(),
                model=lm.identity.to_dict(), base_hashes=base_hashes, info=info)
