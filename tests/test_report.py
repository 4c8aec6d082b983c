"""Reports: markdown + self-contained HTML (parsed here), real matplotlib figures, GenEval content."""
from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from eval.report import (Figure, Report, Section, Table, bar_chart, build_run_report, write_report,
                         write_run_report)
from eval.report_geneval import build_comparison_report


class _Page(HTMLParser):
    """Collects what a self-containment check needs: every src/href, tables' cell text, headings."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.cells: list[str] = []
        self.headings: list[str] = []
        self._in: list[str] = []

    def handle_starttag(self, tag, attrs):
        self._in.append(tag)
        for k, v in attrs:
            if k in ("src", "href"):
                self.refs.append((tag, k, v or ""))
        if tag in ("td", "th", "h1", "h2"):
            (self.cells if tag in ("td", "th") else self.headings).append("")

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data):
        if self._in and self._in[-1] in ("td", "th"):
            self.cells[-1] += data
        elif self._in and self._in[-1] in ("h1", "h2"):
            self.headings[-1] += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _png_of(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_generic_report_is_self_contained_and_deterministic(tmp_path):
    png = bar_chart(["a", "b<c"], {"run 1": [0.25, 1.0], "run 2": [0.5, 0.0]}, title="t")
    report = Report("Bench <x>", [Section("Results", text=["- one `code`\n- two", "plain & text"],
                                          tables=[Table(["name", "score"], [["a|b", 0.5], ["c", None]])],
                                          figures=[Figure("fig1", png, caption="a chart")],
                                          code='{"k": 1}')])
    md, html = write_report(report, tmp_path / "r1")
    page = _parse(html)
    assert page.headings == ["Bench <x>", "Results"]
    assert page.cells == ["name", "score", "a|b", "0.5", "c", "-"]
    assert [r[:2] for r in page.refs] == [("img", "src")]  # no external stylesheet, script or link
    with _png_of(page.refs[0][2]) as im:
        assert im.format == "PNG" and im.size[0] > 200
    text = md.read_text()
    assert "| a\\|b | 0.5 |" in text and "![a chart](report_files/fig1.png)" in text
    assert (tmp_path / "r1" / "report_files" / "fig1.png").read_bytes() == png
    # Same report, same bytes (plots included).
    report2 = Report(report.title, [Section("Results", text=report.sections[0].text,
                                            tables=report.sections[0].tables, code='{"k": 1}',
                                            figures=[Figure("fig1", bar_chart(
                                                ["a", "b<c"], {"run 1": [0.25, 1.0], "run 2": [0.5, 0.0]},
                                                title="t"), caption="a chart")])])
    md2, html2 = write_report(report2, tmp_path / "r2")
    assert html.read_bytes() == html2.read_bytes() and md.read_bytes() == md2.read_bytes()


def _fake_scored_run(run: Path, benchmark: str, prompt_set: str, n_used: int, rows: list[tuple[str, bool]],
                     summary: dict) -> Path:
    """A scored run directory written by hand (config, summary, official results rows)."""
    run.mkdir(parents=True)
    config = {"benchmark": benchmark, "generator": {"name": "x"}, "n_images": 1, "base_seed": 3,
              "prompt_set": {"name": prompt_set, "file": "p.jsonl", "sha256": "ab" * 32,
                             "n_used": n_used, "n_total": 553},
              "detector": {"name": "paper"}, "classifier": {"name": "paper"},
              "options": {"threshold": 0.3}, "generation": {"model_id": "my/model", "seeds": {"00000": [11]},
                                                             "seed_rule": "rule"}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "results.jsonl").write_text("".join(
        json.dumps({"filename": f"{i:05d}/samples/0000.png", "tag": t, "prompt": "p", "correct": ok,
                    "reason": "", "metadata": "{}", "details": "{}"}) + "\n"
        for i, (t, ok) in enumerate(rows)))
    return run


def test_geneval_report_tables_and_comparison(tmp_path):
    rows = [("single_object", True), ("single_object", False), ("counting", True)]
    summary = {"overall": 0.75, "single_object": 0.5, "counting": 1.0, "correct_images": 2 / 3,
               "correct_prompts": 2 / 3, "n_images": 3, "n_prompts": 3}
    run = _fake_scored_run(tmp_path / "run", "geneval", "geneval", 3, rows, summary)
    report, md, html = write_run_report(run)
    page = _parse(html)
    cells = page.cells
    i = cells.index("single_object")
    assert cells[i:i + 4] == ["single_object", "2", "1", "0.5"]
    j = cells.index("counting")
    assert cells[j:j + 4] == ["counting", "1", "1", "1"]
    k = cells.index("two_object")
    assert cells[k + 3] == "-"
    # The comparison table holds every published score and this run, flagged as a --limit subset.
    for name, score in [("GPT-4o", "0.84"), ("Nexus-Gen (V2)", "0.81"), ("FLUX.1-dev", "0.66"),
                        ("BAGEL", "0.82"), ("Janus-Pro-7B", "0.8"), ("SD3-Medium", "0.74")]:
        assert cells[cells.index(name) + 1] == score
    me = cells.index("this run: my/model")
    assert cells[me + 1] == "0.75" and "only 3 of 553 prompts" in cells[me + 2]
    text = md.read_text()
    assert "no prompt rewriting" in text and "[11]" in text
    assert (run / "report_files" / "geneval_per_tag.png").is_file()


def test_bar_chart_png_looks_right(tmp_path):
    png = bar_chart(["single_object", "counting"], {"ground-truth": [1.0, 0.98], "noise": [0.0, 0.02]},
                    title="check")
    p = tmp_path / "chart.png"
    p.write_bytes(png)
    with Image.open(p) as im:
        rgb = im.convert("RGB")
        colours = {c for _, c in rgb.getcolors(1 << 20)}
    # matplotlib's first two default colours (C0 blue, C1 orange) are drawn as bars.
    assert (31, 119, 180) in colours and (255, 127, 14) in colours


def test_comparison_report_and_bad_run_dirs(tmp_path):
    a = _fake_scored_run(tmp_path / "a", "geneval-scenes", "scenes", 2, [("colors", True)],
                         {"overall": 1.0, "colors": 1.0, "correct_prompts": 1.0})
    b = _fake_scored_run(tmp_path / "b", "geneval-scenes", "scenes", 2, [("colors", False)],
                         {"overall": 0.0, "colors": 0.0, "correct_prompts": 0.0})
    rep = build_comparison_report([a, b])
    _, html = write_report(rep, tmp_path / "cmp")
    cells = _parse(html).cells
    assert cells[:3] == ["tag", "my/model", "my/model"]
    assert cells[cells.index("colors"):cells.index("colors") + 3] == ["colors", "1", "0"]
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_run_report(tmp_path / "nothing")
    # A directory of run directories gets their side-by-side report.
    rep2, _, html2 = write_run_report(tmp_path)
    assert rep2.title == rep.title and _parse(html2).cells == cells
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"benchmark": "mystery"}))
    with pytest.raises(ValueError, match="benchmark 'mystery' has no report builder"):
        build_run_report(tmp_path / "odd")
    with pytest.raises(ValueError, match="no one report compares"):
        build_run_report(tmp_path)
    (b / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="not been scored"):
        build_run_report(b)


class _Tables(HTMLParser):
    """Each <table> of a page as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.tags: list[str] = []
        self._cell = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
            self._cell = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = False

    def handle_data(self, data):
        if self._cell:
            self.tables[-1][-1][-1] += data


