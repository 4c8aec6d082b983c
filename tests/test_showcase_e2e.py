"""End to end: `nexus-gen showcase --minutes 1` stopped after a phase, then rerun to the end: the
rerun keeps the finished phases (same files, same phase times), writes the report and prints the
JSON line last; the trained pipeline then generates and edits with nexus_gen.scenes unimportable."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_showcase_parts import REPO, run_blocked_inference


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "flows.cli", "showcase", *args], capture_output=True, text=True,
                          env=env, timeout=900, cwd=str(REPO))


@pytest.mark.slow
def test_showcase_stops_resumes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "show"
    first = _cli("--out", str(out), "--minutes", "1", "--stop-after", "vae", "--threads", "1", "--ablation")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped after phase vae" in first.stdout
    state = json.loads((out / "state.json").read_text())
    assert state["done"] == ["data", "vae"]
    kept = {p: p.stat().st_mtime_ns for p in [out / "data" / "build" / "run.json",
                                              *sorted((out / "train" / "vae" / "final").rglob("*.safetensors"))]}
    assert len(kept) >= 2
    bad = _cli("--out", str(out), "--minutes", "2")
    assert bad.returncode == 2 and "--minutes 1" in bad.stderr  # another budget is refused, nothing redone
    second = _cli("--out", str(out), "--minutes", "1", "--threads", "1", "--ablation")
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished phases are not redone
    state2 = json.loads((out / "state.json").read_text())
    assert state2["phase_seconds"]["data"] == state["phase_seconds"]["data"]
    assert state2["done"][:2] == ["data", "vae"] and state2["done"][-1] == "report"
    line = json.loads(second.stdout.strip().splitlines()[-1])
    for label in ("trained", "untrained"):
        assert set(line[label]) == {"geneval_scenes", "edit_success", "qa_accuracy"}
        for metric, (lo, hi) in line["ci95"][label].items():
            assert lo <= line[label][metric] <= hi
    assert line["denominators"]["geneval_scenes"] == 6 and line["size"] == 144
    report = (out / "report.md").read_text()
    assert "qa_accuracy" in report and "95 %" in report
    # --ablation: the baseline AR trained with prefill false, its pipeline run with prefill false
    assert state2["done"][-2] == "eval_baseline" and "ar_baseline" in state2["done"]
    assert json.loads((out / "pipelines" / "baseline" / "nexus_gen_pipeline.json").read_text())["prefill"] is False
    assert "prefill" not in json.loads((out / "pipelines" / "trained" / "nexus_gen_pipeline.json").read_text())
    assert "prefill: false" in (out / "configs" / "ar_baseline.yaml").read_text()
    for side in ("prefilled", "baseline"):
        assert set(line["ablation"][side]) == {"geneval_scenes", "edit_success", "qa_accuracy"}
    assert line["ablation"]["prefilled"] == line["trained"] and "| prefilled | 95 % CI | baseline |" in report
    for f in ("report.html", "curves.png", "samples.png", "summary.json", "data/holdout.json"):
        assert (out / f).is_file(), f
    holdout = json.loads((out / "data" / "holdout.json").read_text())
    assert holdout["held_out_prompts"] > 0 and holdout["samples_checked"] > 0
    blocked = run_blocked_inference(out / "pipelines" / "trained")
    assert blocked["blocked"] and blocked["scenes_loaded"] == [] and blocked["gen_size"] == [[144, 144]] * 2
