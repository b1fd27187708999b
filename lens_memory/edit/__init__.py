"""Locate-then-edit: rewrite facts in MLP weights with ROME and MEMIT, reversibly, and evaluate.

Workflow::

    trace = lm.trace_facts(model, facts[:5], lm.TraceConfig(kinds=("mlp",)))
    edit = lm.rome(model, fact, layer=trace.suggest_layers().layer)   # an artifact; nothing changed yet
    with edit.apply(model):                                          # restored bit for bit on exit
        ...
    ev = lm.evaluate_edits(model, [fact], [edit], per_fact=True)

Modules: :mod:`.weights` (the MLP as key-value memory), :mod:`.stats` (key second moments),
:mod:`.targets` (edit prompts and target optimisation), :mod:`.solve` (closed forms),
:mod:`.rome`, :mod:`.memit`, :mod:`.artifact` (the :class:`Edit`). Evaluation (for edits and every other
artifact) is :mod:`lens_memory.harness`; ``evaluate_edits`` and its config are re-exported here.
"""

from ..harness import EditEvaluation, EvalConfig, evaluate_edits
from .artifact import Edit, EditHandle, applied
from .memit import MemitConfig, memit
from .rome import RomeConfig, rome
from .stats import KeyStats, StatsConfig, key_statistics
from .targets import EditOptimisationError

__all__ = ["Edit", "EditHandle", "applied", "EditEvaluation", "EvalConfig", "evaluate_edits", "MemitConfig", "memit",
           "RomeConfig", "rome", "KeyStats", "StatsConfig", "key_statistics", "EditOptimisationError"]
