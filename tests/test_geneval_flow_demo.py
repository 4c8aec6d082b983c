"""`make demo`'s evaluation part on a small subset: both scenes runs and the side-by-side report."""
from __future__ import annotations

import json
from html.parser import HTMLParser

from flows.demo import main


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
    main(["--out", str(out), "--limit", "12", "--n-images", "1"])
    gt = json.loads((out / "geneval-scenes-ground-truth" / "summary.json").read_text())
    tiny = json.loads((out / "geneval-scenes-tiny" / "summary.json").read_text())
    assert gt["n_images"] == tiny["n_images"] == 12
    assert gt["overall"] >= 0.98 and tiny["overall"] <= 0.1
    for run in ("geneval-scenes-ground-truth", "geneval-scenes-tiny"):
        assert (out / run / "report.html").is_file()
    page = _Cells()
    page.feed((out / "report.html").read_text())
    cells = page.cells
    assert cells[0] == "tag" and cells[1] == "ground-truth" and cells[2].startswith("tiny-sd")
    i = cells.index("overall")
    assert abs(float(cells[i + 1]) - gt["overall"]) < 1e-4
    assert abs(float(cells[i + 2]) - tiny["overall"]) < 1e-4
    # the data step: the embedded reference examples converted, validated and exported
    last = json.loads((out / "data" / "export-nexus-gen-jsonl" / "export.json").read_text())
    assert last["written"] == {"understanding": 1, "generation": 2, "editing": 2}
    csv_dir = out / "data" / "export-diffsynth-csv"
    assert (csv_dir / "generation" / "metadata.csv").is_file() and (csv_dir / "editing" / "metadata.csv").is_file()
