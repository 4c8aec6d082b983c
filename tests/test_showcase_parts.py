"""Showcase (issue 17): the plan's checks, the bootstrap, and inference with the scenes package
unimportable (no pixel comes from the renderer)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.showcase.showcase_plan import ABLATION_PHASES, HELD_OUT_TAGS, PHASES, TRAIN_SPLIT, make_plan
from eval.showcase.showcase_report import (bootstrap_ci, geneval_strata, stratified_ci, summary_line, unit_scores,
                                           write_report)

REPO = Path(__file__).resolve().parents[1]

# A subprocess prelude: every import of nexus_gen.scenes (or a sub-module) raises.
BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "nexus_gen.scenes" or name.startswith("nexus_gen.scenes."):
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, _Block())
"""

INFER = BLOCKER + """
import hashlib, json, sys
import torch
torch.set_num_threads(1)
try:
    import nexus_gen.scenes  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
from PIL import Image
from nexus_gen.models.nexus_pipeline import NexusGenPipeline
pipe = NexusGenPipeline.from_pretrained(sys.argv[1])
gen = pipe.generate(["a photo of a red circle", "a photo of two squares"], steps=2, seed=0)
src = Image.new("RGB", (144, 144), (200, 200, 200))
ed = pipe.edit([src], ["Add a blue triangle."], steps=2, seed=0)
print(json.dumps({"blocked": blocked, "scenes_loaded": [m for m in sys.modules if m.startswith("nexus_gen.scenes")],
                  "gen": [hashlib.sha256(im.tobytes()).hexdigest() for im in gen],
                  "gen_size": [list(im.size) for im in gen], "edit_size": [list(im.size) for im in ed]}))
"""


def run_blocked_inference(pipeline: Path) -> dict:
    """Generate and edit with `pipeline` in a subprocess where nexus_gen.scenes cannot be imported."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", INFER, str(pipeline)], capture_output=True, text=True,
                         env=env, timeout=300, cwd=str(REPO))
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_plan_rejects_bad_budget_and_device(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--minutes 0"):
        make_plan(str(tmp_path), 0)
    with pytest.raises(ValueError, match="--device 'tpu'"):
        make_plan(str(tmp_path), 5, device="tpu")


def test_plan_splits_the_budget() -> None:
    assert abs(sum(TRAIN_SPLIT.values()) - 1.0) < 1e-9
    p = make_plan("x", 30)
    left = sum(p.train_seconds.values())
    assert 0 < left < 30 * 60  # training gets what data and evaluations leave
    assert p.train_seconds["vae"] == pytest.approx(left * TRAIN_SPLIT["vae"], abs=0.2)
    assert make_plan("x", 60).geneval_prompts > make_plan("x", 5).geneval_prompts
    assert PHASES[0] == "data" and PHASES[-1] == "report"
    assert set(HELD_OUT_TAGS) == {"position", "color_attr"}


def test_plan_reserves_the_ablations_budget() -> None:
    """--ablation: the baseline AR trains as long as the prefilled one, from 20 % of training set aside."""
    plain, abl = make_plan("x", 30), make_plan("x", 30, ablation=True)
    assert "ar_baseline" not in plain.train_seconds and abl.ablation
    assert abl.train_seconds["ar_baseline"] == abl.train_seconds["ar"]
    for k, v in plain.train_seconds.items():
        assert abl.train_seconds[k] == pytest.approx(0.8 * v, abs=0.2)
    assert set(ABLATION_PHASES) <= set(PHASES)
    assert PHASES.index("ar") < PHASES.index("ar_baseline") and PHASES.index("eval_final") < PHASES.index("eval_baseline")


def _write_runs(root: Path, label: str, geneval: list[list[bool]], edits: list[bool], qa: list[bool]) -> list[dict]:
    """Benchmark files of the three evaluations of one point, in each benchmark's own format."""
    runs = {m: root / label / m for m in ("geneval_scenes", "edit_success", "qa_accuracy")}
    for d in runs.values():
        d.mkdir(parents=True)
    (runs["geneval_scenes"] / "results.jsonl").write_text("".join(
        json.dumps({"filename": f"/r/{p:05d}/samples/{k:04d}.png", "correct": c}) + "\n"
        for p, cs in enumerate(geneval) for k, c in enumerate(cs)))
    (runs["edit_success"] / "scores.jsonl").write_text("".join(
        json.dumps({"id": f"e{i}", "success": c}) + "\n" for i, c in enumerate(edits)))
    (runs["qa_accuracy"] / "parsed.jsonl").write_text("".join(
        json.dumps({"id": f"s{i:05d}-q000", "correct": c}) + "\n" for i, c in enumerate(qa)))
    return [{"label": label, "metric": m, "value": None, "minutes": 1.0, "eval_seconds": 1.0, "run": str(d)}
            for m, d in runs.items()]


