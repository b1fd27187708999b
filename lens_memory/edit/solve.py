"""Closed-form weight updates of ROME and MEMIT (pure linear algebra, float64).

ROME (Meng et al. 2022, eq. 2) inserts one key-value pair ``(k*, v*)`` into ``W`` while
minimising the change on the keys ``K`` the layer usually sees (second moment ``C = KKᵀ/n``)::

    W' = W + (v* - W k*) (C⁻¹ k*)ᵀ / ((C⁻¹ k*)ᵀ k*)           so that  W' k* = v*

and any key ``k`` with ``(C⁻¹ k*)ᵀ k = 0`` keeps its value. MEMIT (Meng et al. 2023, eq. 14)
inserts many pairs at once as a covariance-weighted least-squares compromise::

    ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹                                 R = V* - W K

which for one key tends to ROME's update as ``λ → 0``. ``K Kᵀ`` and ``R Kᵀ`` are accumulated
over chunks of keys, so memory stays ``O(d²)`` for any number of edits. Updates are returned as
low-rank factors ``ΔW = U Vᵀ`` when their rank is small, else as one dense matrix.

AlphaEdit (Fang et al. 2025) projects MEMIT-style updates onto the null space of ``C``
(:func:`nullspace_basis`, :func:`nullspace_projector`; the split by an absolute eigenvalue is the paper's,
the split by a share of ``trace(C)`` is ours and scale-free) and solves its eq. 14
(:func:`alphaedit_update`).

An ill-conditioned ``C`` (few tokens, dead units) is regularised by adding ``ridge * mean
eigenvalue`` to its diagonal, with a warning naming the condition number.
"""

from __future__ import annotations

import logging
import warnings

import torch
from jaxtyping import Float

from ..errors import LensMemoryError

__all__ = ["regularise", "rome_update", "memit_update", "nullspace_basis", "nullspace_projector", "alphaedit_update",
           "NULLSPACE_RULES", "IllConditionedWarning"]

#: how AlphaEdit's null-space threshold is read (:func:`nullspace_basis`)
NULLSPACE_RULES = ("absolute", "relative")

log = logging.getLogger(__name__)


class IllConditionedWarning(UserWarning):
    """The key second moment was regularised before inversion."""


def regularise(C: Float[torch.Tensor, "d_mlp d_mlp"], ridge: float = 0.0, max_condition: float = 1e10,
               name: str = "C") -> tuple[torch.Tensor, float]:
    """``C + r * mean_eig * I`` (float64), with ``r >= ridge`` raised until ``cond <= max_condition``."""
    C = C.double()
    C = (C + C.T) / 2
    ev = torch.linalg.eigvalsh(C)
    mean_eig = float(ev.mean().clamp_min(1e-300))
    cond = float(ev[-1] / ev[0]) if ev[0] > 0 else float("inf")
    r = ridge
    if cond > max_condition:
        # smallest r with (ev_max + r m) / (ev_min + r m) <= max_condition
        need = (float(ev[-1]) - max_condition * float(ev[0])) / (mean_eig * (max_condition - 1))
        r = max(r, need * 1.01)
        warnings.warn(f"{name} is ill-conditioned (condition number {cond:.3g} > {max_condition:.3g}); "
                      f"adding {r:.3g} x its mean eigenvalue to the diagonal", IllConditionedWarning, stacklevel=3)
    if r > 0:
        C = C + r * mean_eig * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    return C, r


def rome_update(C: Float[torch.Tensor, "d_mlp d_mlp"], k_star: Float[torch.Tensor, "d_mlp"],
                residual: Float[torch.Tensor, "d_model"], k_denominator: Float[torch.Tensor, "d_mlp"] | None = None
                ) -> tuple[Float[torch.Tensor, "d_model 1"], Float[torch.Tensor, "d_mlp 1"]]:
    """Rank-one factors ``(U, V)`` with ``ΔW = U Vᵀ = residual (C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k_den)``.

    ``k_denominator`` defaults to ``k_star`` (then ``ΔW k* = residual`` exactly); ROME's original
    code used the unprefixed prompt's key there (see :class:`~lens_memory.edit.rome.RomeConfig`).
    """
    k = k_star.double()
    u = torch.linalg.solve(C.double(), k)
    den = torch.dot(u, (k if k_denominator is None else k_denominator.double()))
    return residual.double()[:, None], (u / den)[:, None]


