"""Workflows: the runs behind the CLI and the report, in one package.

The trace and edit workflows compute first and write/draw only on ``save(out)``; the steering and
memory workflows (moved here from ``steer/pipeline.py`` and ``memory/pipeline.py``, whose old
paths warn) still write into ``out`` while they run.

* :mod:`.trace` -- causal tracing of a fact set (:func:`run_trace`);
* :mod:`.edit` -- the edit workflow, written once (:func:`fit_edits`, :func:`run_edit`): used by
  ``lens-memory edit``, the report's ``rome`` / ``memit`` stages and notebook 05;
* :mod:`.steer` -- fit a steering artifact, evaluate it against the prompting baseline, decompose it;
* :mod:`.memory` -- KV memories against RAG on counterfactual facts;
* the report (:mod:`lens_memory.report`), a resumable run of stages that call these workflows.

:func:`run_trace` and :func:`run_edit` return a :class:`~.summary.WorkflowSummary`: ``summary["key"]``
reads a headline number, ``summary.save(out)`` writes results, figures (PNG + PDF) and ``summary.json``.
"""

from .edit import EditRun, EditSummary, edit_config, fit_edits, run_edit, suggest_edit_layers
from .summary import WorkflowSummary
from .trace import TraceSummary, run_trace

__all__ = ["EditRun", "EditSummary", "edit_config", "fit_edits", "run_edit", "suggest_edit_layers", "WorkflowSummary",
           "TraceSummary", "run_trace"]
