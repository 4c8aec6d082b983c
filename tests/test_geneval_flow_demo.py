"""`make demo`'s evaluation part on a small subset: both scenes runs and the side-by-side report."""
from __future__ import annotations

import json
from html.parser import HTMLParser

from typer.testing import CliRunner

from flows.cli import app


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self._td = False

    def handle_starttag(self, tag, attrs):
        if tag in ("td", "th"):
            self._td = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._td = False

    def handle_data(self, data):
        if self._td:
            self.cells[-1] += data


def test_demo_runs_ground_truth_and_tiny_side_by_side(prefect_harness, tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--limit", "12", "--n-images", "1"])
    assert res.exit_code == 0, res.output
    gt = json.loads((out / "geneval-scenes-ground-truth" / "summary.json").read_text())
    tiny = json.loads((out / "geneval-scenes-tiny" / "summary.json").read_text())
    assert gt["n_images"] == tiny["n_images"] == 12
    assert gt["overall"] >= 0.98 and tiny["overall"] <= 0.1
    for run in ("geneval-scenes-ground-truth", "geneval-scenes-tiny"):
        assert (out / run / "report.html").is_file()
    page = _Cells()
    page.feed((out / "report.html").read_text())
    cells = page.cells
    t = cells.index("tag")
    assert cells[t + 1] == "ground-truth" and cells[t + 2].startswith("tiny-sd")
    i = cells.index("overall", t)
    assert abs(float(cells[i + 1]) - gt["overall"]) < 1e-4
    assert abs(float(cells[i + 2]) - tiny["overall"]) < 1e-4
    # the data step: the embedded reference examples converted, validated and exported
    last = json.loads((out / "data" / "export-nexus-gen-jsonl" / "export.json").read_text())
    assert last["written"] == {"understanding": 1, "generation": 2, "editing": 2}
    csv_dir = out / "data" / "export-diffsynth-csv"
    assert (csv_dir / "generation" / "metadata.csv").is_file() and (csv_dir / "editing" / "metadata.csv").is_file()

    # The terminal and the report say what the numbers mean, not a Python dict.
    assert "{" not in res.stdout
    lines = res.stdout.splitlines()
    gt_line = next(line for line in lines if line.strip().startswith("ground-truth"))
    tiny_line = next(line for line in lines if line.strip().startswith("tiny "))
    assert f"{gt['overall']:.3f}" in gt_line and "ceiling" in gt_line
    assert f"{tiny['overall']:.3f}" in tiny_line and "random" in tiny_line
    assert f"report: {out / 'report.html'}" in lines
    i = cells.index("what it stands for")
    assert cells[i + 1:i + 3] == ["ground-truth", str(round(gt["overall"], 4)).rstrip("0").rstrip(".")]
    assert "ceiling" in cells[i + 3]
    # the data step in the report: convert 5 -> 5, validate 5 ok, both exports
    j = cells.index("convert (nexus-gen-jsonl)")
    assert cells[j + 1:j + 4] == ["5", "5", "0"]
    k = cells.index("validate")
    assert cells[k + 1:k + 5] == ["5", "5", "0", "ok"]
    e = cells.index("export nexus-gen-jsonl")
    assert cells[e + 1] == "5" and "editing 2" in cells[e + 4]
    d = cells.index("export diffsynth-csv")
    assert cells[d + 3] == "1" and "understanding 1" in cells[d + 4]  # understanding is skipped
    # the build step: demo.yaml built, its counts in the terminal, its grid and plots in the report
    rec = json.loads((out / "build" / "run.json").read_text())
    for folder, recipe in (("build", "demo"), ("build-imagepulse", "demo_imagepulse")):
        r = json.loads((out / folder / "run.json").read_text())
        c = r["counts"]
        assert r["status"] == "complete" and c["planned"] == c["triplets"] + c["rejected"] > 0
        build_line = next(line for line in lines if line.startswith(f"build (datasets_spec/recipes/{recipe}.yaml)"))
        assert f"{c['planned']} planned = {c['triplets']} triplets + {c['rejected']} rejected" in build_line
    b = cells.index("edit type")
    assert cells[b + 4:b + 8] == ["add", str(rec["by_edit_type"]["add"]["planned"]),
                                  str(rec["by_edit_type"]["add"]["triplets"]),
                                  str(rec["by_edit_type"]["add"]["rejected"])]
    html = (out / "report.html").read_text()
    assert "Data: the build of recipe demo<" in html and "Score distributions per edit type" in html
    assert "Data: the build of recipe demo_imagepulse<" in html
    assert html.count("data:image/png;base64,") >= 4
    # each run's own report is a link from the demo report
    for run in ("geneval-scenes-ground-truth", "geneval-scenes-tiny"):
        assert f'href="{run}/report.html"' in html


def test_python_m_flows_demo_is_the_same_command(tmp_path):
    """`python -m flows.demo` still works: it runs `nexus-gen demo` (checked here on a bad option,
    which must fail before any work)."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "flows.demo", "--out", str(tmp_path / "d"), "--limit", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--limit" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "d").exists()
