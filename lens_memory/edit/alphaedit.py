"""AlphaEdit: null-space constrained knowledge editing (Fang, Jiang, Wang, Ma, Shi, Wang, He & Chua 2025, ICLR).

Sequential MEMIT trades each batch's new facts against the *preserved* knowledge through ``λ C`` and
forgets nothing about earlier edits: after a few hundred edits the accumulated ``ΔW`` disturbs what
the model knew and undoes what was written before. AlphaEdit removes the trade-off. With ``K_0``
the preserved keys and ``C = K_0 K_0ᵀ / n`` their second moment (MEMIT's key statistics):

1. **projector** -- ``P = Û Ûᵀ`` over the eigenvectors of ``C`` whose eigenvalue is below
   ``nullspace_threshold`` (the reference code's ``get_project``: SVD of the same ``mom2``, threshold
   ``2e-2``). Any ``ΔW`` of the form ``Δ P`` leaves ``W K_0`` (almost) unchanged, because ``P K_0 ≈ 0``.
2. **update** (paper eq. 14) -- per layer, with ``K`` the batch's keys, ``R`` the residual MEMIT
   assigns the layer and ``K_p K_pᵀ`` the accumulated keys of every earlier batch::

       ΔW = R Kᵀ P ((K_p K_pᵀ + K Kᵀ) P + l2·I)⁻¹          (λ C is gone: P already preserves K_0)

   solved as the reference code does, ``(P(KKᵀ + K_pK_pᵀ) + l2·I) X = P K Rᵀ``, ``ΔW = Xᵀ`` (kept as rank-n
   factors ``R (A⁻¹ P K)ᵀ``), so
   ``ΔW (I - P) = 0`` exactly (:func:`~lens_memory.edit.solve.alphaedit_update`).
3. **accumulation** -- after the batch is written, its keys are recomputed at every layer on the
   edited model and ``K Kᵀ`` is added to ``K_p K_pᵀ`` (the reference's ``cache_c``).

Everything else -- the target residuals ``z``, the layer window and the residual split over layers --
is MEMIT's (:func:`~lens_memory.edit.memit.window_edit`); hyperparameters are the paper's (``l2 = 10``,
threshold ``2e-2``, as in all three of its hparams files). ``P`` and ``C`` come from the *unedited*
model for the whole sequence, as in the reference code (its covariance cache is per model name).
With ``project=False`` and ``accumulate=False``, ``l2 = 0`` and ``mom2_update_weight = λ`` the update
is MEMIT's exactly (tested). One layer and one fact per batch is the ROME-style single edit.

Deviations (README, fidelity table): the threshold is an absolute eigenvalue, so the null space's size
depends on the key scale of the model; it is recorded per layer (Gemma 3 270M, layers 3-7 at 2e-2:
1217-1836 of 2048 dimensions). Gemma's post-MLP norm is handled as in MEMIT (:mod:`.memit`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float

from ..errors import LensMemoryError
from ..facts import Fact
from .artifact import Edit
from .memit import MemitConfig, layer_keys, memit_layers, window_edit, window_stats
from .solve import alphaedit_update, nullspace_projector, regularise
from .stats import StatsConfig
from .targets import check_requests

__all__ = ["AlphaEditConfig", "AlphaEditState", "alphaedit", "alphaedit_state", "alphaedit_solver", "batch_keys"]


@dataclass(frozen=True)
class AlphaEditConfig(MemitConfig):
    """AlphaEdit hyperparameters: MEMIT's target and window settings plus the null-space projection.

    Attributes:
        nullspace_threshold: eigenvalues of ``C`` below it span the preserved keys' null space (paper: 2e-2).
        l2: the ``‖Δ P‖²`` regulariser's weight (paper: 10).
        project: use ``P`` (``False``: ``P = I``, for the reduction to MEMIT).
        accumulate: add earlier batches' ``K_p K_pᵀ`` (``False``: forget them, for the reduction to MEMIT).
        mom2_update_weight: MEMIT's ``λ C`` term, 0 in AlphaEdit (only for the reduction to MEMIT).
    """

    nullspace_threshold: float = 2e-2
    l2: float = 10.0
    project: bool = True
    accumulate: bool = True
    mom2_update_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate(("nullspace_threshold",), ("l2",))
        for name in ("project", "accumulate"):
            if not isinstance(getattr(self, name), bool):
                raise LensMemoryError(f"AlphaEditConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.l2 == 0 and self.project:
            raise LensMemoryError("AlphaEditConfig.l2 must be > 0 when project=True (P(KKᵀ) alone is singular), "
                                  f"got {self.l2!r}")


#: the key statistics are MEMIT's (same text); λ is not used
AlphaEditConfig.MODEL_DEFAULTS = {"gemma-3-270m": {"stats": StatsConfig(corpus="samples:16384", n_tokens=16384)}}


@dataclass
class AlphaEditState:
    """What AlphaEdit carries along a sequence, per layer: ``P``, its rank, ``C`` and ``K_p K_pᵀ``."""

    projectors: dict[int, Float[torch.Tensor, "d_mlp d_mlp"]]
    nullspace_dim: dict[int, int]
    mom2: dict[int, Float[torch.Tensor, "d_mlp d_mlp"]]
    prev_keys: dict[int, Float[torch.Tensor, "d_mlp d_mlp"]]
    n_keys: int = 0

    def add_keys(self, keys: dict[int, Float[torch.Tensor, "d_mlp fact"]]) -> None:
        """Accumulate a written batch's keys ``K`` (per layer) into ``K_p K_pᵀ``."""
        for j, K in keys.items():
            self.prev_keys[j] = self.prev_keys[j] + K.double() @ K.double().T
        self.n_keys += next(iter(keys.values())).shape[1]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The accumulated ``K_p K_pᵀ`` for a checkpoint (``P`` and ``C`` are recomputed from the statistics)."""
        return {f"prev_keys.layer{j}": t for j, t in self.prev_keys.items()}


def alphaedit_state(stats: dict[int, Any], cfg: AlphaEditConfig) -> AlphaEditState:
    """``P`` per layer from the unedited model's key statistics, and no earlier keys yet."""
    P, dims, mom2 = {}, {}, {}
    for j in cfg.layers:
        mom2[j], _ = regularise(stats[j].mom2, cfg.ridge, name=f"C (layer {j})")
        d = mom2[j].shape[0]
        P[j], dims[j] = nullspace_projector(mom2[j], cfg.nullspace_threshold) if cfg.project else (
            torch.eye(d, dtype=torch.float64), d)
        if dims[j] == 0:
            raise LensMemoryError(
                f"AlphaEdit: no eigenvalue of C (layer {j}) is below nullspace_threshold={cfg.nullspace_threshold!r} "
                f"(smallest {float(torch.linalg.eigvalsh(mom2[j])[0]):.3g}): the null space is empty and every update "
                f"would be 0; raise the threshold")
    zero = {j: torch.zeros_like(mom2[j]) for j in cfg.layers}
    return AlphaEditState(P, dims, mom2, zero)


