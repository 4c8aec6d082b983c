"""`convert` inputs: several files, globs, folders and `datasets` folders; json arrays streamed;
sizes with decimal and binary units; a run that accepts nothing is an error with a hint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_fixtures import (cli, convert, encode, flat, gen_row, last_json, photo, pixels, rejects, samples, und_row,
                           write_jsonl, write_photo)
from nexus_gen.data.shards import read_manifest


def convert_many(fmt: str, inputs: list, out: Path, *extra) -> dict:
    """`nexus-gen convert FMT INPUT... --out OUT` that must succeed; returns the counts line."""
    res = cli("convert", fmt, *inputs, "--out", out, *extra)
    assert res.exit_code == 0, f"convert failed ({res.exit_code}): {res.output}\n{res.exception!r}"
    counts = last_json(res)
    assert counts["input"] == counts["accepted"] + counts["rejected"]
    return counts

from nexus_gen.data.shards import parse_byte_size


def test_shard_size_units_follow_pydantic_bytesize(tmp_path, monkeypatch):
    """MB is 10^6 bytes and MiB 2^20 (as `pydantic.ByteSize` reads them), on the CLI too."""
    assert parse_byte_size("500MB") == 500 * 10**6
    assert parse_byte_size("512MiB") == 512 * 2**20
    assert parse_byte_size("1GB") == 10**9 and parse_byte_size("1GiB") == 2**30
    assert parse_byte_size("2kb") == 2000 and parse_byte_size("2KiB") == 2048
    assert parse_byte_size("1048576") == 1048576
    for bad in ("lots", "-5MB", "0", "infMB"):
        with pytest.raises(ValueError):
            parse_byte_size(bad)

    import nexus_gen.data.convert as conv

    seen = []
    real = conv.run_conversion

    def spy(*args, **kwargs):
        seen.append(kwargs["shard_bytes"])
        return real(*args, **kwargs)

    monkeypatch.setattr(conv, "run_conversion", spy)
    write_photo(tmp_path / "a.png", "rocket", size=16)
    src = write_jsonl(tmp_path / "in.jsonl", [gen_row("g", "a.png")])
    for size in ("3MB", "3MiB"):
        res = cli("convert", "nexus-gen-jsonl", src, "--out", tmp_path / size, "--shard-size", size)
        assert res.exit_code == 0, res.output
    assert seen == [3_000_000, 3 * 1024 * 1024]


# --- several inputs: files, globs, folders ------------------------------------------------------

def _images(d: Path) -> Path:
    for name in ("astronaut", "chelsea", "coffee"):
        write_photo(d / f"{name}.png", name, size=16)
    return d


def _row(sid: str, image: str) -> dict:
    """An understanding record without a source of its own (the input's default applies)."""
    return {k: v for k, v in und_row(sid, image).items() if k != "source"}


def test_several_files_a_glob_and_a_folder_make_one_build_with_right_locations(tmp_path):
    imgs = _images(tmp_path / "imgs")
    write_jsonl(tmp_path / "a" / "coco.jsonl", [_row("c1", "astronaut.png"), {"id": "bad"},
                                                _row("c2", "coffee.png")])
    write_jsonl(tmp_path / "a" / "vg.jsonl", [{"id": "bad2"}, _row("v1", "chelsea.png")])
    write_jsonl(tmp_path / "b" / "coco.jsonl", [_row("c1", "missing.png"), _row("b1", "chelsea.png")])
    runs = {
        "files": [tmp_path / "a" / "coco.jsonl", tmp_path / "a" / "vg.jsonl", tmp_path / "b" / "coco.jsonl"],
        "glob+folder": [str(tmp_path / "a" / "*.jsonl"), tmp_path / "b"],
    }
    trees = []
    for name, inputs in runs.items():
        out = tmp_path / f"out-{name}"
        counts = convert_many("nexus-gen-jsonl", inputs, out, "--images-root", imgs)
        assert counts == {"input": 7, "accepted": 4, "rejected": 3}
        # two inputs share the name coco.jsonl: each is named by its path below the common folder
        assert [(r["file"], r["line"]) for r in rejects(out)] == [("a/coco.jsonl", 2), ("a/vg.jsonl", 1),
                                                                  ("b/coco.jsonl", 1)]
        assert "duplicate id" not in rejects(out)[2]["reason"]  # the image is missing; it is read first
        got = [(s["id"], s["source"], s["meta"]["input"]) for s in samples(out)]
        assert got == [("c1", "coco", {"file": "a/coco.jsonl", "line": 1}),
                       ("c2", "coco", {"file": "a/coco.jsonl", "line": 3}),
                       ("v1", "vg", {"file": "a/vg.jsonl", "line": 2}),
                       ("b1", "coco", {"file": "b/coco.jsonl", "line": 2})]
        man = read_manifest(out)
        assert man["converted_from"]["inputs"] == ["a/coco.jsonl", "a/vg.jsonl", "b/coco.jsonl"]
        trees.append({p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".parquet"})
    assert trees[0] == trees[1]  # the same inputs however named give the same bytes


def test_ids_across_inputs_are_deterministic_and_duplicates_are_rejects(tmp_path):
    imgs = _images(tmp_path / "imgs")
    one = tmp_path / "one.csv"
    one.write_text("image,caption\nastronaut.png,a man in a suit\ncoffee.png,a cup\n")
    two = tmp_path / "two.csv"
    two.write_text("image,caption\nastronaut.png,a man in a suit\nchelsea.png,a cat\n")
    outs = []
    for k in range(2):
        out = tmp_path / f"o{k}"
        assert convert_many("captions", [one, two], out, "--images-root", imgs) == {"input": 4, "accepted": 4, "rejected": 0}
        outs.append(out)
    a, b = samples(outs[0]), samples(outs[1])
    assert [s["id"] for s in a] == [s["id"] for s in b]
    # the same row in two files of different sources gives two samples with their own ids
    assert [s["source"] for s in a] == ["one", "one", "two", "two"]
    assert a[0]["id"] != a[2]["id"] and a[0]["id"].startswith("one_") and a[2]["id"].startswith("two_")


def test_default_source_of_shard_files_is_the_dataset_folder(tmp_path):
    import pyarrow as pa

    imgs = _images(tmp_path / "MagicBrush" / "images")
    data = tmp_path / "MagicBrush" / "data"
    data.mkdir()
    for k, (src, tgt) in enumerate([("astronaut.png", "coffee.png"), ("chelsea.png", "coffee.png")]):
        pq.write_table(pa.table({"source_img": [f"images/{src}"], "target_img": [f"images/{tgt}"],
                                 "instruction": [f"edit {k}"]}).rename_columns(
                                     ["source_image", "target_image", "instruction"]),
                       data / f"train-0000{k}-of-00002.parquet")
    out = tmp_path / "o"
    assert convert("edit-pairs", tmp_path / "MagicBrush", out)["accepted"] == 2
    got = samples(out)
    assert {s["source"] for s in got} == {"MagicBrush"}
    assert [s["meta"]["input"] for s in got] == [{"file": "train-00000-of-00002.parquet", "line": 1},
                                                 {"file": "train-00001-of-00002.parquet", "line": 1}]


def test_input_names_that_match_nothing_fail_before_any_work(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no table here")
    for arg, needle in ((empty, "holds no table file"), (str(tmp_path / "*.parquet"), "no input matches"),
                        (tmp_path / "gone.jsonl", "does not exist")):
        out = tmp_path / "o"
        res = cli("convert", "llava", arg, "--out", out)
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
        assert needle in flat(res.stderr) and str(Path(arg).name) in res.stderr
        assert not out.exists()


# --- datasets folders and arrow files -----------------------------------------------------------

def _image_struct(name: str) -> dict:
    return {"bytes": encode(photo(name, 16), "PNG"), "path": f"{name}.png"}


def test_a_datasets_save_to_disk_folder_converts_with_its_image_structs(tmp_path):
    import datasets

    rows = {"image": [_image_struct("astronaut"), _image_struct("rocket")], "caption": ["a man", "a rocket"]}
    feats = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(rows, features=feats)
    ds.save_to_disk(str(tmp_path / "rockets"))
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "splits"))
    out = tmp_path / "o"
    counts = convert("captions", tmp_path / "rockets", out)
    assert counts == {"input": 2, "accepted": 2, "rejected": 0}
    got = samples(out)
    assert [s["source"] for s in got] == ["rockets", "rockets"]
    assert [s["meta"]["input"] for s in got] == [{"file": "rockets", "line": 1}, {"file": "rockets", "line": 2}]
    for s, want in zip(got, ("astronaut", "rocket")):
        assert np.array_equal(pixels(s["images"][0]["bytes"]), np.asarray(photo(want, 16).convert("RGB")))
    out2 = tmp_path / "o2"
    assert convert("captions", tmp_path / "splits", out2) == {"input": 3, "accepted": 2, "rejected": 1}
    (dup,) = rejects(out2)
    assert (dup["file"], dup["line"]) == ("splits/test", 1) and "duplicate id" in dup["reason"]
    # the arrow file inside the folder is an input of its own too
    arrow = sorted((tmp_path / "rockets").glob("*.arrow"))
    assert convert_many("captions", arrow, tmp_path / "o3")["accepted"] == 2


