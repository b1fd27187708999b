"""The report renderer: escaping, embedded images, table formatting, Markdown assets, atomic writes."""

import base64
import json
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lens_memory.report import Figure, Report, Section, Table, render_html, render_markdown  # noqa: E402
from lens_memory.report import render as render_mod  # noqa: E402


def _png(path: Path, colour: str = "tab:blue") -> Path:
    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1, 2], [0, 1, 0], color=colour)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _report(figs: list[Figure], table: Table | None = None) -> Report:
    sub = Section("Details & <caveats>", text=["Uses `a<b` and **strong** text.\n- first item\n- second"])
    return Report(
        title='Lens "memory" <report> & co',
        subtitle="tiny",
        sections=[Section("Results", text=["Plain paragraph."], figures=figs,
                          tables=[table] if table else [], subsections=[sub])],
        provenance={"git": {"commit": "abc<def>", "dirty": False}, "seeds": [0, 1], "model": None},
    )


@pytest.fixture
def pngs(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    return [_png(d / "a.png"), _png(d / "b.png", "tab:red")]


def test_html_escapes_text_and_embeds_images(tmp_path, pngs):
    table = Table([{"name": "<script>alert(1)</script>", "v": 1.5}], caption="x & y")
    out = render_html(_report([Figure(p, caption=f"fig <{i}>") for i, p in enumerate(pngs)], table),
                      tmp_path / "r.html")
    doc = out.read_text()
    assert "<script>" not in doc and "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    assert "<title>Lens &quot;memory&quot; &lt;report&gt; &amp; co</title>" in doc
    assert "Details &amp; &lt;caveats&gt;" in doc and "abc&lt;def&gt;" in doc
    assert "<code>a&lt;b</code>" in doc and "<strong>strong</strong>" in doc
    assert "<ul><li>first item</li><li>second</li></ul>" in doc
    # every image is inline PNG data, identical to the source file; nothing else is loaded
    srcs = re.findall(r'src="([^"]*)"', doc)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert [base64.b64decode(s.split(",", 1)[1]) for s in srcs] == [p.read_bytes() for p in pngs]
    assert not re.search(r"<(link|script)\b", doc) and "http://" not in doc and "https://" not in doc
    # table of contents links to existing anchors (sections + provenance)
    ids = set(re.findall(r'id="([^"]+)"', doc))
    toc = re.findall(r'href="#([^"]+)"', doc)
    assert len(toc) == 3 and set(toc) <= ids


def test_missing_or_invalid_image_is_an_error(tmp_path, pngs):
    missing = tmp_path / "nowhere" / "gone.png"
    for render in (render_html, render_markdown):
        with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
            render(_report([Figure(pngs[0]), Figure(missing)]), tmp_path / "out" / "r.x")
    not_png = tmp_path / "fake.png"
    not_png.write_text("hello")
    with pytest.raises(ValueError, match="not a PNG"):
        render_html(_report([Figure(not_png)]), tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "out" / "r.x").exists()


def test_table_formatting_and_missing_values():
    t = Table([{"a": 1, "b": 0.123456, "c": "x"}, {"a": None, "b": float("nan")}, {"c": "z", "d": True}],
              formats={"b": "{:.2f}"})
    assert t.header() == ["a", "b", "c", "d"]
    assert t.cells() == [["1", "0.12", "x", "—"], ["—", "—", "—", "—"], ["—", "—", "z", "True"]]
    assert t.numeric_columns() == {"a", "b"}
    assert Table([{"x": 1234567.891, "y": 3}], columns=["y", "x"]).cells() == [["3", "1.235e+06"]]
    with pytest.raises(ValueError, match="column 'c'"):
        Table([{"c": "text"}], formats={"c": "{:.2f}"}).cells()


def test_table_from_dataframe():
    df = pd.DataFrame({"layer": [0, 1], "score": [0.5, None], "when": pd.to_datetime(["2024-01-01", None])})
    t = Table.from_dataframe(df, caption="c", formats={"score": "{:.1%}"})
    assert t.columns == ["layer", "score", "when"]
    assert t.cells() == [["0", "50.0%", "2024-01-01 00:00:00"], ["1", "—", "—"]]
    t = Table.from_dataframe(df.set_index("layer"), index=True)
    assert t.columns[0] == "layer"


def test_markdown_copies_images_and_links_relatively(tmp_path, pngs):
    out_dir = tmp_path / "report"
    (out_dir / "own").mkdir(parents=True)
    inside = _png(out_dir / "own" / "c.png")  # already next to the Markdown file: linked, not copied
    other = tmp_path / "other"
    other.mkdir()
    clash = _png(other / "a.png", "tab:green")  # same name as pngs[0], different content
    pdf = other / "a.pdf"
    pdf.write_bytes(b"%PDF-1.4 fake")
    figs = [Figure(pngs[0], "first | one"), Figure(pngs[1], "second", pdf=pdf), Figure(clash, "clash"),
            Figure(inside, "inside")]
    table = Table([{"k": "a|b", "v": None}, {"k": "<i>", "v": 2.0}], caption="T")
    md = render_markdown(_report(figs, table), out_dir / "r.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["figures/a.png", "figures/b.png", "figures/a-2.png", "own/c.png"]
    for link, src in zip(links, [pngs[0], pngs[1], clash, inside]):
        assert (out_dir / link).read_bytes() == src.read_bytes()
    assert "([PDF](figures/a.pdf))" in md and (out_dir / "figures" / "a.pdf").is_file()
    assert "| k | v |\n|---|---:|\n| a\\|b | — |\n| &lt;i&gt; | 2 |" in md
    assert "- [Details &amp; &lt;caveats&gt;](#details--caveats)" in md
    prov = re.search(r"```json\n(.*?)\n```", md, re.S).group(1)
    assert json.loads(prov)["git"] == {"commit": "abc<def>", "dirty": False}
    # rendering again is stable (no new copies with suffixes)
    render_markdown(_report(figs, table), out_dir / "r.md")
    assert sorted(p.name for p in (out_dir / "figures").iterdir()) == ["a-2.png", "a.pdf", "a.png", "b.png"]


@pytest.mark.parametrize("render", [render_html, render_markdown])
def test_failed_render_leaves_previous_file_intact(tmp_path, pngs, monkeypatch, render):
    path = tmp_path / "r.out"
    path.write_text("previous")
    calls = []

    def read_png_then_fail(p):  # the second figure fails, after the first was read
        calls.append(p)
        if len(calls) == 2:
            raise OSError("disk on fire")
        return original(p)

    original = render_mod._read_png
    monkeypatch.setattr(render_mod, "_read_png", read_png_then_fail)
    with pytest.raises(OSError, match="disk on fire"):
        render(_report([Figure(p) for p in pngs]), path)
    monkeypatch.undo()

    def replace_fails(src, dst):  # the temporary file is complete, the rename is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(render_mod.os, "replace", replace_fails)
    with pytest.raises(KeyboardInterrupt):
        render(_report([Figure(p) for p in pngs]), path)
    monkeypatch.undo()
    assert path.read_text() == "previous"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")]  # no temporary file left behind
    assert render(_report([Figure(p) for p in pngs]), path).read_text() != "previous"
