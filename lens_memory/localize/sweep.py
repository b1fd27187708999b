"""Edit every fact at every layer: where does an edit actually work?

Causal tracing says where a fact's recall passes; ROME edits the MLP where the trace peaks. Hase et al.
(2023) tested that premise by editing each fact at *every* layer and scoring each edit. :func:`edit_layer_sweep`
does the same here: for each fact and each layer ``l`` it computes a ROME edit at ``l`` (or, with
``method="memit"``, a MEMIT edit of the window of ``memit_width`` layers centred on ``l``, placed like
tracing's windows and shifted down so it never includes the last layer, which MEMIT refuses), applies it,
scores it and removes it. Every edit starts from the unedited model: the sweep checks, after every layer,
that the edited weights hash to their original values again (bit-exact restore).

Scores per (fact, layer), on the model with that one edit applied:

* ``rewrite_score`` -- Hase et al.'s edit success: ``(p_post(o*) - p_pre(o*)) / (1 - p_pre(o*))`` with ``p``
  the probability of the whole new object (``exp`` of its *summed* token log-probabilities, as their
  ``score_from_batch``): the fraction of the possible gain in ``p(o*)`` the edit achieved, floored at 2e-8
  as their code floors it (:func:`rewrite_score`);
* ``efficacy_success``, ``paraphrase_success``, ``neighborhood_success`` -- ROME's ES / PS / NS
  (:func:`lens_memory.metrics.fact_scores`), and ``p_new``, ROME's ``exp(-mean NLL)`` of ``o*``.

Hase et al. sweep 9 of GPT-J's 28 layers; every layer is swept here by default (``layers`` narrows it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..artifacts import load_artifact, require, save_artifact
from ..errors import LensMemoryError
from ..facts import Fact
from ..metrics import fact_scores, mean_ci, score_targets

__all__ = ["SweepConfig", "EditSweep", "edit_layer_sweep", "rewrite_score", "REWRITE_FLOOR", "SWEEP_METRICS", "memit_window"]

log = logging.getLogger(__name__)

#: what the sweep records per (fact, layer)
SWEEP_METRICS = ("rewrite_score", "efficacy_success", "paraphrase_success", "neighborhood_success", "p_new")


#: belief-localization's floor of the rewrite score (``np.max([2e-8, recovered_prop])``)
REWRITE_FLOOR = 2e-8


def rewrite_score(p_pre: float, p_post: float) -> float:
    """Hase et al.'s rewrite score ``max(2e-8, 1 - (1 - p_post) / (1 - p_pre))`` = ``(p_post - p_pre) / (1 - p_pre)``
    floored at 2e-8, as their code does (``google/belief-localization``, ``experiments/evaluate.py``:
    ``recovered_prop = np.max([2e-8, 1 - (1 - post_prob) / (1 - pre_prob)])``): an edit that *lowers* ``p(o*)``
    scores 2e-8 (about 0), not a negative number.

    Their code divides by ``1 - p_pre`` unguarded (``inf`` or NaN when ``p_pre`` is 1); here ``p_pre >= 1`` gives
    NaN: nothing could be gained, so there is no fraction to report (such facts are already "edited").
    """
    if p_pre >= 1.0:
        return float("nan")
    return max(REWRITE_FLOOR, 1.0 - (1.0 - p_post) / (1.0 - p_pre))


def memit_window(layer: int, width: int, n_layers: int) -> list[int]:
    """``width`` layers centred on ``layer`` (``[layer - width//2, layer + ceil(width/2))``), shifted to fit in
    ``0 .. n_layers - 2`` (MEMIT never edits the last layer)."""
    top = n_layers - 1  # exclusive bound: the last layer is not editable
    w = max(1, min(width, top))
    start = min(max(0, layer - w // 2), top - w)
    return list(range(start, start + w))


@dataclass(frozen=True)
class SweepConfig:
    """What the sweep edits.

    Attributes:
        layers: the layers swept (``None``: every layer; MEMIT: every layer but the last).
        method: ``"rome"`` (one layer) or ``"memit"`` (a window centred on the layer).
        memit_width: the MEMIT window (Hase et al.: 5).
    """

    layers: tuple[int, ...] | None = None
    method: str = "rome"
    memit_width: int = 5

    def __post_init__(self) -> None:
        if self.method not in ("rome", "memit"):
            raise LensMemoryError(f"SweepConfig.method must be 'rome' or 'memit', got {self.method!r}")
        if isinstance(self.memit_width, bool) or not isinstance(self.memit_width, int) or self.memit_width < 1:
            raise LensMemoryError(f"SweepConfig.memit_width must be a positive integer, got {self.memit_width!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
            if not self.layers:
                raise LensMemoryError("SweepConfig.layers is empty; give at least one layer or None for all")

    def layers_for(self, lm: Any) -> list[int]:
        top = lm.n_layers - (1 if self.method == "memit" else 0)
        layers = list(self.layers) if self.layers is not None else list(range(top))
        for x in layers:
            if not 0 <= x < top:
                raise LensMemoryError(f"sweep layer {x} is outside 0..{top - 1} for {self.method} on {lm.name}")
        return layers

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d


def _edit(lm: Any, fact: Fact, layer: int, cfg: SweepConfig, method_cfg: Any, contexts: list[str]) -> Any:
    from ..edit.memit import memit
    from ..edit.rome import rome
    from ..edit.stats import key_statistics

    if cfg.method == "rome":
        return rome(lm, fact, method_cfg, layer=layer, contexts=contexts,
                    stats=key_statistics(lm, [layer], method_cfg.stats)[layer])
    window = memit_window(layer, cfg.memit_width, lm.n_layers)
    return memit(lm, [fact], method_cfg, layers=window, stats=key_statistics(lm, window, method_cfg.stats))


def _total_p(lm: Any, fact: Fact) -> float:
    return float(np.exp(score_targets(lm, [fact.prompt], [fact.target_new]).total_logprob[0]))


def _sweep_fact(lm: Any, fact: Fact, shared: tuple) -> dict[str, list[float]]:
    """The execution seam's item: one fact edited at every swept layer, each edit removed before the next."""
    from ..edit.weights import proj_weight, tensor_sha256

    cfg, method_cfg, layers, contexts = shared
    p_pre = _total_p(lm, fact)
    out: dict[str, list[float]] = {m: [] for m in SWEEP_METRICS}
    for layer in layers:
        edit = _edit(lm, fact, layer, cfg, method_cfg, contexts)
        before = {j: tensor_sha256(proj_weight(lm, j)) for j in edit.factors}
        with edit.apply(lm):
            row = fact_scores(lm, [fact])[0]
            p_post = _total_p(lm, fact)
        after = {j: tensor_sha256(proj_weight(lm, j)) for j in edit.factors}
        if after != before:
            raise LensMemoryError(f"layer {layer}: removing the edit did not restore the weights bit-exactly")
        out["rewrite_score"].append(rewrite_score(p_pre, p_post))
        for m in SWEEP_METRICS[1:]:
            out[m].append(float(row[m]))
    return out


def _sweep_key(lm: Any, cfg: SweepConfig, mcfg: Any, layers: list[int], contexts: list[str]) -> str:
    """The checkpoint directory's name: everything a fact's sweep row depends on besides the fact."""
    blob = json.dumps({"model": lm.identity.to_dict(), "cfg": cfg.to_dict(), "method_cfg": mcfg.to_dict(),
                       "layers": layers, "contexts": contexts}, sort_keys=True, default=str)
    return "sweep-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_row(path: Path, fact: Fact) -> dict[str, list[float]] | None:
    """A checkpointed fact row (``None``: absent, another fact's, or unreadable -- then the fact is swept again)."""
    from ..io import read_checkpoint

    return read_checkpoint(path, lambda d: d["metrics"] if d["fact"] == fact.to_dict()
                           and set(d["metrics"]) == set(SWEEP_METRICS) else None, "sweep")


def edit_layer_sweep(lm: Any, facts: Sequence[Fact], config: SweepConfig | None = None, *, method_config: Any = None,
                     progress: bool = True, executor: Any = None,
                     checkpoint_dir: str | Path | None = None) -> "EditSweep":
    """Edit each fact at each layer of ``config`` and score every edit (see the module docstring).

    ``method_config``: the :class:`~lens_memory.edit.RomeConfig` / :class:`~lens_memory.edit.MemitConfig`
    (default: the model's); its layer settings are overridden per edit. ``executor``: where the facts run
    (:mod:`lens_memory.parallel`). ``checkpoint_dir``: each finished fact's row is written there atomically (JSON,
    floats round-trip exactly) under a key of the model, configs, layers and contexts; a rerun reuses the rows
    and sweeps only the rest, so the result equals an uninterrupted run's.
    """
    from ..edit import MemitConfig, RomeConfig
    from ..edit.stats import key_statistics
    from ..edit.targets import context_templates
    from ..io import write_json
    from ..parallel import executor_for

    cfg = config or SweepConfig()
    facts = list(facts)
    if not facts:
        raise LensMemoryError("edit_layer_sweep needs at least one fact")
    mcfg = method_config or (RomeConfig if cfg.method == "rome" else MemitConfig).for_model(lm)
    layers = cfg.layers_for(lm)
    needed = sorted({j for x in layers for j in ([x] if cfg.method == "rome" else memit_window(x, cfg.memit_width, lm.n_layers))})
    key_statistics(lm, needed, mcfg.stats)  # computed (and cached) once, before any item runs
    contexts = context_templates(lm, mcfg.context_lengths, mcfg.seed)
    ckpt = Path(checkpoint_dir) / _sweep_key(lm, cfg, mcfg, layers, contexts) if checkpoint_dir is not None else None
    rows = [_load_row(ckpt / f"fact{i:05d}.json", f) if ckpt else None for i, f in enumerate(facts)]
    todo = [i for i, r in enumerate(rows) if r is None]
    if ckpt is not None and len(todo) < len(facts):
        log.info("sweep: %d of %d facts from checkpoints in %s", len(facts) - len(todo), len(facts), ckpt)

    def done(j: int, row: dict[str, list[float]]) -> None:
        if ckpt is not None:
            write_json(ckpt / f"fact{todo[j]:05d}.json", {"fact": facts[todo[j]].to_dict(), "metrics": row})

    new = executor_for(lm, executor).map(lm, _sweep_fact, [facts[i] for i in todo], shared=(cfg, mcfg, layers, contexts),
                                         desc=f"{cfg.method} at every layer", progress=progress, on_result=done)
    for i, row in zip(todo, new):
        rows[i] = row
    got = rows
    metrics = {m: np.array([g[m] for g in got], float) for m in SWEEP_METRICS}
    prov = {"model": lm.identity.to_dict(), "config": cfg.to_dict(), "method_config": mcfg.to_dict(),
            "contexts": contexts, "method": f"{cfg.method} at every layer (Hase et al. 2023's sweep)"}
    return EditSweep(facts=facts, layers=layers, metrics=metrics, provenance=prov)


@dataclass
class EditSweep:
    """Per fact and layer, the scores of an edit at that layer: ``metrics[name]`` is ``[fact, layer]``."""

    facts: list[Fact]
    layers: list[int]
    metrics: dict[str, np.ndarray]
    provenance: dict[str, Any] = field(default_factory=dict)

    def curve(self, metric: str = "rewrite_score") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean over facts per layer with a 95% normal interval: ``(mean, lo, hi)``."""
        if metric not in self.metrics:
            raise LensMemoryError(f"unknown sweep metric {metric!r}; recorded: {sorted(self.metrics)}")
        cols = [mean_ci(self.metrics[metric][:, i]) for i in range(len(self.layers))]
        return tuple(np.array(x) for x in zip(*cols))  # type: ignore[return-value]

    def best_layers(self, metric: str = "rewrite_score") -> list[int]:
        """Per fact, the swept layer whose edit scored highest."""
        return [self.layers[int(i)] for i in np.argmax(self.metrics[metric], axis=1)]

    def to_dataframe(self):
        import pandas as pd

        rows = [{"fact": i, "case_id": f.case_id, "layer": layer, **{m: float(v[i, j]) for m, v in self.metrics.items()}}
                for i, f in enumerate(self.facts) for j, layer in enumerate(self.layers)]
        return pd.DataFrame(rows)

    def plot(self, trace: Any = None, fact: int | None = None, ax=None):
        """Edit success per layer (mean with 95% interval, or one fact's), beside the tracing curve when given."""
        from .plots import plot_edit_sweep

        return plot_edit_sweep(self, trace=trace, fact=fact, ax=ax)

    def save(self, path: str | Path) -> Path:
        meta = {"facts": [f.to_dict() for f in self.facts], "layers": self.layers, "provenance": self.provenance}
        return save_artifact(path, "edit_sweep", meta, {m: torch.from_numpy(v) for m, v in self.metrics.items()})

    @classmethod
    def load(cls, path: str | Path) -> "EditSweep":
        d, t = load_artifact(path, "edit_sweep")
        require(d, ("facts", "layers"), path)
        return cls(facts=[Fact.from_dict(f) for f in d["facts"]], layers=list(d["layers"]),
                   metrics={m: v.numpy() for m, v in t.items()}, provenance=d.get("provenance", {}))