def test_a_datasets_folder_without_a_needed_column_fails_before_any_work(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"img": ["a.png"], "words": ["x"]}).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "o"
    res = cli("convert", "captions", tmp_path / "ds", "--out", out)
    assert res.exit_code == 2 and "[img, words]" in res.stderr and "caption (one of" in res.stderr
    assert not out.exists()


# --- headers: a wrong one is a config error ----------------------------------------------------

def test_every_table_header_is_checked_before_any_work(tmp_path):
    """csv, tsv and parquet headers lacking a needed column stop the run before anything is
    written, even when an earlier input is fine; the message suggests the format that fits."""
    import pyarrow as pa

    imgs = _images(tmp_path / "imgs")
    good = tmp_path / "good.csv"
    good.write_text("image,caption\nastronaut.png,a man\n")
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("source_image\ttarget_image\tinstruction\nastronaut.png\tcoffee.png\tmake it a cup\n")
    par = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"file_name": ["astronaut.png"], "label": [3]}), par)
    for bad, cols, hint in ((tsv, "[source_image, target_image, instruction]", "try `nexus-gen convert edit-pairs"),
                            (par, "[file_name, label]", "")):
        out = tmp_path / f"o-{bad.suffix}"
        res = cli("convert", "captions", good, bad, "--out", out, "--images-root", imgs)
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
        (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert bad.name in line and cols in line and "caption (one of caption, text" in line
        assert hint in line
        assert not out.exists()


# --- nothing accepted: an error that names the likely cause ------------------------------------

def test_a_file_of_another_format_exits_non_zero_with_a_hint(tmp_path):
    imgs = _images(tmp_path / "imgs")
    llava = tmp_path / "llava.json"
    llava.write_text(json.dumps([{"id": f"q{i}", "image": "astronaut.png",
                                  "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                    {"from": "gpt", "value": "A man."}]} for i in range(3)]))
    out = tmp_path / "o"
    res = cli("convert", "nexus-gen-jsonl", llava, "--out", out, "--images-root", imgs)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert last_json(res) == {"input": 3, "accepted": 0, "rejected": 3}
    err = flat(res.stderr)
    assert "missing field 'messages'" in err and "try `nexus-gen convert llava" in err
    # the same file in its own format converts
    assert convert("llava", llava, tmp_path / "o2", "--images-root", imgs)["accepted"] == 3


def test_nothing_accepted_from_mixed_reasons_says_where_to_look(tmp_path):
    imgs = _images(tmp_path / "imgs")
    src = write_jsonl(tmp_path / "in.jsonl", [und_row("a", "nope.png"), {"id": "b"}])
    res = cli("convert", "nexus-gen-jsonl", src, "--out", tmp_path / "o", "--images-root", imgs)
    assert res.exit_code == 1 and "rejects.jsonl" in res.stderr and "nothing accepted" in res.stderr


def test_the_convert_flow_fails_when_nothing_is_accepted(tmp_path):
    from flows.convert import convert_task

    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "x", "conversations": []}])
    with pytest.raises(ValueError, match="try `nexus-gen convert llava"):
        convert_task.fn("nexus-gen-jsonl", str(src), str(tmp_path / "o"), None, None, None, "header", 1 << 20)


# --- json arrays are streamed -------------------------------------------------------------------

def test_a_json_array_is_read_item_by_item_not_loaded_whole(tmp_path):
    """Reading a ~6 MB json array allocates a small fraction of the file at any time (the whole
    file read at once would allocate more than the file)."""
    import tracemalloc

    from nexus_gen.data.records import read_records

    item = und_row("x", "astronaut.png", answer="word " * 200)
    src = tmp_path / "big.json"
    with open(src, "w") as f:
        f.write("[\n")
        f.write(",\n".join(json.dumps({**item, "id": f"q{i}"}) for i in range(6000)))
        f.write("\n]\n")
    size = src.stat().st_size
    assert size > 6e6
    tracemalloc.start()
    n = 0
    for rec in read_records(src):
        assert rec.data["id"] == f"q{n}" and rec.location.line == n + 1
        n += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 6000
    assert peak < size / 10, (peak, size)


def test_json_array_items_keep_json_semantics(tmp_path):
    """Streamed items are what `json.loads` gives: floats, nested objects, unicode, null."""
    from nexus_gen.data.records import read_records

    items = [{"a": 1, "b": 2.5, "c": [1, {"d": None}], "e": "猫 \u00e9", "f": True}, {"g": 1e-7}, 3, "s", None]
    src = tmp_path / "x.json"
    src.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    recs = list(read_records(src))
    assert [r.data for r in recs[:2]] == items[:2]
    assert [r.error for r in recs[2:]] == ["item 3 is a int, not an object", "item 4 is a str, not an object",
                                           "item 5 is a NoneType, not an object"]