def alphaedit_solver(state: AlphaEditState, cfg: AlphaEditConfig) -> Callable:
    """AlphaEdit's per-layer solve ``(j, K, D) -> ((U, V), info)`` for :func:`~.memit.window_edit`."""
    def solve(j: int, K: torch.Tensor, D: torch.Tensor) -> tuple[tuple, dict[str, float]]:
        prev = state.prev_keys[j] if cfg.accumulate else None
        U, V, cond = alphaedit_update(K, D, state.projectors[j], prev, cfg.l2, state.mom2[j],
                                      cfg.mom2_update_weight)
        return (U, V), {"condition": cond, "nullspace_dim": state.nullspace_dim[j]}
    return solve


def alphaedit(lm: Any, facts: Sequence[Fact], config: AlphaEditConfig | None = None, *,
              layers: Sequence[int] | None = None, stats: dict[int, Any] | None = None,
              state: AlphaEditState | None = None, contexts: Sequence[str] | None = None) -> Edit:
    """Compute (not apply) one AlphaEdit batch inserting all ``facts``.

    Args:
        lm: the model (current weights are the ones edited).
        facts: facts with ``target_new``.
        config: :class:`AlphaEditConfig` (default: :meth:`AlphaEditConfig.for_model`).
        layers: overrides ``config.layers``.
        stats: the key statistics (checked against the current weights) when no ``state`` is given.
        state: an :class:`AlphaEditState` carried along a sequence (``P`` and ``C`` of the unedited model,
            earlier keys); :func:`~lens_memory.edit.sequence.sequential_edit` keeps it. Default: a fresh one.
        contexts: the context templates (a sequence fixes them on the unedited model).
    """
    cfg, Ls = memit_layers(lm, config or AlphaEditConfig.for_model(lm), layers)
    if not isinstance(cfg, AlphaEditConfig):
        raise LensMemoryError(f"alphaedit needs an AlphaEditConfig, got {type(cfg).__name__}")
    facts = list(facts)
    check_requests(lm, facts)
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if state is None:
        st = window_stats(lm, Ls, stats, cfg)
        state = alphaedit_state(st, cfg)
        info = {"stats_tokens": {j: st[j].n_tokens for j in Ls}, "stats_corpus": st[Ls[0]].corpus}
    elif sorted(state.projectors) != Ls:
        raise LensMemoryError(f"AlphaEdit state is for layers {sorted(state.projectors)}, not {Ls}")
    info.update({"stats_seconds": time.perf_counter() - t0, "n_prev_keys": state.n_keys})
    return window_edit(lm, facts, cfg, alphaedit_solver(state, cfg), "alphaedit", contexts=contexts, info=info)


def batch_keys(lm: Any, facts: Sequence[Fact], cfg: AlphaEditConfig, contexts: Sequence[str]
               ) -> dict[int, torch.Tensor]:
    """The batch's keys at every edited layer on the current (edited) model, for :meth:`AlphaEditState.add_keys`."""
    return layer_keys(lm, list(facts), list(cfg.layers), cfg, contexts)
