"""The reference's own examples: conversion with task/language detection, the CLI's counts line,
export round trip to the reference jsonl, determinism, and reading shards with `datasets`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import cli, convert, last_json, pixels, rejects, samples

from nexus_gen.data.templates import (EDIT_ASSISTANT, GEN_ASSISTANT, GEN_USER, SYSTEM_PROMPT,
                                      detect_language, detect_task, editing_messages,
                                      generation_messages, understanding_messages)


@pytest.fixture(scope="module")
def reference_build(example_dir: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ref") / "shards"
    counts = convert("nexus-gen-jsonl", example_dir / "llm_dataset.jsonl", out, "--images-root", example_dir)
    return out, counts


def _reference_lines(example_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (example_dir / "llm_dataset.jsonl").read_text(encoding="utf-8").splitlines()
            if ln.strip()]


def test_reference_jsonl_converts_with_task_and_language(reference_build, example_dir):
    out, counts = reference_build
    assert counts == {"input": 5, "accepted": 5, "rejected": 0}
    got = {s["id"]: s for s in samples(out)}
    assert got["184854"]["task"] == "understanding" and got["184854"]["language"] == "en"
    assert got["EliGen_110152"]["task"] == "generation" and got["EliGen_110152"]["language"] == "en"
    assert got["zh_EliGen_110152"]["task"] == "generation" and got["zh_EliGen_110152"]["language"] == "zh"
    edit_id = "ImagePulseChangeAddRemove_1744684603760596165_1744696944297404542_0"
    assert got[edit_id]["task"] == "editing" and got[edit_id]["language"] == "en"
    assert got["zh_" + edit_id]["task"] == "editing" and got["zh_" + edit_id]["language"] == "zh"
    assert rejects(out) == []
    # messages, sources and image paths kept exactly; image bytes embedded
    for line in _reference_lines(example_dir):
        s = got[line["id"]]
        assert s["source"] == line["source"]
        assert s["messages"] == line["messages"]
        assert [im["path"] for im in s["images"]] == line["images"]
        for im, rel in zip(s["images"], line["images"]):
            assert np.array_equal(pixels(im["bytes"]), pixels((example_dir / rel).read_bytes()))
        assert s["meta"]["input"]["file"] == "llm_dataset.jsonl"


def test_cli_last_line_is_counts_json(example_dir, tmp_path):
    res = cli("convert", "nexus-gen-jsonl", example_dir / "llm_dataset.jsonl", "--images-root", example_dir,
              "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    last = res.stdout.strip().splitlines()[-1]
    assert json.loads(last) == {"input": 5, "accepted": 5, "rejected": 0}


def test_templates_are_the_reference_ones_exactly(example_dir):
    lines = {ln["id"]: ln for ln in _reference_lines(example_dir)}
    gen, zh_gen = lines["EliGen_110152"], lines["zh_EliGen_110152"]
    assert generation_messages("A vibrant street with colorful houses and people walking.") == gen["messages"]
    assert generation_messages("一条充满活力的街道，两旁是色彩斑斓的房屋，行人来往穿梭。", "zh") == zh_gen["messages"]
    edit_id = "ImagePulseChangeAddRemove_1744684603760596165_1744696944297404542_0"
    assert editing_messages("Change the rusty frying pan to a steaming pot with water pouring into it.") \
        == lines[edit_id]["messages"]
    assert editing_messages("把生锈的煎锅换成热气腾腾、正在往里倒水的锅。", "zh") == lines["zh_" + edit_id]["messages"]
    und = lines["184854"]["messages"]
    q = und[0]["content"].split("\n", 1)[1]
    assert understanding_messages(q, und[1]["content"]) == und
    assert SYSTEM_PROMPT == "You are a helpful assistant."
    assert GEN_USER["en"].format(prompt="p") == "Generate an image according to the following description: p"
    assert GEN_USER["zh"].format(prompt="p") == "根据以下描述生成一张图像：p"
    assert GEN_ASSISTANT == {"en": "Here is an image based on the description: <image>",
                             "zh": "这是根据您的描述生成的图像：<image>"}
    assert EDIT_ASSISTANT == {"en": "Here is the image: <image>", "zh": "以下为编辑后的图像：<image>"}
    with pytest.raises(ValueError):
        generation_messages("p", "fr")


def test_detection_functions():
    assert detect_task(generation_messages("x")) == "generation"
    assert detect_task(editing_messages("x")) == "editing"
    assert detect_task(understanding_messages("q", "a")) == "understanding"
    assert detect_language(editing_messages("把天空变红")) == "zh"
    assert detect_language(editing_messages("make the sky red")) == "en"
    # the assistant's language does not decide: the instruction does
    assert detect_language([{"role": "user", "content": "<image>\nwhat?"},
                            {"role": "assistant", "content": "一只猫"}]) == "en"


def test_round_trip_through_reference_jsonl_export(reference_build, example_dir, tmp_path):
    out, _ = reference_build
    exp = tmp_path / "export"
    res = cli("export", "nexus-gen-jsonl", out, "--out", exp)
    assert res.exit_code == 0, res.output
    summary = last_json(res)
    assert summary["samples"] == 5
    rows = [json.loads(ln) for ln in (exp / "data.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [set(r) for r in rows] == [{"id", "source", "images", "messages"}] * 5
    for r in rows:  # paths are relative to the export folder and exist
        for p in r["images"]:
            assert not Path(p).is_absolute() and (exp / p).is_file()
    again = tmp_path / "again"
    counts = convert("nexus-gen-jsonl", exp / "data.jsonl", again, "--images-root", exp)
    assert counts == {"input": 5, "accepted": 5, "rejected": 0}
    first, second = samples(out), samples(again)
    assert [s["id"] for s in first] == [s["id"] for s in second]
    assert [s["source"] for s in first] == [s["source"] for s in second]
    assert [s["messages"] for s in first] == [s["messages"] for s in second]
    assert [(s["task"], s["language"]) for s in first] == [(s["task"], s["language"]) for s in second]
    for a, b in zip(first, second):
        assert len(a["images"]) == len(b["images"])
        for ia, ib in zip(a["images"], b["images"]):
            assert np.array_equal(pixels(ia["bytes"]), pixels(ib["bytes"]))
    # and the same pixels as the reference's own files
    ref = {ln["id"]: ln for ln in _reference_lines(example_dir)}
    for s in second:
        for im, rel in zip(s["images"], ref[s["id"]]["images"]):
            assert np.array_equal(pixels(im["bytes"]), pixels((example_dir / rel).read_bytes()))


def test_absolute_paths_export(reference_build, tmp_path):
    out, _ = reference_build
    res = cli("export", "nexus-gen-jsonl", out, "--out", tmp_path / "abs", "--absolute-paths")
    assert res.exit_code == 0, res.output
    rows = [json.loads(ln) for ln in (tmp_path / "abs" / "data.jsonl").read_text(encoding="utf-8").splitlines()]
    paths = [p for r in rows for p in r["images"]]
    assert paths and all(Path(p).is_absolute() and Path(p).is_file() for p in paths)


def test_conversion_is_deterministic(example_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    convert("nexus-gen-jsonl", example_dir / "llm_dataset.jsonl", a, "--images-root", example_dir)
    convert("nexus-gen-jsonl", example_dir / "llm_dataset.jsonl", b, "--images-root", example_dir)
    names_a = sorted(p.name for p in a.iterdir())
    assert names_a == sorted(p.name for p in b.iterdir())
    assert "manifest.json" in names_a and any(n.endswith(".parquet") for n in names_a)
    for n in names_a:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_huggingface_datasets_loads_shards(reference_build, example_dir):
    import datasets
    from PIL import Image

    out, _ = reference_build
    files = sorted(str(p) for p in out.glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(ds) == 5
    assert isinstance(ds.features["images"], datasets.List)
    assert isinstance(ds.features["images"].feature, datasets.Image)
    row = ds[3]
    assert row["task"] == "editing"
    assert isinstance(row["messages"], list) and isinstance(row["messages"][0], dict)
    assert set(row["messages"][0]) == {"role", "content"}
    assert len(row["images"]) == 2 and all(isinstance(im, Image.Image) for im in row["images"])
    with Image.open(example_dir / "assets/example_datasets/images/edit_0_0.png") as src:
        assert row["images"][0].size == src.size
    assert json.loads(row["meta"])["input"]["line"] == 4
