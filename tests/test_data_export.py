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


def diffsynth_rows(path: Path) -> list[dict]:
    """Metadata rows as DiffSynth-Studio 2.x `UnifiedDataset.load_metadata` reads them (read in
    diffsynth 2.1.12): `.jsonl` line by line with `json.loads(line.strip())` from a file opened
    in the locale's default encoding, anything else with `pandas.read_csv` and `iloc[i].to_dict()`."""
    if path.suffix == ".jsonl":
        with open(path, "r") as f:
            return [json.loads(line.strip()) for line in f]
    df = pd.read_csv(path)
    return [df.iloc[i].to_dict() for i in range(len(df))]


def _prompt_build(tmp_path: Path, gen_prompts: list[str], edit_prompts: list[str]) -> Path:
    imgs = tmp_path / "imgs"
    write_photo(imgs / "a.png", "astronaut", size=16)
    write_photo(imgs / "b.png", "chelsea", size=16)
    rows = [gen_row(f"g{i}", "a.png", p) for i, p in enumerate(gen_prompts)]
    rows += [edit_row(f"e{i}", "a.png", "b.png", p) for i, p in enumerate(edit_prompts)]
    out = tmp_path / "s"
    convert("nexus-gen-jsonl", write_jsonl(tmp_path / "in.jsonl", rows), out, "--images-root", imgs)
    return out


def test_diffsynth_export_never_writes_a_cell_pandas_reads_as_missing(tmp_path):
    """A prompt pandas reads as NaN ("NA", "None", "null") is kept as text in metadata.jsonl,
    and metadata.csv, which would give DiffSynth a NaN, is not written; empty prompts are
    left out and counted."""
    out = _prompt_build(tmp_path, ["a fine prompt", "NA", "None", ""], ["make it a cat", "null", ""])
    assert len(samples(out)) == 7
    exp = tmp_path / "ds"
    summary = export("diffsynth-csv", out, exp)
    assert [r["prompt"] for r in diffsynth_rows(exp / "generation" / "metadata.jsonl")] == ["a fine prompt", "NA", "None"]
    assert [r["prompt"] for r in diffsynth_rows(exp / "editing" / "metadata.jsonl")] == ["make it a cat", "null"]
    assert not list(exp.rglob("metadata.csv"))
    assert summary.written == {"generation": 3, "editing": 2}
    assert summary.skipped == {"generation (empty prompt)": 1, "editing (empty prompt)": 1}
    assert len(summary.warnings) == 2 and all("metadata.jsonl" in w for w in summary.warnings)


@pytest.mark.parametrize("gen_prompts,edit_prompts", [
    (["1984", "42", "007"], ["3.14", "1e3"]),          # numbers: pandas gives int64 / float64
    (["True", "False", "TRUE"], ["true", "false"]),  # booleans: pandas gives bool
])
def test_diffsynth_export_gives_number_and_boolean_like_prompts_as_text(tmp_path, gen_prompts, edit_prompts):
    out = _prompt_build(tmp_path, gen_prompts, edit_prompts)
    exp = tmp_path / "ds"
    res = cli("export", "diffsynth-csv", out, "--out", exp)
    assert res.exit_code == 0, res.output
    for task, prompts in (("generation", gen_prompts), ("editing", edit_prompts)):
        rows = diffsynth_rows(exp / task / "metadata.jsonl")
        assert [r["prompt"] for r in rows] == prompts
        assert all(type(v) is str for r in rows for v in r.values())
        assert all((exp / task / r["image"]).is_file() for r in rows)
        # the csv would hand DiffSynth numbers: it is not written, and the user is told which file to use
        assert not (exp / task / "metadata.csv").exists()
        assert f"{task}/metadata.jsonl" in flat(res.stderr)
    summary = last_json(res)
    assert summary["files"] == ["generation/metadata.jsonl", "editing/metadata.jsonl"]
    # the jsonl is plain ASCII, so DiffSynth's open() without an encoding reads it in any locale
    (exp / "generation" / "metadata.jsonl").read_bytes().decode("ascii")


def test_diffsynth_csv_is_kept_when_pandas_reads_it_back_exactly(tmp_path):
    prompts = ["1984", "a cat on a sofa", "True", "一只橘猫"]  # a text prompt keeps the column text
    out = _prompt_build(tmp_path, prompts, [])
    exp = tmp_path / "ds"
    summary = export("diffsynth-csv", out, exp)
    assert summary.warnings == [] and summary.files == ["generation/metadata.jsonl", "generation/metadata.csv"]
    assert [r["prompt"] for r in diffsynth_rows(exp / "generation" / "metadata.csv")] == prompts
    assert diffsynth_rows(exp / "generation" / "metadata.csv") == diffsynth_rows(exp / "generation" / "metadata.jsonl")


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
    assert not [p for p in (tmp_path / "ds").rglob("*") if p.is_file()]


@pytest.mark.parametrize("fmt", ["nexus-gen-jsonl", "diffsynth-csv"])
def test_an_export_failing_midway_leaves_no_index_and_no_partial_images(built, tmp_path, monkeypatch, fmt):
    """A failure after some images are written (disk full) removes the temporary index and the
    images this run wrote; an image that was already in the folder stays."""
    from nexus_gen.data import export as export_mod

    exp = tmp_path / "exp"
    keep = exp / "images" / "00" / "keep.png"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"an earlier file")
    real = export_mod.ImageStore.put
    calls = {"n": 0}

    def flaky(self, data):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full")
        return real(self, data)

    monkeypatch.setattr(export_mod.ImageStore, "put", flaky)
    with pytest.raises(OSError, match="disk full"):
        export(fmt, built, exp)
    assert calls["n"] > 5
    assert [p for p in exp.rglob("*") if p.is_file()] == [keep]


@pytest.mark.parametrize("fmt", ["nexus-gen-jsonl", "diffsynth-csv"])
def test_export_of_an_empty_or_unreadable_input_fails_in_one_line(tmp_path, fmt):
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    zero = tmp_path / "zero.parquet"
    zero.write_bytes(b"")
    imgs = tmp_path / "imgs"
    write_photo(imgs / "a.png", "rocket", size=16)
    nothing = tmp_path / "nothing"  # a finished build that accepted no sample: no shard
    res = cli("convert", "nexus-gen-jsonl", write_jsonl(tmp_path / "bad.jsonl", [{"id": "x"}]), "--out", nothing)
    assert (nothing / "manifest.json").is_file()
    for shards, needle in ((empty_dir, "no parquet shards"), (zero, "zero.parquet"),
                           (nothing, "no parquet shards")):
        out = tmp_path / f"out-{shards.name}"
        res = cli("export", fmt, shards, "--out", out)
        assert res.exit_code == 2, (shards, res.output, res.exception)
        assert isinstance(res.exception, SystemExit), repr(res.exception)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0] and str(shards.name) in lines[0], res.stderr
        assert not out.exists()


def test_export_out_that_is_a_file_fails_clearly(built, tmp_path):
    out = tmp_path / "file"
    out.write_text("keep me")
    res = cli("export", "nexus-gen-jsonl", built, "--out", out)
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), repr(res.exception)
    assert "not a directory" in flat(res.output) and out.read_text() == "keep me"
