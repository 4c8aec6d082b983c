"""Exports: the reference / ms-swift jsonl and DiffSynth-Studio metadata.csv, read back the way those
trainers read them (pandas for DiffSynth: no NaN cells, every path exists, text survives)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_fixtures import PHOTOS, cli, convert, edit_row, flat, gen_row, last_json, pixels, samples, und_row, \
    write_jsonl, write_photo

from nexus_gen.data.export import export

NASTY = [
    'a red car, parked by the sea',
    'she said "hello", then left',
    "line one\nline two\r\nline three",
    "  leading and trailing spaces  ",
    "一只橘猫，坐在窗台上",
    "comma,quote\",semicolon;tab\there",
    "=cmd|' /C calc'!A0",
    "#hash at the start",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("exp")
    for i, name in enumerate(PHOTOS):
        write_photo(d / "imgs" / f"{name}.png", name, size=32 + 4 * i)
    write_photo(d / "imgs" / "coffee.jpg", "coffee", "JPEG", size=36)
    rows = [und_row("u0", "astronaut.png")]
    for i, p in enumerate(NASTY):
        rows.append(gen_row(f"g{i}", f"{PHOTOS[i % 4]}.png", prompt=p))
        rows.append(edit_row(f"e{i}", f"{PHOTOS[i % 4]}.png", "coffee.jpg", instruction=p))
    src = write_jsonl(d / "in.jsonl", rows)
    out = d / "shards"
    counts = convert("nexus-gen-jsonl", src, out, "--images-root", d / "imgs")
    assert counts["rejected"] == 0, (out / "rejects.jsonl").read_text()
    return out


def test_diffsynth_csv_reads_back_with_pandas(built, tmp_path):
    exp = tmp_path / "ds"
    res = cli("export", "diffsynth-csv", built, "--out", exp)
    assert res.exit_code == 0, res.output
    summary = last_json(res)
    assert summary["written"] == {"generation": len(NASTY), "editing": len(NASTY)}
    assert summary["skipped"] == {"understanding": 1}
    assert json.loads((exp / "export.json").read_text()) == summary
    by_id = {s["id"]: s for s in samples(built)}

    gen = pd.read_csv(exp / "generation" / "metadata.csv")
    assert list(gen.columns) == ["image", "prompt"]
    assert not gen.isna().any().any()
    assert len(gen) == len(NASTY)
    for i, row in gen.iterrows():
        # prompts survive exactly (the template removed, whitespace inside kept)
        assert row["prompt"] == NASTY[i].strip()
        img = exp / "generation" / row["image"]
        assert not Path(row["image"]).is_absolute() and img.is_file()
        assert np.array_equal(pixels(img.read_bytes()), pixels(by_id[f"g{i}"]["images"][0]["bytes"]))

    ed = pd.read_csv(exp / "editing" / "metadata.csv")
    assert list(ed.columns) == ["image", "prompt", "nexus_gen_reference_image"]
    assert not ed.isna().any().any()
    for i, row in ed.iterrows():
        assert row["prompt"] == NASTY[i].strip()
        s = by_id[f"e{i}"]
        target, source = exp / "editing" / row["image"], exp / "editing" / row["nexus_gen_reference_image"]
        assert target.is_file() and source.is_file()
        assert np.array_equal(pixels(target.read_bytes()), pixels(s["images"][1]["bytes"]))
        assert np.array_equal(pixels(source.read_bytes()), pixels(s["images"][0]["bytes"]))
    # each distinct image is written once
    assert len(list((exp / "editing" / "images").rglob("*.*"))) == len(set(ed["image"]) | set(ed["nexus_gen_reference_image"]))
    assert not list(exp.rglob(".*.tmp"))


def test_nexus_gen_jsonl_export_paths_relative_to_out(built, tmp_path):
    exp = tmp_path / "j"
    res = cli("export", "nexus-gen-jsonl", built, "--out", exp)
    assert res.exit_code == 0, res.output
    rows = [json.loads(ln) for ln in (exp / "data.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1 + 2 * len(NASTY)
    by_id = {s["id"]: s for s in samples(built)}
    for r in rows:
        s = by_id[r["id"]]
        assert r["messages"] == s["messages"] and r["source"] == s["source"]
        assert len(r["images"]) == len(s["images"])
        for p, im in zip(r["images"], s["images"]):
            assert not Path(p).is_absolute() and (exp / p).is_file()
            assert np.array_equal(pixels((exp / p).read_bytes()), pixels(im["bytes"]))
    # a multi-line prompt stays on one jsonl line
    assert (exp / "data.jsonl").read_text(encoding="utf-8").count("\n") == len(rows)


def test_diffsynth_export_never_writes_a_cell_pandas_reads_as_missing(tmp_path):
    """An empty prompt or one pandas reads as NaN ("NA", "None", "null", ...) would fail
    DiffSynth's loader: such rows are left out and counted, the rest exported."""
    imgs = tmp_path / "imgs"
    write_photo(imgs / "a.png", "astronaut", size=16)
    write_photo(imgs / "b.png", "chelsea", size=16)
    rows = [gen_row("g_ok", "a.png", "a fine prompt"), gen_row("g_na", "a.png", "NA"),
            gen_row("g_none", "b.png", "None"), gen_row("g_empty", "b.png", ""),
            edit_row("e_ok", "a.png", "b.png", "make it a cat"), edit_row("e_null", "a.png", "b.png", "null"),
            edit_row("e_blank", "a.png", "b.png", "")]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "s"
    convert("nexus-gen-jsonl", src, out, "--images-root", imgs)
    assert len(samples(out)) == len(rows)
    exp = tmp_path / "ds"
    summary = export("diffsynth-csv", out, exp)
    gen = pd.read_csv(exp / "generation" / "metadata.csv")
    ed = pd.read_csv(exp / "editing" / "metadata.csv")
    assert not gen.isna().any().any() and not ed.isna().any().any()
    assert list(gen["prompt"]) == ["a fine prompt"] and list(ed["prompt"]) == ["make it a cat"]
    assert summary.written == {"generation": 1, "editing": 1}
    assert sum(summary.skipped.values()) == 5