def memit_update(C: Float[torch.Tensor, "d_mlp d_mlp"], K: Float[torch.Tensor, "d_mlp n"],
                 R: Float[torch.Tensor, "d_model n"], lam: float, *, chunk: int = 4096,
                 max_rank_fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MEMIT's ``ΔW = R Kᵀ (λC + KKᵀ)⁻¹``.

    Returns ``(U, V)`` with ``ΔW = U Vᵀ`` when ``n <= max_rank_fraction * min(d_model, d_mlp)``,
    else ``(ΔW, None)``. Keys are processed ``chunk`` at a time.
    """
    d_in, n = K.shape
    A = lam * C.double()
    for s in range(0, n, chunk):
        Kc = K[:, s:s + chunk].double()
        A = A + Kc @ Kc.T
    A = (A + A.T) / 2
    L = torch.linalg.cholesky(A)
    if n <= max_rank_fraction * min(R.shape[0], d_in):
        V = torch.cholesky_solve(K.double(), L)
        return R.double(), V
    RK = torch.zeros(R.shape[0], d_in, dtype=torch.float64)
    for s in range(0, n, chunk):
        RK += R[:, s:s + chunk].double() @ K[:, s:s + chunk].double().T
    return torch.cholesky_solve(RK.T, L).T, None


def nullspace_basis(C: Float[torch.Tensor, "d_mlp d_mlp"], threshold: float, rule: str = "absolute"
                    ) -> tuple[Float[torch.Tensor, "d_mlp null"], float]:
    """An orthonormal basis ``Û`` of AlphaEdit's null space of ``C``, and the share of ``trace(C)`` it holds.

    ``C`` is the preserved keys' second moment ``E[k kᵀ]``; its eigenvectors (the SVD's, for a symmetric PSD
    matrix) are split by ``rule``:

    * ``"absolute"`` -- the paper's and the reference code's (``get_project``: ``S < nullspace_threshold``):
      the eigenvectors with eigenvalue ``< threshold``, an eigenvalue in the model's own key units;
    * ``"relative"`` -- ours, scale-free: the longest run of the *smallest* eigenvalues whose sum is at most
      ``threshold · trace(C)`` (``0 < threshold < 1``). Multiplying ``C`` by any ``c > 0`` multiplies both sides
      by ``c``, so the split does not move.

    Returns ``(Û, energy)`` with ``energy = Σ_null λ / Σ λ`` (eigenvalues clipped at 0), i.e.
    ``E‖Û Ûᵀ k‖² / E‖k‖²`` for the preserved keys: under ``"relative"`` it is ``<= threshold`` by construction.
    """
    if rule not in NULLSPACE_RULES:
        raise LensMemoryError(f"null-space rule must be one of {NULLSPACE_RULES}, got {rule!r}")
    C = C.double()
    ev, U = torch.linalg.eigh((C + C.T) / 2)  # ascending
    power = ev.clamp_min(0)
    total = float(power.sum())
    if rule == "absolute":
        mask = ev < threshold
    else:
        mask = torch.cumsum(power, 0) <= threshold * total
    energy = float(power[mask].sum()) / total if total > 0 else 0.0
    return U[:, mask], energy


def nullspace_projector(C: Float[torch.Tensor, "d_mlp d_mlp"], threshold: float, rule: str = "absolute"
                        ) -> tuple[Float[torch.Tensor, "d_mlp d_mlp"], int]:
    """AlphaEdit's ``P = Û Ûᵀ``: the projector onto the null space :func:`nullspace_basis` splits off.

    With ``rule="absolute"`` it is the reference code's ``get_project`` (SVD of the same ``mom2``, singular
    vectors below ``nullspace_threshold``). Returns ``(P, dim)`` with ``dim`` the null space's dimension.
    """
    Uh, _ = nullspace_basis(C, threshold, rule)
    return Uh @ Uh.T, int(Uh.shape[1])


def alphaedit_update(K: Float[torch.Tensor, "d_mlp n"], R: Float[torch.Tensor, "d_model n"],
                     P: Float[torch.Tensor, "d_mlp d_mlp"], K_prev: Float[torch.Tensor, "d_mlp d_mlp"] | None,
                     l2: float, C: Float[torch.Tensor, "d_mlp d_mlp"] | None = None, lam: float = 0.0
                     ) -> tuple[Float[torch.Tensor, "d_model n"], Float[torch.Tensor, "d_mlp n"], float]:
    """AlphaEdit's ``ΔW = R Kᵀ P ((K_p K_pᵀ + K Kᵀ) P + l2·I)⁻¹`` (Fang et al. 2025, eq. 14) as factors.

    ``K_prev`` is ``K_p K_pᵀ``, the accumulated keys of earlier edits. With ``A = P (K Kᵀ + K_p K_pᵀ) + l2·I``
    the reference code solves ``A X = P K Rᵀ`` and writes ``ΔW = Xᵀ``; here ``V = A⁻¹ P K`` and ``U = R``,
    so ``ΔW = U Vᵀ`` is the same matrix, of rank ``n``. ``A V = P K`` puts ``V`` in the range of ``P``, so
    ``ΔW (I - P) = 0``: keys in the preserved subspace keep their values. ``lam·C`` (default 0, AlphaEdit)
    adds MEMIT's preservation term; with ``P = I``, ``K_prev = 0``, ``l2 = 0`` and ``lam = λ`` the update
    is MEMIT's ``R Kᵀ (λC + K Kᵀ)⁻¹``.

    Returns ``(U, V, cond)`` with ``cond`` the 2-norm condition number of ``A``.
    """
    K, R, P = K.double(), R.double(), P.double()
    S = K @ K.T
    if K_prev is not None:
        S = S + K_prev.double()
    if lam:
        S = S + lam * C.double()
    A = P @ S + l2 * torch.eye(P.shape[0], dtype=torch.float64, device=P.device)
    V = torch.linalg.solve(A, P @ K)
    return R, V, float(torch.linalg.cond(A))
