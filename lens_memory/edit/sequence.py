"""Lifelong editing: a sequence of edit batches, each computed on the model the earlier ones produced.

:func:`sequential_edit` writes ``facts`` in batches of ``batch_size`` with one of five methods:

* ``"rome"`` / ``"prome"`` / ``"rrome"`` -- ROME with kmeng01/rome's keys, p-ROME's plain prompt keys or
  r-ROME's prefix-averaged keys (Gupta et al. 2024, :mod:`.rome`); rank-one by definition, so a batch is ``batch_size`` edits written one after the
  other and the batch is only the unit of checkpoints and health measurements;
* ``"memit"`` -- sequential MEMIT: each batch is one MEMIT edit on the edited model (EasyEdit's and
  AlphaEdit's "sequential MEMIT" baseline), preserving ``λ C`` of the *unedited* model;
* ``"alphaedit"`` -- AlphaEdit (:mod:`.alphaedit`): MEMIT's targets with the null-space projected
  update and the accumulated keys of earlier batches.

As in the reference implementations, the key statistics (``C``; AlphaEdit's ``P``) and the context
templates are computed once on the unedited model and kept for the whole sequence. The result is
one artifact, an :class:`EditSequence`: ``with sequence.apply(model):`` applies every edit in order
and restores the weights bit for bit on exit. With ``checkpoint=DIR`` the sequence is saved after
every batch and a later call with the same arguments resumes after the last saved batch (the facts
already written must be the same, in the same order). With ``health=HealthConfig(...)`` the model's
health is measured before the first batch and after every ``every``-th batch
(:mod:`lens_memory.harness.lifelong`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..artifacts import Handle, is_artifact, load_artifact, require, save_artifact
from ..errors import LensMemoryError
from ..facts import Fact
from ..io import to_jsonable
from ..harness.lifelong import HealthConfig, HealthProbe, LifelongHealth
from .alphaedit import AlphaEditConfig, alphaedit_solver, alphaedit_state, batch_keys
from .artifact import Edit
from .memit import MemitConfig, memit_layers, memit_solver, window_edit
from .rome import ROME_METHODS, RomeConfig, default_layer, rome
from .stats import key_statistics
from .targets import check_requests, context_templates
from .weights import linear_weight

__all__ = ["EditSequence", "SequenceHandle", "sequential_edit", "sequence_config", "SEQUENTIAL_METHODS"]

log = logging.getLogger(__name__)

SEQUENTIAL_METHODS = ("rome", "prome", "rrome", "memit", "alphaedit")
KIND = "edit_sequence"


def _check_method(method: Any) -> None:
    if method not in SEQUENTIAL_METHODS:
        raise LensMemoryError(f"edit method must be one of {SEQUENTIAL_METHODS}, got {method!r}")


def _check_config(method: str, config: Any) -> None:
    """Refuse a config of another method (``"prome"`` / ``"rrome"``: a RomeConfig with that ``key_mode``)."""
    want = RomeConfig if method in ROME_METHODS else {"memit": MemitConfig, "alphaedit": AlphaEditConfig}[method]
    ok = isinstance(config, want) and not (method == "memit" and isinstance(config, AlphaEditConfig))
    if ok and want is RomeConfig:
        ok = config.key_mode == ROME_METHODS[method]
    if not ok:
        raise LensMemoryError(f"config {type(config).__name__}(key_mode={getattr(config, 'key_mode', None)!r}) is not "
                              f"a config of method {method!r}; use sequence_config(model, {method!r}, ...)")


#: a method's settings when it writes a *sequence*, per model, where they differ from its single-edit defaults
#: (``MODEL_DEFAULTS``); chosen on dev facts by ``analyses/bench_lifelong_dev.py`` (60 dev facts in 3 batches of 20,
#: objective fixed in advance). Gemma 3 270M: ``C`` from 100,000 self-sampled tokens, AlphaEdit's dev choice (S 0.9686
#: against 0.9671 at 16,384 tokens; AlphaEdit's own default), used by all five methods so that they share one ``C``
#: and differ in the update only (not searched for ROME). MEMIT's window, searched on dev with that ``C``, stays
#: the default 3-7 (S 0.9666 against 0.9499 at 2-6), so it needs no entry.
LIFELONG_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    name: {m: {"stats": d["stats"]} for m in ("rome", "prome", "rrome", "memit")}
    for name, d in AlphaEditConfig.MODEL_DEFAULTS.items() if "stats" in d}


def sequence_config(lm: Any, method: str, layers: Sequence[int] | None = None, **overrides: Any) -> Any:
    """The model's config of ``method`` (``"prome"`` / ``"rrome"``: ROME with that ``key_mode``) at ``layers``.

    Defaults: the method's model defaults, then :data:`LIFELONG_DEFAULTS`, then ``overrides``; ``layers`` (if
    given) wins over a lifelong default window.
    """
    _check_method(method)
    overrides = {**LIFELONG_DEFAULTS.get(lm.name, {}).get(method, {}), **overrides}
    if method in ROME_METHODS:
        if layers is not None and len(list(layers)) != 1:
            raise LensMemoryError(f"{method} edits one layer, got layers {list(layers)}")
        layer = lm.check_layer(list(layers)[0]) if layers is not None else default_layer(lm)
        return RomeConfig.for_model(lm, layer=layer, **{"key_mode": ROME_METHODS[method], **overrides})
    cls = AlphaEditConfig if method == "alphaedit" else MemitConfig
    return memit_layers(lm, cls.for_model(lm, **overrides), layers)[0]


@dataclass
class EditSequence:
    """Edits written in order, each on the weights the earlier ones produced; one artifact.

    Attributes:
        method: one of :data:`SEQUENTIAL_METHODS`.
        batch_size: facts per batch.
        edits: in application order (ROME: one per fact; MEMIT / AlphaEdit: one per batch).
        config: the method's config; model: identity of the unedited model.
        keys: AlphaEdit only -- each batch's keys per layer (their ``K Kᵀ`` sum is ``K_p K_pᵀ``).
        health: the health curves (``None`` when not measured).
        info: per-batch seconds, fact ids, statistics and context provenance.
    """

    method: str
    batch_size: int
    edits: list[Edit]
    config: dict[str, Any]
    model: dict[str, Any]
    keys: list[dict[int, torch.Tensor]] = field(default_factory=list)
    health: LifelongHealth | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def requests(self) -> list[dict[str, Any]]:
        return [r for e in self.edits for r in e.requests]

    @property
    def n_edits(self) -> int:
        return len(self.requests)

    @property
    def n_batches(self) -> int:
        return len(self.info.get("batch_seconds", []))

    @property
    def layers(self) -> list[int]:
        return sorted({j for e in self.edits for j in e.layers})

    def __repr__(self) -> str:
        return f"EditSequence({self.method}, {self.n_edits} fact(s) in {self.n_batches} batch(es), layers={self.layers})"

    def apply(self, lm: Any) -> "SequenceHandle":
        """Apply every edit in order; ``remove()`` (or leaving ``with``) restores the weights bit for bit."""
        handles: list[Handle] = []
        try:
            for e in self.edits:
                handles.append(e.apply(lm))
        except BaseException:
            for h in reversed(handles):
                h.remove()
            raise
        return SequenceHandle(self, lm, handles)._activate()

    def save(self, path: str | Path) -> Path:
        """Write the sequence (``edit_sequence.json`` + ``.safetensors``) into directory ``path`` atomically."""
        tensors: dict[str, torch.Tensor] = {}
        for i, e in enumerate(self.edits):
            tensors.update(e.to_tensors(f"e{i}."))
        for b, ks in enumerate(self.keys):
            tensors.update({f"k{b}.layer{j}": k.contiguous() for j, k in ks.items()})
        health = None if self.health is None else {"rows": self.health.rows, "provenance": self.health.provenance}
        return save_artifact(path, KIND, {"method": self.method, "batch_size": self.batch_size, "config": self.config,
                                          "model": self.model, "edits": [e.to_meta() for e in self.edits],
                                          "n_key_batches": len(self.keys), "health": health, "info": self.info},
                             tensors)

    @classmethod
    def load(cls, path: str | Path) -> "EditSequence":
        meta, t = load_artifact(path, KIND)
        require(meta, ("method", "batch_size", "config", "model", "edits"), path)
        edits = [Edit.from_parts(m, t, path, prefix=f"e{i}.") for i, m in enumerate(meta["edits"])]
        keys = [{int(k.split("layer")[1]): v for k, v in t.items() if k.startswith(f"k{b}.")}
                for b in range(meta.get("n_key_batches", 0))]
        h = meta.get("health")
        health = None if h is None else LifelongHealth(meta["method"], h["rows"], h.get("provenance", {}))
        return cls(meta["method"], meta["batch_size"], edits, meta["config"], meta["model"], keys, health,
                   meta.get("info", {}))


class SequenceHandle(Handle):
    """An applied :class:`EditSequence`: its edits' handles, removed in reverse order."""

    kind = "edit_sequence"

    def __init__(self, sequence: EditSequence, lm: Any, handles: list[Handle]):
        super().__init__(sequence, lm)
        self.handles = handles

    def _undo(self) -> None:
        for h in reversed(self.handles):
            h.remove()


