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


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sizes_the_pixel_detector_cannot_handle_are_refused_before_work(tmp_path):
    from eval.geneval.run import SCENES_MIN_SIZE
    from flows.cli import app

    for args in (["--generator", "ground-truth", "--size", "8"],
                 ["--generator", "noise", "--size", str(SCENES_MIN_SIZE - 8)],
                 ["--generator", "tiny"]):  # its native 64 px
        out = tmp_path / "x"
        res = CliRunner().invoke(app, ["eval", "geneval-scenes", *args, "--out", str(out)])
        assert res.exit_code == 2, res.output
        assert f"at least {SCENES_MIN_SIZE} px" in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1
        assert not out.exists()
    # at the minimum the ground truth passes the benchmark's own bar
    summary = run_geneval(GenEvalConfig(generator="ground-truth", out=tmp_path / "min", limit=60,
                                        benchmark="geneval-scenes", n_images=2, size=SCENES_MIN_SIZE))
    assert summary["overall"] >= 0.98


def test_refused_rerun_writes_nothing(prefect_harness, tmp_path):
    """A rerun that cannot resume (other --n-images, other --seed, a smaller --limit) is refused
    with one line before anything is written: config.json and every other file stay as they were."""
    from flows.cli import app

    out = tmp_path / "run"
    run_geneval(GenEvalConfig(generator="ground-truth", out=out, benchmark="geneval-scenes", limit=6,
                              n_images=4, size=136))
    before = _snapshot(out)
    base = ["eval", "geneval-scenes", "--generator", "ground-truth", "--size", "136", "--out", str(out)]
    for args, says in ((["--limit", "6", "--n-images", "2"], "n_images: 4 there, 2 now"),
                       (["--limit", "6", "--n-images", "4", "--seed", "5"], "base_seed: 0 there, 5 now"),
                       (["--limit", "3", "--n-images", "4"], "prompt folders outside this run's prompts")):
        res = CliRunner().invoke(app, base + args)
        assert res.exit_code == 2, res.output
        assert says in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert _snapshot(out) == before
