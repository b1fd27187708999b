"""The report: every memory mechanism on the same facts, as one HTML (and Markdown) document.

* :mod:`~lens_memory.report.pipeline` -- ``run_report`` / ``lens-memory report``: the stages, cached and resumable;
* :mod:`~lens_memory.report.stages` -- the stage runner (atomic, keyed by config);
* :mod:`~lens_memory.report.build` -- assembles sections, tables, the taxonomy figure and provenance;
* :mod:`~lens_memory.report.taxonomy` -- the short/long-term by implicit/explicit figure;
* :mod:`~lens_memory.report.figures` -- every figure regenerated from saved results (``analyses/make_figures.py``);
* :mod:`~lens_memory.report.render` -- self-contained HTML and Markdown;
* :mod:`~lens_memory.report.browser` -- checks a rendered file in headless Chromium.
"""

from .render import Figure, Report, Section, Table, render_html, render_markdown

__all__ = ["Figure", "Report", "Section", "Table", "render_html", "render_markdown"]
