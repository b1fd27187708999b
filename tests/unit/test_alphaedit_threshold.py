"""AlphaEdit's null-space threshold on tiny random models: the paper's absolute rule is the reference code's,
the relative rule does not depend on the key scale, and the size report is the projector's rank."""

import dataclasses
import math
import re

import pytest
import torch

from lens_memory.corpus import load_corpus
from lens_memory.edit import StatsConfig, key_statistics
from lens_memory.edit.alphaedit import AlphaEditConfig, alphaedit, alphaedit_state, nullspace_report
from lens_memory.edit.solve import alphaedit_update, nullspace_basis, nullspace_projector
from lens_memory.edit.weights import linear_weight
from lens_memory.errors import LensMemoryError
from lens_memory.facts import load_facts

TEXTS = [f"The {w} is located in the city of {c}. People visit {c} to see the {w} every year."
         for w, c in [("Eiffel Tower", "Paris"), ("Colosseum", "Rome"), ("Big Ben", "London"), ("Kremlin", "Moscow"),
                      ("Brandenburg Gate", "Berlin"), ("Sagrada Familia", "Barcelona")]] * 6
STATS = StatsConfig(corpus=TEXTS, n_tokens=1500, seq_len=32, batch_size=8)
SHORT = dict(stats=STATS, context_lengths=((3, 2),), v_steps=6, layers=(0, 1, 2))
FACTS = load_facts(split="test")[:2]
SCALES = (1e-6, 0.37, 3.0, 1e4)


@pytest.fixture(scope="module")
def stats(tiny):
    return key_statistics(tiny, [0, 1, 2], STATS, corpus=load_corpus(TEXTS), use_cache=False)


def _scaled(stats, c):
    return {j: dataclasses.replace(st, mom2=st.mom2 * c) for j, st in stats.items()}


