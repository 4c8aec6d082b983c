"""`geneval-scenes` end to end, offline: ground-truth renders score >= 0.98, noise <= 0.05, and the
command line runs the flow and prints the summary as its last line."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from eval.geneval import layout
from eval.geneval.run import GenEvalConfig, run_geneval

TAGS = {"single_object", "two_object", "counting", "colors", "position", "color_attr"}


def test_ground_truth_through_the_command_line(prefect_harness, tmp_path):
    from flows.cli import app

    out = tmp_path / "gt"
    res = CliRunner().invoke(app, ["eval", "geneval-scenes", "--generator", "ground-truth", "--out",
                                   str(out), "--limit", "60", "--n-images", "2", "--size", "256"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 120 and summary["n_prompts"] == 60
    assert TAGS <= set(summary)
    assert summary["overall"] >= 0.98
    assert min(summary[t] for t in TAGS) >= 0.9
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["benchmark"] == "geneval-scenes" and cfg["prompt_set"]["name"] == "scenes"
    assert cfg["detector"]["name"] == "scenes-pixel"
    assert len(list(layout.iter_images(out))) == 120
    assert (out / "report.html").is_file() and (out / "detections.jsonl").is_file()


def test_noise_scores_near_zero(tmp_path):
    summary = run_geneval(GenEvalConfig(generator="noise", out=tmp_path / "noise",
                                        benchmark="geneval-scenes", limit=36, n_images=2, size=256))
    assert summary["n_images"] == 72 and TAGS <= set(summary)
    assert summary["overall"] <= 0.05


def test_bad_scenes_command_fails_before_work(tmp_path):
    from flows.cli import app

    res = CliRunner().invoke(app, ["eval", "geneval-scenes", "--generator", "ground-truth", "--out",
                                   str(tmp_path / "x"), "--limit", "-3"])
    assert res.exit_code == 2 and "--limit must be >= 1" in res.output
    assert not (tmp_path / "x").exists()