@dataclass
class _Run:
    """What one sequence carries between batches (fixed on the unedited model, plus AlphaEdit's state)."""

    method: str
    cfg: Any
    stats: dict[int, Any]
    contexts: list[str]
    state: Any = None
    base: dict[int, torch.Tensor] = field(default_factory=dict)


def _write_batch(lm: Any, run: _Run, batch: list[Fact]) -> tuple[list[Edit], list[Handle], dict | None]:
    """Compute and apply one batch; return its edits, their handles and (AlphaEdit) the batch's keys."""
    edits, handles = [], []
    try:
        if run.method in ROME_METHODS:
            L = run.cfg.layer
            for f in batch:
                # checked on the unedited model (_check_args); an earlier edit may already give this fact's new answer
                edits.append(rome(lm, f, run.cfg, stats=run.stats[L], contexts=run.contexts, check=False))
                handles.append(edits[-1].apply(lm))
            return edits, handles, None
        solve = alphaedit_solver(run.state, run.cfg) if run.method == "alphaedit" else memit_solver(run.stats, run.cfg)
        info = {"n_prev_keys": run.state.n_keys} if run.method == "alphaedit" else {}
        edits.append(window_edit(lm, batch, run.cfg, solve, run.method, contexts=run.contexts, info=info))
        handles.append(edits[-1].apply(lm))
        keys = batch_keys(lm, batch, run.cfg, run.contexts) if run.method == "alphaedit" else None
        return edits, handles, keys
    except BaseException:
        for h in reversed(handles):
            h.remove()
        raise


