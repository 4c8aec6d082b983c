"""The GenEval flow end to end with real tiny components (random diffusers pipeline, random
Mask2Former, tiny CLIP): run directory contents, resume, config checks before any work, the
re-score command, the report command, and one run through Prefect's engine with its artifacts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.geneval import layout
from eval.geneval.rules import ScoringOptions
from eval.geneval.run import GenEvalConfig, check, run_geneval

TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]


def _config(out: Path, **kw) -> GenEvalConfig:
    base = dict(generator="tiny", out=out, limit=6, n_images=2, steps=2, detector="tiny", clip="tiny")
    base.update(kw)
    return GenEvalConfig(**base)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("geneval") / "run"
    run_geneval(_config(out))
    return out


def test_run_directory_holds_everything(run_dir):
    # --limit 6 takes one prompt of each tag, keeping the official prompt indices.
    cfg = json.loads((run_dir / "config.json").read_text())
    indices = cfg["prompt_set"]["indices"]
    assert len(indices) == 6 and indices[0] == 0
    images = list(layout.iter_images(run_dir))
    assert [(i.index, i.sample) for i in images] == [(i, n) for i in indices for n in range(2)]
    assert sorted({i.metadata["tag"] for i in images}) == sorted(TAGS)
    assert cfg["generation"]["model_id"].startswith("tiny-sd")
    assert cfg["generation"]["seeds"][f"{indices[1]:05d}"] == json.loads(
        (run_dir / "generation.json").read_text())["seeds"][f"{indices[1]:05d}"]
    assert cfg["detector"]["name"] == "tiny" and "tiny" in cfg["detector"]["model_id"]
    # a CPU run classifies colours in fp32 (the official amp needs CUDA), and says so
    assert cfg["classifier"] == {"name": "tiny", "precision": "fp32", "device": "cpu"}
    assert cfg["options"] == ScoringOptions().to_dict()
    assert cfg["prompt_set"]["name"] == "geneval" and cfg["prompt_set"]["n_total"] == 553
    assert {"torch", "diffusers", "transformers"} <= set(cfg["versions"])
    dets = (run_dir / "detections.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(dets) == len(rows) == 12
    assert all(isinstance(r["metadata"], str) and isinstance(r["details"], str) for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_images"] == 12 and summary["n_prompts"] == 6
    assert set(TAGS) <= set(summary) and summary["color_precision"] == "fp32"
    html = (run_dir / "report.html").read_text()
    assert "tiny-sd" in html and "Nexus-Gen (V2)" in html and "<img" in html
    assert "colours were classified in fp32 on cpu, not the official fp16 autocast" in html
    assert (run_dir / "report.md").is_file()
    from PIL import Image

    with Image.open(run_dir / "report_files" / "geneval_samples.png") as gallery:
        assert gallery.width > 6 * 64  # one generated image per tag, side by side


def test_rerun_resumes_and_gives_the_same_bytes(run_dir, tmp_path):
    names = ["results.jsonl", "detections.jsonl", "summary.json", "config.json", "report.html"]
    before = {n: (run_dir / n).read_bytes() for n in names}
    pngs = {p: p.stat().st_mtime_ns for p in run_dir.glob("*/samples/*.png")}
    run_geneval(_config(run_dir))
    assert {n: (run_dir / n).read_bytes() for n in names} == before
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("*/samples/*.png")} == pngs  # kept, not rewritten


@pytest.mark.parametrize("kw, message", [
    ({"generator": "nope"}, "unknown generator 'nope'"),
    ({"limit": 0}, "--limit must be >= 1"),
    ({"prompts": Path("/nonexistent/prompts.jsonl")}, "prompt file /nonexistent/prompts.jsonl"),
    ({"generator": "ground-truth"}, "scenes prompts only"),
    ({"detector": "scenes-pixel"}, "geneval-scenes"),
    ({"benchmark": "geneval-scenes", "detector": "tiny"}, "pixel detector only"),
    ({"n_images": 0}, "--n-images must be >= 1"),
    ({"device": "cuda:0"}, "CUDA is not available"),
    ({"clip": "no-such-clip"}, "--clip 'no-such-clip'"),
    ({"precision": "amp"}, "--precision amp is the official fp16 autocast on CUDA"),
    ({"precision": "bf16"}, "--precision 'bf16': use one of amp, fp32"),
    ({"benchmark": "geneval-scenes", "generator": "ground-truth", "detector": None,
      "precision": "fp32"}, "--precision does not apply"),
])
def test_bad_config_fails_before_any_work(tmp_path, kw, message):
    out = tmp_path / "never"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_geneval(_config(out, **kw))
    assert not out.exists()


def test_a_resumed_run_keeps_the_precision_its_stored_colours_were_classified_in(run_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "detections.jsonl"):
        (out / name).write_bytes((run_dir / name).read_bytes())
    assert check(_config(out, precision="fp32")).precision == "fp32"
    cfg = json.loads((out / "config.json").read_text())
    cfg["classifier"]["precision"] = "amp"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="classified in amp; this run asks for fp32"):
        check(_config(out))
    del cfg["classifier"]["precision"]  # a run recorded before the precision was: fp32
    (out / "config.json").write_text(json.dumps(cfg))
    assert check(_config(out)).precision == "fp32"


def test_bad_prompt_line_is_named(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text('{"tag": "single_object", "include": [{"class": "cow", "count": 1}], "prompt": "a cow"}\n'
                 '{"tag": "single_object", "include": [{"class": "cow", "count": 0}], "prompt": "b"}\n')
    with pytest.raises(ValueError, match=f"{p}:2: .*'count' must be an int >= 1"):
        check(_config(tmp_path / "x", prompts=p))


def test_rescore_command(run_dir, tmp_path):
    from flows.cli import app

    runner = CliRunner()
    out_all = tmp_path / "all.jsonl"
    res = runner.invoke(app, ["eval", "geneval-score", str(run_dir / "detections.jsonl"), "--out",
                              str(out_all), "--threshold", "0", "--counting-threshold", "0",
                              "--clip", "tiny"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["n_images"] == 12 and set(TAGS) <= set(summary)
    rows = [json.loads(x) for x in out_all.read_text().splitlines()]
    assert len(rows) == 12
    # Threshold 0 keeps every candidate of the prompt's classes; threshold 1 keeps none.
    assert any(json.loads(r["details"]) for r in rows)
    out_none = tmp_path / "none.jsonl"
    res = runner.invoke(app, ["eval", "geneval-score", str(run_dir / "detections.jsonl"), "--out",
                              str(out_none), "--threshold", "1", "--counting-threshold", "1",
                              "--max-objects", "3", "--nms-threshold", "0.5",
                              "--position-threshold", "0.2"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["overall"] == 0.0
    assert all(json.loads(r["details"]) == {} for r in map(json.loads, out_none.read_text().splitlines()))
    bad = runner.invoke(app, ["eval", "geneval-score", str(tmp_path / "missing.jsonl"), "--out",
                              str(tmp_path / "r.jsonl")])
    assert bad.exit_code == 2 and "missing.jsonl" in bad.output
    bad = runner.invoke(app, ["eval", "geneval-score", str(run_dir / "detections.jsonl"), "--out",
                              str(tmp_path / "r.jsonl"), "--threshold", "2"])
    assert bad.exit_code == 2 and "threshold=2.0" in bad.output
    for precision, why in (("amp", "official fp16 autocast on CUDA"), ("bf16", "'bf16': use one of amp, fp32")):
        bad = runner.invoke(app, ["eval", "geneval-score", str(run_dir / "detections.jsonl"), "--out",
                                  str(tmp_path / "r.jsonl"), "--precision", precision])
        assert bad.exit_code == 2 and why in bad.output and "Traceback" not in bad.output, bad.output
    assert not (tmp_path / "r.jsonl").exists()


def test_report_command(run_dir, tmp_path):
    from flows.cli import app

    html = (run_dir / "report.html").read_bytes()
    (run_dir / "report.html").unlink()
    res = CliRunner().invoke(app, ["report", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert (run_dir / "report.html").read_bytes() == html
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "no config.json" in res.output


def test_flow_through_prefect_posts_artifacts(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.evaluate import geneval_flow

    out = tmp_path / "flow"
    state = geneval_flow(generator="noise", out=str(out), limit=2, n_images=1, size=64,
                         detector="tiny", clip="tiny", options={"threshold": "0.5"},
                         return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary == json.loads((out / "summary.json").read_text())
    assert json.loads((out / "config.json").read_text())["options"]["threshold"] == 0.5
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    by_key = {a.key: a for a in arts}
    assert by_key["geneval-report"].type == "markdown"
    assert "data:image/png;base64," in by_key["geneval-report"].data
    table = by_key["geneval-per-tag-results"]
    assert table.type == "table"
    cells = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {r["tag"] for r in cells} == set(TAGS)
