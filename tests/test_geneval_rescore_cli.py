"""`nexus-gen eval geneval-score DETECTIONS --out RESULTS [options]`: re-scoring without a
detector through the real command line."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from flows.cli import app

COUNT = {"tag": "counting", "include": [{"class": "clock", "count": 2}],
         "exclude": [{"class": "clock", "count": 3}], "prompt": "a photo of two clocks"}
POS = {"tag": "position", "include": [{"class": "cup", "count": 1},
                                      {"class": "dog", "count": 1, "position": ["right of", 0]}],
       "prompt": "a photo of a dog right of a cup"}
COLOR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
         "prompt": "a photo of a red car"}


def detections_file(path: Path) -> Path:
    lines = [
        {"filename": "r/00000/samples/0000.png", "metadata": COUNT, "detections": {"clock": [
            {"box": [0, 0, 40, 40], "score": 0.97}, {"box": [50, 0, 90, 40], "score": 0.95},
            {"box": [100, 0, 140, 40], "score": 0.5}]}},
        {"filename": "r/00001/samples/0000.png", "metadata": POS, "detections": {
            "cup": [{"box": [0, 0, 100, 100], "score": 0.8}],
            "dog": [{"box": [70, 0, 170, 100], "score": 0.8}]}},  # 70 px right: margin 20
        {"filename": "r/00002/samples/0000.png", "metadata": COLOR, "detections": {
            "car": [{"box": [0, 0, 10, 10], "score": 0.35, "color": "red"}]}},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def run(*args: str):
    return CliRunner().invoke(app, ["eval", "geneval-score", *args])


def test_rescore_command_defaults_and_options(tmp_path):
    det = detections_file(tmp_path / "detections.jsonl")
    out = tmp_path / "results.jsonl"
    res = run(str(det), "--out", str(out))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["overall"] == 1.0 and summary["n_images"] == 3
    assert set(summary) >= {"counting", "position", "colors", "correct_images", "correct_prompts"}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, True, True]
    assert all(isinstance(r["metadata"], str) for r in rows)

    res = run(str(det), "--out", str(out), "--counting-threshold", "0.4",
              "--position-threshold", "0.4", "--threshold", "0.4")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert (summary["counting"], summary["position"], summary["colors"]) == (0.0, 0.0, 0.0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["reason"] == "expected clock<3, found 3"
    assert rows[1]["reason"] == "expected dog right of target, found  target"
    assert rows[2]["reason"] == "expected car>=1, found 0"


def test_rescore_command_bad_input(tmp_path):
    det = detections_file(tmp_path / "detections.jsonl")
    with det.open("a") as f:
        f.write('{"filename": "x.png", "metadata": {"tag": "colors"}, "detections": {}}\n')
    res = run(str(det), "--out", str(tmp_path / "r.jsonl"))
    assert res.exit_code != 0
    assert f"{det}:4" in res.output and "metadata" in res.output
    res = run(str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r.jsonl"))
    assert res.exit_code != 0 and "does not exist" in res.output
    res = run(str(det), "--out", str(tmp_path / "r.jsonl"), "--max-objects", "0")
    assert res.exit_code != 0 and "max_objects" in res.output
    assert not (tmp_path / "r.jsonl").exists()


def test_rescore_command_without_colour_or_clip(tmp_path):
    det = tmp_path / "d.jsonl"
    det.write_text(json.dumps({"filename": str(tmp_path / "img.png"), "metadata": COLOR,
                               "detections": {"car": [{"box": [0, 0, 10, 10], "score": 0.9}]}}) + "\n")
    res = run(str(det), "--out", str(tmp_path / "r.jsonl"))
    assert res.exit_code != 0 and "img.png" in res.output and "not found" in res.output
    Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "img.png")
    res = run(str(det), "--out", str(tmp_path / "r.jsonl"), "--clip", "no-such-model:random")
    assert res.exit_code != 0
    assert "cannot be loaded" in res.output and "no-such-model" in res.output
    res = run(str(det), "--out", str(tmp_path / "r.jsonl"), "--clip", "tiny")
    assert res.exit_code == 0, res.output  # the (random) tiny CLIP answers some colour
    row = json.loads((tmp_path / "r.jsonl").read_text())
    assert row["correct"] == (row["reason"] == "")
