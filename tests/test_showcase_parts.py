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

from eval.showcase.showcase_plan import HELD_OUT_TAGS, PHASES, TRAIN_SPLIT, make_plan
from eval.showcase.showcase_report import bootstrap_ci, unit_scores

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
    with pytest.raises(ValueError, match="--ablation"):
        make_plan(str(tmp_path), 5, ablation=True)


def test_plan_splits_the_budget() -> None:
    assert abs(sum(TRAIN_SPLIT.values()) - 1.0) < 1e-9
    p = make_plan("x", 30)
    left = sum(p.train_seconds.values())
    assert 0 < left < 30 * 60  # training gets what data and evaluations leave
    assert p.train_seconds["vae"] == pytest.approx(left * TRAIN_SPLIT["vae"], abs=0.2)
    assert make_plan("x", 60).geneval_prompts > make_plan("x", 5).geneval_prompts
    assert PHASES[0] == "data" and PHASES[-1] == "report"
    assert set(HELD_OUT_TAGS) == {"position", "color_attr"}


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