def _tables(path: Path) -> _Tables:
    page = _Tables()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_runs_of_different_benchmarks_never_share_a_table(tmp_path):
    _fake_scored_run(tmp_path / "ge", "geneval", "geneval", 553, [("colors", True)],
                     {"overall": 0.8, "colors": 0.8, "correct_prompts": 0.8})
    _fake_scored_run(tmp_path / "sc", "geneval-scenes", "scenes", 408, [("colors", True)],
                     {"overall": 1.0, "colors": 1.0, "correct_prompts": 1.0})
    _, md, html = write_run_report(tmp_path)
    per_tag = [t for t in _tables(html).tables if t and t[0][0] == "tag"]
    assert len(per_tag) == 2  # one comparison per benchmark, each with its one run
    assert sorted(t[[r[0] for r in t].index("overall")][1] for t in per_tag) == ["0.8", "1"]
    assert all(len(row) == 2 for t in per_tag for row in t)
    assert "not comparable" in md.read_text()
    assert {p.name for p in (tmp_path / "report_files").iterdir()} == {
        "geneval_comparison_per_tag.png", "geneval-scenes_comparison_per_tag.png"}


def test_comparison_links_each_runs_own_report(tmp_path):
    runs = [_fake_scored_run(tmp_path / name, "geneval-scenes", "scenes", 2, [("colors", ok)],
                             {"overall": float(ok), "colors": float(ok), "correct_prompts": float(ok)})
            for name, ok in (("a", True), ("b", False))]
    for run in runs:
        write_run_report(run)
    _, _, html = write_run_report(tmp_path)
    links = [v for tag, k, v in _parse(html).refs if tag == "a" and k == "href"]
    assert sorted(links) == ["a/report.html", "b/report.html"]
    assert all((tmp_path / link).is_file() for link in links)
    # written elsewhere, the links still lead to the runs' reports
    _, page = write_report(build_comparison_report(runs, links_from=tmp_path / "x" / "y"), tmp_path / "x" / "y")
    links = [v for tag, k, v in _parse(page).refs if tag == "a"]
    assert sorted(links) == ["../../a/report.html", "../../b/report.html"]


def test_report_text_is_markdown_with_raw_html_escaped(tmp_path):
    report = Report("t", [Section("s", text=["model `<b>m</b>` and <script>alert(1)</script>, "
                                             "see [the run](run/report.html)"])])
    _, html = write_report(report, tmp_path)
    page = _tables(html)
    assert "script" not in page.tags and "b" not in page.tags
    assert "<code>&lt;b&gt;m&lt;/b&gt;</code>" in html.read_text()
    assert [r for r in _parse(html).refs if r[0] == "a"] == [("a", "href", "run/report.html")]
