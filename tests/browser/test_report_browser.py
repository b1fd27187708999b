"""A rendered report opened in real headless Chromium: images decode, the page is not blank.

Needs the Debian packages chromium + chromium-driver and selenium; ``bash .ci/setup`` installs
them. Without them these tests FAIL (they are part of CI), they do not skip.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lens_memory.report import Figure, Report, Section, Table, render_html  # noqa: E402
from lens_memory.report.browser import BrowserUnavailableError, check_in_browser  # noqa: E402
from lens_memory.report.render import _CSP  # noqa: E402

pytestmark = pytest.mark.browser


def _check(html, *args, **kwargs):
    try:
        return check_in_browser(html, *args, **kwargs)
    except BrowserUnavailableError as exc:
        missing = str(exc)
    pytest.fail(f"browser test cannot run: {missing}", pytrace=False)  # CI installs them: fail, never skip


def _figures(tmp_path):
    rng = np.random.default_rng(0)
    figs = []
    for i, kind in enumerate(["line", "heatmap", "bars"]):
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=80)
        if kind == "line":
            ax.plot(np.cumsum(rng.normal(size=50)), label="walk")
            ax.legend()
        elif kind == "heatmap":
            fig.colorbar(ax.imshow(rng.random((12, 20)), cmap="viridis"), ax=ax)
        else:
            ax.bar(list("ABCDE"), rng.random(5), color="tab:orange")
        ax.set_title(f"{kind} <{i}>")
        path = tmp_path / f"{kind}.png"
        fig.savefig(path)
        plt.close(fig)
        figs.append(Figure(path, caption=f"A {kind} & friends"))
    return figs


def test_report_renders_in_chromium(tmp_path):
    figs = _figures(tmp_path)
    table = Table([{"method": "ROME", "efficacy": 0.98, "note": "<b>not bold</b>"},
                   {"method": "steering", "efficacy": None}], caption="Scores", formats={"efficacy": "{:.1%}"})
    report = Report(title="Browser check <1> & co", subtitle="headless",
                    sections=[Section("Figures", text=["Three **figures**."], figures=figs[:2],
                                      subsections=[Section("More", figures=figs[2:], tables=[table])])],
                    provenance={"seed": 0})
    html = render_html(report, tmp_path / "out" / "report.html")
    r = _check(html, tmp_path / "shot.png", full_page_path=tmp_path / "full.png")
    assert r["title"] == "Browser check <1> & co"
    assert r["n_images"] == len(figs) == r["n_loaded"], r["images"]
    assert all(i["src"].startswith("data:image/png;base64,") and i["width"] == 480 for i in r["images"])
    assert r["console_errors"] == []  # e.g. no Content-Security-Policy violation: nothing external loaded
    assert not r["blank"], (r["screenshot"], r["full_page"])
    assert r["full_page"]["height"] > r["screenshot"]["height"]  # the whole page, beyond the viewport
    assert (tmp_path / "shot.png").stat().st_size > 1000 and (tmp_path / "full.png").is_file()


def test_blank_page_broken_and_external_images_are_detected(tmp_path):
    """Negative control: the checks above can fail."""
    _figures(tmp_path)  # line.png next to the page, which the report's CSP must refuse to load
    page = tmp_path / "blank.html"
    page.write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{_CSP}">'
                    '<title>empty</title></head><body style="background:#fff">'
                    '<img src="data:image/png;base64,AAAA" alt=""><img src="line.png" alt=""></body></html>')
    r = _check(page)
    assert r["title"] == "empty" and r["n_images"] == 2 and r["n_loaded"] == 0
    assert r["blank"]
    assert any("Content Security Policy" in e and "line.png" in e for e in r["console_errors"])


def test_the_lens_memory_report_renders_with_every_image(tiny_report, tmp_path):
    """The real report (every stage, on the tiny model) in Chromium: all figures decode, the page is not blank."""
    out, summary = tiny_report
    html = out / "report.html"
    n_figures = html.read_text().count("<figure")
    r = _check(html, tmp_path / "shot.png", full_page_path=tmp_path / "full.png", max_full_page_height=40000)
    assert r["n_images"] == r["n_loaded"] == n_figures >= 10, [i for i in r["images"] if not i["complete"]]
    assert all(i["width"] > 100 and i["height"] > 100 for i in r["images"])
    assert not r["blank"] and not r["console_errors"]
    assert r["title"] == f"lens_memory report: {summary['model']['name']}"
