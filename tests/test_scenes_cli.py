"""Scenes world: `nexus-gen scenes sample` and `nexus-gen scenes prompts`."""
from __future__ import annotations

import json
import re

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from nexus_gen.scenes.prompts import generate_prompts, to_jsonl

runner = CliRunner()


def test_sample_writes_a_deterministic_contact_sheet(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        res = runner.invoke(app, ["scenes", "sample", "--n", "4", "--out", str(out), "--size", "96"])
        assert res.exit_code == 0, res.output
    sheet = Image.open(a / "contact_sheet.png")
    assert sheet.mode == "RGB" and sheet.width >= 2 * 2 * 96 and sheet.height >= 2 * 96
    assert (a / "contact_sheet.png").read_bytes() == (b / "contact_sheet.png").read_bytes()
    records = json.loads((a / "sample.json").read_text(encoding="utf-8"))
    assert len(records) == 4
    for r in records:
        assert r["edit_type"] in ("add", "remove", "style")
        assert r["instruction"] and r["reverse_instruction"] and r["instruction_zh"]
        assert r["source_caption"].endswith("background")
    # the sheet is not blank: scene pixels and dark text pixels are both there
    px = np.asarray(sheet)
    assert (px.min(axis=2) < 40).sum() > 500 and (px.std(axis=(0, 1)) > 10).all()


def test_sample_rejects_bad_options_before_work(tmp_path):
    res = runner.invoke(app, ["scenes", "sample", "--n", "0", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "'--n'" in res.output and ">=1" in res.output
    assert not (tmp_path / "x").exists()


def test_prompts_command_writes_the_generator_output(tmp_path):
    out = tmp_path / "p.jsonl"
    res = runner.invoke(app, ["scenes", "prompts", "--out", str(out), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8") == to_jsonl(generate_prompts(3))


def test_prompts_never_writes_into_the_package_by_default(tmp_path, monkeypatch):
    import nexus_gen.scenes.prompts as scenes_prompts

    # a stand-in for the shipped file, so a regression cannot overwrite the real one
    shipped = tmp_path / "pkg" / "evaluation_metadata.jsonl"
    shipped.parent.mkdir()
    shipped.write_bytes(scenes_prompts.SHIPPED.read_bytes())
    monkeypatch.setattr(scenes_prompts, "SHIPPED", shipped)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    res = runner.invoke(app, ["scenes", "prompts", "--seed", "7"])
    assert res.exit_code == 2 and "--out" in res.output
    assert shipped.read_bytes() == scenes_prompts.SHIPPED.read_bytes() == to_jsonl(generate_prompts(0)).encode()
    assert list(work.iterdir()) == []
    res = runner.invoke(app, ["scenes", "prompts", "-o", "p.jsonl", "--seed", "7"])
    assert res.exit_code == 0, res.output
    assert (work / "p.jsonl").read_text(encoding="utf-8") == to_jsonl(generate_prompts(7))


def test_prompts_into_a_folder_is_one_clear_line(tmp_path):
    res = runner.invoke(app, ["scenes", "prompts", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert res.output.strip() == (f"error: --out {tmp_path} is a directory: give a file path, "
                                  f"e.g. {tmp_path / 'prompts.jsonl'}")
    assert list(tmp_path.iterdir()) == []


def test_scenes_help_names_only_commands_that_exist():
    res = runner.invoke(app, ["scenes", "--help"], terminal_width=200)
    assert res.exit_code == 0
    listed = set(re.findall(r"^\S*\s+(\w+)\s{2,}", res.output.split("Commands")[1], flags=re.M))
    assert listed == {"sample", "prompts"}
    words = set(re.findall(r"\w+", res.output.split("Options")[0]))
    assert "inspect" not in words