def _weight_row(lm: Any, run: _Run, edits: list[Edit]) -> dict[str, float]:
    """Relative norm of the accumulated ``ΔW`` per layer, the batch's solve condition and largest update."""
    row = {}
    for j, w0 in run.base.items():
        row[f"delta_norm.layer{j}"] = float((linear_weight(lm, j).double() - w0).norm() / w0.norm())
    conds = [c for e in edits for c in (e.info.get("solve_condition") or {}).values()]
    row["solve_condition"] = max(conds) if conds else float("nan")
    row["update_norm"] = max(float(sum(e.delta(j).norm() for j in e.layers)) for e in edits)
    return row


def _check_args(lm: Any, facts: list[Fact], method: str, batch_size: Any, health: Any) -> None:
    _check_method(method)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LensMemoryError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check_requests(lm, facts)
    if health is not None and not isinstance(health, HealthConfig):
        raise LensMemoryError(f"health must be a HealthConfig or None, got {type(health).__name__}")
    if health is not None:
        edited = {(f.subject, f.prompt) for f in facts}
        both = [f.prompt for f in health.heldout if (f.subject, f.prompt) in edited]
        if both:
            raise LensMemoryError(f"held-out facts must not be edited; also in the sequence: {both[:3]}")


def _plain(x: Any) -> Any:
    """``x`` as it reads back from JSON (tuples become lists), for comparing with a checkpoint."""
    return json.loads(json.dumps(to_jsonable(x)))


def _resume(path: Path, lm: Any, facts: list[Fact], method: str, batch_size: int, cfg: Any) -> EditSequence | None:
    """The checkpoint at ``path`` if it continues this very sequence; ``None`` when there is none."""
    if not path.exists():
        return None
    if not is_artifact(path, KIND):
        raise LensMemoryError(f"checkpoint {str(path)!r} exists but is not a saved edit sequence; "
                              f"choose another directory (nothing there was changed)")
    seq = EditSequence.load(path)
    want = _plain({"method": method, "batch_size": batch_size, "config": cfg.to_dict(),
                   "model": lm.identity.weight_hash, "facts": [f.to_dict() for f in facts[:seq.n_edits]]})
    have = _plain({"method": seq.method, "batch_size": seq.batch_size, "config": seq.config,
                   "model": seq.model.get("weight_hash"), "facts": seq.requests})
    diff = [k for k in want if want[k] != have[k]]
    if diff:
        raise LensMemoryError(f"checkpoint {str(path)!r} holds another sequence (differs in {', '.join(diff)}); "
                              f"resume with the same arguments or choose another directory (nothing was changed)")
    log.info("resuming %s after %d batch(es) (%d facts) from %s", method, seq.n_batches, seq.n_edits, path)
    return seq


