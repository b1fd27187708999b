"""Benchmark: how often does the Hase et al. decision rule say "adds" when tracing adds nothing?

Simulates (fact, layer) grids at the sizes we run on the embedded model. Success has a layer profile like
Gemma 3 270M's measured mean rewrite scores (0.943 / 0.970 / 0.951 / 0.783 / 0.847 / 0.473 at layers
0 / 3 / 6 / 9 / 12 / 15, interpolated for other layer counts), a per-fact offset (sd 0.1) and noise (sd 0.15),
clipped to [0, 1]; the tracing effect peaks at a random layer per fact and is **unrelated to success** (the
null), or adds ``--slope`` x effect to success (a planted effect). For each size it counts the decisions of

* ``rule`` -- :meth:`lens_memory.localize.HaseRegression.decision` (nested F-test + permutation check for
  "adds"; the noncentral-F and the bias-corrected cluster-bootstrap intervals for "adds_little"; rule in
  :mod:`lens_memory.localize.hase`), with ``--boot`` resamples and ``--perm`` permutations;
* ``old`` -- the rule before issue 29: the 95% percentile-bootstrap interval (facts resampled) of the
  in-sample R² gain; "adds" when its lower end is above 0.05, "adds_little" when its upper end is below 0.05.

Prints a table (rates with Wilson 95% intervals) and, as the last line, one JSON object keyed by size.

    python analyses/bench_hase_null.py [--draws 100] [--perm 199] [--boot 200]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

SIZES = [(8, 6), (8, 18), (30, 6), (30, 18)]
MEANS = [0.943, 0.970, 0.951, 0.783, 0.847, 0.473]


def simulate(n_facts: int, n_layers: int, slope: float, rng) -> tuple[np.ndarray, np.ndarray]:
    means = np.interp(np.linspace(0, 5, n_layers), np.arange(6), MEANS)
    peak = rng.uniform(0, n_layers, (n_facts, 1))
    effect = rng.gamma(1.0, 0.1, (n_facts, 1)) * np.exp(-0.5 * ((np.arange(n_layers)[None] - peak) / 2) ** 2)
    noise = 0.1 * rng.standard_normal((n_facts, 1)) + 0.15 * rng.standard_normal((n_facts, n_layers))
    return np.clip(means[None] + slope * effect + noise, 0, 1), effect


def old_rule(success: np.ndarray, effect: np.ndarray, n_boot: int, rng) -> str:
    from lens_memory.localize.hase import _fit_all

    n = success.shape[0]
    gains = [_fit_all(success[i], effect[i])["r2_diff"] for i in (rng.integers(0, n, n) for _ in range(n_boot))]
    lo, hi = np.nanpercentile(gains, [2.5, 97.5])
    return "adds" if lo > 0.05 else ("adds_little" if hi < 0.05 else "cannot_tell")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--perm", type=int, default=199)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--slope", type=float, default=2.0, help="the planted effect's slope")
    args = ap.parse_args()

    from lens_memory.localize import hase_regression
    from lens_memory.metrics import proportion_ci

    rng = np.random.default_rng(0)
    out: dict = {"draws": args.draws, "n_perm": args.perm, "n_boot": args.boot, "slope": args.slope}
    print(f"{'facts x layers':15s} {'truth':8s} {'rule':6s} {'adds':>22s} {'adds_little':>22s} {'mean R2_diff':>13s}")
    for n_f, n_l in SIZES:
        for truth, slope in (("null", 0.0), ("planted", args.slope)):
            new, old, gains = [], [], []
            for i in range(args.draws):
                s, e = simulate(n_f, n_l, slope, rng)
                reg = hase_regression(s, e, n_boot=args.boot, n_perm=args.perm, seed=i)
                new.append(reg.decision())
                gains.append(reg.stats["r2_diff"])
                old.append(old_rule(s, e, args.boot, rng))
            key = f"{n_f}x{n_l}_{truth}"
            out[key] = {"mean_r2_diff": round(float(np.mean(gains)), 4)}
            for name, dec in (("rule", new), ("old", old)):
                rates = {d: proportion_ci(dec.count(d), len(dec)) for d in ("adds", "adds_little")}
                out[key][name] = {d: [round(x, 4) for x in r] for d, r in rates.items()}
                cells = " ".join(f"{r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}]".rjust(22) for r in rates.values())
                print(f"{f'{n_f} x {n_l}':15s} {truth:8s} {name:6s} {cells} {np.mean(gains):13.4f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
