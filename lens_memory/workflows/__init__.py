"""Workflows: the runs behind the CLI, each computing first and writing/drawing only on ``save(out)``.

* :mod:`.trace` -- causal tracing of a fact set (:func:`run_trace`);
* :mod:`.edit` -- the edit workflow, written once (:func:`fit_edits`, :func:`run_edit`): used by
  ``lens-memory edit``, the report's ``rome`` / ``memit`` stages and notebook 05;
* the steering, memory and report runs (:mod:`lens_memory.steer.pipeline`,
  :mod:`lens_memory.memory.pipeline`, :mod:`lens_memory.report`).

Every workflow returns a :class:`~.summary.WorkflowSummary`: ``summary["key"]`` reads a headline
number, ``summary.save(out)`` writes results, figures (PNG + PDF) and ``summary.json``.
"""

from .edit import EditRun, EditSummary, edit_config, fit_edits, run_edit, suggest_edit_layers
from .summary import WorkflowSummary
from .trace import TraceSummary, run_trace

__all__ = ["EditRun", "EditSummary", "edit_config", "fit_edits", "run_edit", "suggest_edit_layers", "WorkflowSummary",
           "TraceSummary", "run_trace"]