def _start(lm: Any, facts: list[Fact], method: str, batch_size: int, cfg: Any, stats: Any,
           checkpoint: Any) -> tuple[_Run, EditSequence]:
    """The sequence so far (a checkpoint's); statistics, contexts and (AlphaEdit) projectors of the unedited model."""
    seq = _resume(Path(checkpoint), lm, facts, method, batch_size, cfg) if checkpoint is not None else None
    layers = [cfg.layer] if method in ROME_METHODS else list(cfg.layers)
    st = dict(stats or {})
    missing = [j for j in layers if j not in st]
    if missing:
        st.update(key_statistics(lm, missing, cfg.stats))
    run = _Run(method, cfg, st, context_templates(lm, cfg.context_lengths, cfg.seed),
               base={j: linear_weight(lm, j).detach().double().clone() for j in layers})
    if method == "alphaedit":
        run.state = alphaedit_state(st, cfg)
    if seq is None:
        seq = EditSequence(method, batch_size, [], cfg.to_dict(), lm.identity.to_dict(),
                           info={"batch_seconds": [], "facts": [], "contexts": run.contexts,
                                 "stats_tokens": {j: st[j].n_tokens for j in layers},
                                 "stats_corpus": st[layers[0]].corpus,
                                 "statistics": "C (and P) of the unedited model, kept for the whole sequence"})
    if run.state is not None and cfg.accumulate:
        for ks in seq.keys:  # replay the accumulation in order: the same K_p K_pᵀ to the last bit
            run.state.add_keys(ks)
    return run, seq


def sequential_edit(lm: Any, facts: Sequence[Fact], method: str, batch_size: int = 1, *,
                    layers: Sequence[int] | None = None, config: Any = None, stats: dict[int, Any] | None = None,
                    health: HealthConfig | None = None, checkpoint: str | Path | None = None,
                    progress: bool = True) -> EditSequence:
    """Write ``facts`` in batches, each computed on the model with every earlier batch applied.

    Args:
        lm: the unedited model (no edit may be applied); it is unchanged on return.
        facts: facts with ``target_new``, in the order they are written.
        method: one of :data:`SEQUENTIAL_METHODS` (``"rome"``, ``"prome"``, ``"rrome"``, ``"memit"``, ``"alphaedit"``).
        batch_size: facts per batch (ROME / r-ROME: edits between checkpoints and health rows).
        layers: the edited layer(s) (default: the method's model default).
        config: the method's config (default: :func:`sequence_config`).
        stats: key statistics of the unedited model per layer (computed when missing).
        health: measure :class:`~lens_memory.harness.lifelong.HealthConfig` before and during the sequence.
        checkpoint: a directory; saved after every batch, resumed from when it holds this sequence's start.

    Returns:
        the :class:`EditSequence` (``.health`` holds the curves when ``health`` was given).
    """
    facts = list(facts)
    _check_args(lm, facts, method, batch_size, health)
    if lm.applied_edits:
        raise LensMemoryError(f"sequential_edit starts from the unedited model; remove the {len(lm.applied_edits)} "
                              f"applied edit(s) first")
    cfg = config if config is not None else sequence_config(lm, method, layers)
    _check_config(method, cfg)
    run, seq = _start(lm, facts, method, batch_size, cfg, stats, checkpoint)
    probe = HealthProbe(lm, health) if health is not None else None
    if probe is not None and seq.health is not None and seq.health.rows:
        probe.baseline = dict(seq.health.rows[0])
    elif probe is not None:
        seq.health = LifelongHealth(method, [{**probe.measure(lm, [], []), "batch": 0}],
                                    {"config": health.to_dict(), "thresholds": dict(health.thresholds)})
    with seq.apply(lm) as handle:
        _continue(lm, run, seq, handle, facts, probe, checkpoint, progress)
    return seq


def _continue(lm: Any, run: _Run, seq: EditSequence, handle: SequenceHandle, facts: list[Fact],
              probe: HealthProbe | None, checkpoint: Any, progress: bool) -> None:
    """Write the remaining batches (``seq`` is applied to ``lm`` as ``handle``; new edits join its handles)."""
    B = seq.batch_size
    starts = range(seq.n_edits, len(facts), B)
    for s in tqdm(starts, desc=f"{run.method} batches", unit="batch", disable=not progress):
        t0 = time.perf_counter()
        batch = facts[s:s + B]
        edits, handles, keys = _write_batch(lm, run, batch)
        seq.edits += edits
        handle.handles += handles
        if keys is not None:
            seq.keys.append(keys)
            if run.cfg.accumulate:
                run.state.add_keys(keys)
        seq.info["batch_seconds"].append(time.perf_counter() - t0)
        seq.info["facts"].append([f.case_id for f in batch])
        b = seq.n_batches
        if probe is not None and (b % probe.config.every == 0 or s + B >= len(facts)):
            row = {**probe.measure(lm, facts[:s + len(batch)], batch), "batch": b, **_weight_row(lm, run, edits)}
            seq.health.rows.append(row)
            seq.health.provenance["final_retention_per_fact"] = probe.last_retention
        if checkpoint is not None:
            seq.save(checkpoint)
