"""`nexus-gen eval editing` end to end: the tiny InstructPix2Pix editor on scenes edits through
the command line and Prefect (resumable, last line JSON, report with gallery, reference numbers
and warnings), and bad inputs that stop before any work with one clear line."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app

TINY = ["--clip", "tiny", "--dino", "tiny"]


def test_tiny_instruct_pix2pix_is_a_real_pipeline_built_offline():
    """(The end-to-end test below loads it through `from_pretrained` and edits with it.)"""
    from nexus_gen.models.tiny import tiny_ip2p_dir

    folder = tiny_ip2p_dir()
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    unet = json.loads((folder / "unet" / "config.json").read_text())
    assert unet["in_channels"] == 8  # noisy latents + the source image's latents


def test_tiny_editor_on_scenes_end_to_end_and_resumed(prefect_harness, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "editing", "--data", "scenes", "--editor", "tiny", "--out", str(out),
            "--limit", "3", "--size", "32", *TINY]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    head = json.loads(res.stdout.strip().splitlines()[-1])
    assert head["items"] == 3 and head["scored"] == 3 and head["skipped"] == 0
    assert set(head) >= {"l1", "l2", "clip_i", "dino", "clip_t", "clip_dir", "success"}
    edited = sorted((out / "edited").glob("*.png"))
    assert len(edited) == 3
    for p in edited:
        with Image.open(p) as im:
            assert im.size == (32, 32) and im.mode == "RGB"  # InstructPix2Pix keeps the source size
    summary = json.loads((out / "summary.json").read_text())
    assert summary["editor_model_id"].startswith("tiny-instruct-pix2pix")
    report = (out / "report.md").read_text()
    for needle in ("Denominator", "3 planned = 3 items + 0 skipped", "Not comparable", "GPT-4o",
                   "7.85", "BAGEL", "Step1X-Edit", "6.7", "report_files/editing_gallery.png"):
        assert needle in report, needle
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 1

    # the same command again: nothing is edited again, every byte of the edits is kept
    before = {p.name: p.read_bytes() for p in edited}
    res2 = CliRunner().invoke(app, args)
    assert res2.exit_code == 0, res2.output
    assert json.loads(res2.stdout.strip().splitlines()[-1]) == head
    assert {p.name: p.read_bytes() for p in sorted((out / "edited").glob("*.png"))} == before
    assert json.loads((out / "summary.json").read_text())["kept"] == 3

    # another editor into the same directory is refused (its edits would mix with these)
    res3 = CliRunner().invoke(app, [*args[:5], "identity", *args[6:]])
    assert res3.exit_code == 2 and "holds another run (differs in: editor)" in res3.output
    # `nexus-gen report RUN` rebuilds the report from the run directory alone
    res4 = CliRunner().invoke(app, ["report", str(out)])
    assert res4.exit_code == 0, res4.output


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_bad_inputs_fail_before_any_work_with_one_line(tmp_path):
    runner = CliRunner()
    base = ["eval", "editing", "--out", str(tmp_path / "run"), *TINY]
    line = _one_line_error(runner.invoke(app, [*base, "--data", "scenes", "--editor", "nexus-gen"]))
    # the published Nexus-Gen is not in the (offline) cache here: said before any work
    assert "nexus-gen:modelscope/Nexus-GenV2 is not in the local Hugging Face cache" in line
    rows = [{"img_id": "1", "turn_index": 1, "source_img": None, "instruction": "a", "target_img": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mb.parquet")
    line = _one_line_error(runner.invoke(app, [*base, "--data", str(tmp_path / "mb.parquet"),
                                               "--editor", "identity"]))
    assert "MagicBrush table" in line and "lacks column(s) mask_img" in line
    line = _one_line_error(runner.invoke(app, [*base, "--data", str(tmp_path / "nope"), "--editor", "identity"]))
    assert "no such file or folder" in line
    line = _one_line_error(runner.invoke(app, [*base, "--data", "scenes", "--editor", "identity",
                                               "--judge", "ftp://x"]))
    assert "--judge" in line
    assert not (tmp_path / "run").exists()