def test_export_of_understanding_only_writes_no_csv(tmp_path):
    imgs = tmp_path / "imgs"
    write_photo(imgs / "a.png", "rocket", size=16)
    out = tmp_path / "s"
    convert("nexus-gen-jsonl", write_jsonl(tmp_path / "in.jsonl", [und_row("u", "a.png")]), out, "--images-root", imgs)
    summary = export("diffsynth-csv", out, tmp_path / "ds")
    assert summary.skipped == {"understanding": 1} and summary.written == {}
    assert not (tmp_path / "ds" / "generation").exists()


def test_export_bad_options(built, tmp_path):
    res = cli("export", "webdataset", built, "--out", tmp_path / "x")
    assert res.exit_code != 0 and "unknown export format" in flat(res.output)
    res = cli("export", "diffsynth-csv", tmp_path / "missing", "--out", tmp_path / "x")
    assert res.exit_code != 0 and "does not exist" in flat(res.output)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="unknown export format"):
        export("csv", built, tmp_path / "y")


def test_a_failed_export_leaves_no_partial_csv(built, tmp_path, monkeypatch):
    from nexus_gen.data import export as export_mod

    real = export_mod.ImageStore.put
    calls = {"n": 0}

    def flaky(self, data):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full")
        return real(self, data)

    monkeypatch.setattr(export_mod.ImageStore, "put", flaky)
    with pytest.raises(OSError, match="disk full"):
        export("diffsynth-csv", built, tmp_path / "ds")
    assert not list((tmp_path / "ds").rglob("metadata.csv"))
    assert not list((tmp_path / "ds").rglob(".metadata.csv.tmp"))


def test_export_out_that_is_a_file_fails_clearly(built, tmp_path):
    out = tmp_path / "file"
    out.write_text("keep me")
    res = cli("export", "nexus-gen-jsonl", built, "--out", out)
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), repr(res.exception)
    assert "not a directory" in flat(res.output) and out.read_text() == "keep me"