def _spectrum_C(seed=0, d=24, n=600):
    """A key second moment with well separated eigenvalues (no split can fall inside a tie)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(d, n, generator=g, dtype=torch.float64) * torch.logspace(-3, 0.5, d, dtype=torch.float64)[:, None]
    return X, X @ X.T / n


def _reference_get_project(cov, threshold):
    """jianghoucheng/AlphaEdit ``get_project``: SVD of the covariance, singular vectors below the threshold."""
    U, S, _ = torch.linalg.svd(cov, full_matrices=False)
    idx = (S < threshold).nonzero(as_tuple=True)[0]
    return U[:, idx] @ U[:, idx].T


# -- the absolute rule is the paper's --------------------------------------------------------------

def test_absolute_rule_is_the_reference_codes_get_project():
    _, C = _spectrum_C()
    ev = torch.linalg.eigvalsh(C)
    for k in (1, 7, 16, 23):
        t = float((ev[k - 1] + ev[k]) / 2)  # between two eigenvalues: k of them below
        P, dim = nullspace_projector(C, t)
        assert dim == k and torch.allclose(P, _reference_get_project(C, t), atol=1e-10)
        assert torch.equal(P, nullspace_projector(C, t, rule="absolute")[0])


def test_the_default_is_the_papers_absolute_threshold_and_l2():
    for cfg in (AlphaEditConfig(), AlphaEditConfig.for_model("gemma-3-270m")):
        assert (cfg.nullspace_rule, cfg.nullspace_threshold, cfg.l2) == ("absolute", 2e-2, 10.0)


# -- the relative rule is scale-free, the absolute one is not --------------------------------------

@pytest.mark.parametrize("rho", [1e-3, 0.05, 0.3])
def test_relative_projector_is_unchanged_by_rescaling_C(rho):
    _, C = _spectrum_C()
    P, dim = nullspace_projector(C, rho, rule="relative")
    assert 0 < dim < C.shape[0]
    for c in SCALES:
        Pc, dim_c = nullspace_projector(C * c, rho, rule="relative")
        assert dim_c == dim and torch.allclose(Pc, P, atol=1e-9)
    t = float(torch.linalg.eigvalsh(C)[dim - 1]) * 1.0001  # the same split, read as an absolute eigenvalue
    assert nullspace_projector(C, t)[1] == dim
    assert {nullspace_projector(C * c, t)[1] for c in SCALES} != {dim}  # ... moves when the keys are rescaled


def test_relative_rule_bounds_the_preserved_keys_energy_and_what_an_update_touches():
    X, C = _spectrum_C(seed=1)
    g = torch.Generator().manual_seed(2)
    for rho in (1e-3, 1e-2, 0.1):
        Uh, energy = nullspace_basis(C, rho, rule="relative")
        P = Uh @ Uh.T
        leaked = float((P @ X).pow(2).sum() / X.pow(2).sum())  # E‖P k‖² / E‖k‖² over the very keys of C
        assert math.isclose(leaked, energy, rel_tol=1e-9) and energy <= rho
        # one more eigenvector would break the bound: the null space is the largest one allowed
        ev = torch.linalg.eigvalsh(C)
        assert float(ev[:Uh.shape[1] + 1].sum() / ev.sum()) > rho
        K, R = torch.randn(24, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
        U, V, _ = alphaedit_update(K, R, P, None, l2=1.0)
        dW = U @ V.T
        moved = float((dW @ X).pow(2).sum() / X.pow(2).sum())
        assert moved <= torch.linalg.matrix_norm(dW, ord=2) ** 2 * rho * (1 + 1e-9)


def test_rescaled_key_statistics_leave_the_relative_edit_unchanged_and_move_the_absolute_one(tiny, stats):
    rel = AlphaEditConfig(nullspace_rule="relative", nullspace_threshold=0.05, **SHORT)
    base = nullspace_report(tiny, rel, stats=stats)
    assert all(0 < s.dim < s.d_mlp and s.energy <= 0.05 for s in base.values())
    for c in SCALES:
        assert {j: s.dim for j, s in nullspace_report(tiny, rel, stats=_scaled(stats, c)).items()} == \
            {j: s.dim for j, s in base.items()}
    a, b = alphaedit(tiny, FACTS, rel, stats=stats), alphaedit(tiny, FACTS, rel, stats=_scaled(stats, 1e3))
    for j in rel.layers:  # AlphaEdit's update reads C only through P: the whole edit is the same
        assert torch.allclose(a.delta(j), b.delta(j), rtol=1e-4, atol=1e-6 * float(a.delta(j).abs().max()))
    t = float(torch.linalg.eigvalsh(stats[1].mom2.double()).median())
    ab = AlphaEditConfig(nullspace_threshold=t, **SHORT)
    dims = [nullspace_report(tiny, ab, stats=_scaled(stats, c))[1].dim for c in (0.1, 1.0, 10.0)]
    assert dims[0] > dims[1] > dims[2]  # the absolute split moves with the key scale


# -- the size report ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rule,threshold", [("relative", 0.05), ("relative", 0.3), ("absolute", None)])
def test_nullspace_report_is_the_projectors_rank_and_what_the_edit_records(tiny, stats, rule, threshold):
    t = threshold if threshold is not None else float(torch.linalg.eigvalsh(stats[1].mom2.double()).median())
    cfg = AlphaEditConfig(nullspace_rule=rule, nullspace_threshold=t, **SHORT)
    before = {k: v.clone() for k, v in tiny.hf.state_dict().items()}
    report = nullspace_report(tiny, cfg, stats=stats)
    assert all(torch.equal(tiny.hf.state_dict()[k], v) for k, v in before.items())  # nothing was edited
    state = alphaedit_state(stats, cfg)
    edit = alphaedit(tiny, FACTS[:1], cfg, stats=stats)
    for j, s in report.items():
        P = state.projectors[j]
        assert s.dim == int(torch.linalg.matrix_rank(P)) == round(float(torch.trace(P)))
        d_mlp = linear_weight(tiny, j).shape[1]
        assert (s.d_mlp, s.fraction) == (d_mlp, s.dim / d_mlp)
        assert edit.info["nullspace_dim"][j] == s.dim and edit.info["nullspace_energy"][j] == s.energy
        dim, d, frac, _ = s  # also a plain tuple
        assert (dim, d, frac) == (s.dim, s.d_mlp, s.fraction)
    assert state.sizes() == report


def test_report_shows_an_empty_null_space_that_an_edit_refuses(tiny, stats):
    cfg = AlphaEditConfig(nullspace_threshold=1e-12, **SHORT)
    assert all(s.dim == 0 and s.energy == 0.0 for s in nullspace_report(tiny, cfg, stats=stats).values())
    with pytest.raises(LensMemoryError, match=r"nullspace_rule='absolute', nullspace_threshold=1e-12"):
        alphaedit_state(stats, cfg)


# -- bad values ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,shown", [
    ({"nullspace_rule": "relative", "nullspace_threshold": -0.1}, "-0.1"),
    ({"nullspace_rule": "relative", "nullspace_threshold": 1.0}, "1.0"),
    ({"nullspace_rule": "relative", "nullspace_threshold": 1.5}, "1.5"),
    ({"nullspace_rule": "relative", "nullspace_threshold": 0.0}, "0.0"),
    ({"nullspace_rule": "relative", "nullspace_threshold": float("nan")}, "nan"),
    ({"nullspace_rule": "energy"}, "'energy'"),
    ({"nullspace_rule": None}, "None"),
    ({"nullspace_threshold": -2e-2}, "-0.02"),
])
def test_bad_threshold_settings_are_refused_naming_the_value(kw, shown):
    with pytest.raises(LensMemoryError, match=re.escape(f"got {shown}")):
        AlphaEditConfig(**kw)


def test_nullspace_basis_refuses_an_unknown_rule():
    with pytest.raises(LensMemoryError, match="got 'ratio'"):
        nullspace_basis(torch.eye(3), 0.1, rule="ratio")