def test_ablation_summary_and_report_side_by_side(tmp_path: Path) -> None:
    """The JSON line's "ablation" key and the report's table: trained (prefilled) vs baseline with
    cluster-bootstrap intervals; hand values (2 units each: resampled means can only be 3 values)."""
    points = (_write_runs(tmp_path, "untrained", [[False], [False]], [False, False], [False, False])
              + _write_runs(tmp_path, "trained", [[True, True], [True, False]], [True, False], [True, True])
              + _write_runs(tmp_path, "baseline", [[False, False], [True, False]], [False, False], [True, False])
              + _write_runs(tmp_path, "ar_baseline-3", [[False]], [False], [False]))
    state = {"points": points, "seconds": 120.0, "segments": {}, "phase_seconds": {}}
    assert "ablation" not in summary_line(make_plan(str(tmp_path), 1), state)
    plan = make_plan(str(tmp_path), 1, ablation=True)
    ab = summary_line(plan, state)["ablation"]
    # trained geneval: units (2 of 2), (1 of 2) -> 0.75; resamples 1.0, 0.75, 0.5 (p 1/4, 1/2, 1/4)
    assert ab["prefilled"] == {"geneval_scenes": 0.75, "edit_success": 0.5, "qa_accuracy": 1.0}
    assert ab["baseline"] == {"geneval_scenes": 0.25, "edit_success": 0.0, "qa_accuracy": 0.5}
    assert ab["ci95"]["prefilled"] == {"geneval_scenes": [0.5, 1.0], "edit_success": [0.0, 1.0],
                                       "qa_accuracy": [1.0, 1.0]}
    assert ab["ci95"]["baseline"] == {"geneval_scenes": [0.0, 0.5], "edit_success": [0.0, 0.0],
                                      "qa_accuracy": [0.0, 1.0]}
    report = write_report(plan, state).read_text()
    assert "| geneval_scenes | 0.750 | [0.500, 1.000] | 0.250 | [0.000, 0.500] |" in report
    assert "| qa_accuracy | 1.000 | [1.000, 1.000] | 0.500 | [0.000, 1.000] |" in report
    assert json.loads((tmp_path / "summary.json").read_text())["ablation"] == ab


def test_bootstrap_hand_values() -> None:
    mean, lo, hi, n = bootstrap_ci({"a": [1.0, 1.0], "b": [1.0]})
    assert (mean, lo, hi, n) == (1.0, 1.0, 1.0, 2)
    # clusters a (2 of 2), b (0 of 2): pooled mean 0.5; resamples can only give 0, 0.5 or 1
    mean, lo, hi, n = bootstrap_ci({"a": [1.0, 1.0], "b": [0.0, 0.0]})
    assert mean == 0.5 and n == 2 and lo == 0.0 and hi == 1.0
    # many units: the interval narrows around the mean like a binomial's (sd = sqrt(p(1-p)/n))
    rng = np.random.default_rng(1)
    groups = {str(i): [float(v)] for i, v in enumerate(rng.random(400) < 0.3)}
    mean, lo, hi, _ = bootstrap_ci(groups)
    sd = (mean * (1 - mean) / 400) ** 0.5
    assert lo < mean < hi and abs((hi - lo) - 2 * 1.96 * sd) < 0.02
    assert bootstrap_ci({}) [3] == 0


def test_geneval_points_are_the_official_tag_mean(tmp_path: Path) -> None:
    """GenEval's overall is the mean over tags (not over images): tag a 2 of 2, tag b 0 of 4 gives
    0.5 (pooled it would be 1/3); resampling prompts within tags cannot move it here."""
    rows = [("a", 0, True), ("a", 1, True), ("b", 2, False), ("b", 3, False), ("b", 4, False), ("b", 5, False)]
    (tmp_path / "results.jsonl").write_text("".join(
        json.dumps({"filename": f"/r/{p:05d}/samples/0000.png", "tag": t, "correct": c}) + "\n" for t, p, c in rows))
    assert stratified_ci(geneval_strata(tmp_path)) == (0.5, 0.5, 0.5, 6)
    # a mixed tag: its within-tag resamples move the interval, the point stays the tag mean
    rows += [("c", 10 + i, i % 2 == 0) for i in range(20)]
    (tmp_path / "results.jsonl").write_text("".join(
        json.dumps({"filename": f"/r/{p:05d}/samples/0000.png", "tag": t, "correct": c}) + "\n" for t, p, c in rows))
    point, lo, hi, n = stratified_ci(geneval_strata(tmp_path))
    assert point == pytest.approx((1.0 + 0.0 + 0.5) / 3) and lo < point < hi and n == 26
    assert hi - lo == pytest.approx(2 * 1.96 * (0.25 / 20) ** 0.5 / 3, abs=0.03)


def test_unit_scores_read_the_benchmarks_files(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text(
        "".join(json.dumps({"filename": f"/r/{p:05d}/samples/{k:04d}.png", "correct": c}) + "\n"
                for p, k, c in [(0, 0, True), (0, 1, False), (3, 0, True)]))
    assert unit_scores("geneval_scenes", tmp_path) == {"00000": [1.0, 0.0], "00003": [1.0]}
    (tmp_path / "parsed.jsonl").write_text("".join(json.dumps({"id": i, "correct": c}) + "\n" for i, c in
                                                   [("s00001-q000", True), ("s00001-q001", None), ("s00002-q000", False)]))
    assert unit_scores("qa_accuracy", tmp_path) == {"s00001": [1.0, 0.0], "s00002": [0.0]}
    (tmp_path / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "success": True}, {"id": "b", "success": None}, {"id": "c", "success": None, "error": "x"}]))
    assert unit_scores("edit_success", tmp_path) == {"a": [1.0], "c": [0.0]}


@pytest.mark.slow
def test_inference_without_the_scenes_package(tmp_path: Path) -> None:
    """The tiny pipeline saved as a folder generates and edits with nexus_gen.scenes unimportable."""
    import torch

    from nexus_gen.models.nexus_pipeline import NexusGenPipeline

    torch.set_num_threads(1)
    NexusGenPipeline.tiny().save_pretrained(tmp_path / "pipe")
    out = run_blocked_inference(tmp_path / "pipe")
    assert out["blocked"] is True and out["scenes_loaded"] == []
    assert len(out["gen"]) == 2 and out["gen"][0] != out["gen"][1]
    assert out["edit_size"] == [[64, 64]] or len(out["edit_size"]) == 1
