"""Every input format: llava (json array / jsonl), edit-pairs (parquet with HF image structs, jsonl,
csv), imagepulse, captions (csv / jsonl, en / zh) -- and malformed tables of each."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_fixtures import (PHOTOS, cli, convert, encode, flat, photo, pixels, rejects, samples, write_jsonl,
                           write_photo)

from nexus_gen.data.templates import editing_messages, generation_messages


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    r = tmp_path / "imgs"
    for i, name in enumerate(PHOTOS):
        write_photo(r / f"{name}.png", name, size=32 + 8 * i)
    write_photo(r / "coffee.jpg", "coffee", "JPEG", size=40)
    return r


# --- llava -----------------------------------------------------------------------------------

def _llava(i: int, image="astronaut.png") -> dict:
    return {"id": f"llava_{i}", "image": image,
            "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"},
                              {"from": "gpt", "value": f"Answer {i}."},
                              {"from": "human", "value": "And the colour?"},
                              {"from": "gpt", "value": "Mostly white."}]}


@pytest.mark.parametrize("kind", ["json", "jsonl"])
def test_llava_json_array_and_jsonl(tmp_path, root, kind):
    rows = [_llava(0), _llava(1, "coffee.jpg"), {**_llava(2), "id": 12345},
            {**_llava(3), "conversations": [{"from": "robot", "value": "<image>\nhi"}, {"from": "gpt", "value": "a"}]},
            {**_llava(4), "image": 7},
            {**_llava(5), "conversations": []},
            {**_llava(6), "image": ["astronaut.png", "coffee.jpg"]},  # 2 images, 1 tag
            {"id": "text_only", "conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi"}]},
            {**_llava(8), "conversations": [{"from": "gpt", "value": "<image>\nfirst"}, {"from": "human", "value": "x"}]}]
    if kind == "json":
        src = tmp_path / "llava.json"
        src.write_text(json.dumps(rows), encoding="utf-8")
    else:
        src = write_jsonl(tmp_path / "llava.jsonl", rows)
    out = tmp_path / "o"
    counts = convert("llava", src, out, "--images-root", root)
    assert counts == {"input": 9, "accepted": 4, "rejected": 5}
    got = samples(out)
    assert [s["id"] for s in got] == ["llava_0", "llava_1", "12345", "text_only"]
    s0 = got[0]
    assert s0["task"] == "understanding" and s0["language"] == "en" and s0["source"] == "llava"
    assert [m["role"] for m in s0["messages"]] == ["user", "assistant", "user", "assistant"]
    assert s0["messages"][0]["content"] == "<image>\nWhat is shown?"
    assert np.array_equal(pixels(s0["images"][0]["bytes"]), pixels((root / "astronaut.png").read_bytes()))
    assert got[3]["images"] == []
    reasons = {r["line"]: r["reason"] for r in rejects(out)}
    assert set(reasons) == {4, 5, 6, 7, 9}
    assert "unknown role" in reasons[4] and "'robot'" in reasons[4]
    assert "'image' should be a path" in reasons[5]
    assert "empty" in reasons[6]
    assert "placeholder/image count mismatch" in reasons[7]
    assert "'user' was expected" in reasons[9]


# --- edit pairs ------------------------------------------------------------------------------

def _struct(name: str, size: int = 32) -> dict:
    return {"bytes": encode(photo(name, size), "PNG"), "path": f"orig/{name}.png"}


def _image_struct_type() -> pa.DataType:
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_edit_pairs_parquet_with_hf_image_structs(tmp_path):
    table = pa.table({
        "source_image": pa.array([_struct("astronaut"), _struct("coffee"), None, _struct("rocket")],
                                 type=_image_struct_type()),
        "target_image": pa.array([_struct("chelsea"), _struct("rocket"), _struct("coffee"),
                                  {"bytes": None, "path": None}], type=_image_struct_type()),
        "instruction": ["Turn the astronaut into a cat", "把咖啡换成火箭", "Make it blue", "Make it red"],
        "reverse_instruction": ["Turn the cat into an astronaut", None, None, None],
        "source_caption": ["an astronaut", "一杯咖啡", None, None],
        "target_caption": ["a cat", None, None, None],
    })
    src = tmp_path / "pairs.parquet"
    pq.write_table(table, src)
    out = tmp_path / "o"
    counts = convert("edit-pairs", src, out)
    assert counts == {"input": 5, "accepted": 3, "rejected": 2}
    got = samples(out)
    fwd, rev, zh = got
    assert fwd["messages"] == editing_messages("Turn the astronaut into a cat")
    assert rev["messages"] == editing_messages("Turn the cat into an astronaut")
    assert fwd["task"] == rev["task"] == "editing"
    assert fwd["meta"]["captions"] == ["an astronaut", "a cat"]
    assert rev["meta"]["captions"] == ["a cat", "an astronaut"]
    assert rev["meta"]["pair_id"] == fwd["id"] and rev["id"] == fwd["id"] + "_rev"
    assert fwd["meta"]["reverse_instruction"] == "Turn the cat into an astronaut"
    assert [im["path"] for im in fwd["images"]] == ["orig/astronaut.png", "orig/chelsea.png"]
    assert [im["path"] for im in rev["images"]] == ["orig/chelsea.png", "orig/astronaut.png"]
    assert np.array_equal(pixels(rev["images"][1]["bytes"]), np.asarray(photo("astronaut", 32)))
    # a Chinese instruction: language detected, the Chinese assistant template used
    assert zh["language"] == "zh" and fwd["language"] == "en"
    assert zh["messages"] == editing_messages("把咖啡换成火箭", "zh")
    assert zh["messages"][1]["content"] == "以下为编辑后的图像：<image>"
    reasons = {r["line"]: r["reason"] for r in rejects(out)}
    assert set(reasons) == {3, 4}
    assert "missing source image" in reasons[3]
    assert "neither bytes nor path" in reasons[4]


def test_edit_pairs_language_option_overrides_detection(tmp_path, root):
    src = write_jsonl(tmp_path / "p.jsonl", [{"source_image": "astronaut.png", "target_image": "coffee.png",
                                              "instruction": "make it coffee"}])
    out = tmp_path / "o"
    convert("edit-pairs", src, out, "--images-root", root, "--language", "zh")
    (s,) = samples(out)
    assert s["language"] == "zh" and s["messages"] == editing_messages("make it coffee", "zh")


def test_edit_pairs_csv_and_jsonl_give_the_same_samples(tmp_path, root):
    rows = [
        {"id": "p1", "source_image": "astronaut.png", "target_image": "chelsea.png",
         "instruction": 'Replace the suit with fur, "fluffy", please', "reverse_instruction": "Put the suit back",
         "source_caption": "an astronaut", "target_caption": "a cat"},
        {"id": "p2", "source_image": "coffee.jpg", "target_image": "rocket.png", "instruction": "Make it a rocket"},
    ]
    src_csv = tmp_path / "pairs.csv"
    with open(src_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    src_jsonl = write_jsonl(tmp_path / "pairs.jsonl", rows)
    a, b = tmp_path / "a", tmp_path / "b"
    assert convert("edit-pairs", src_csv, a, "--images-root", root, "--source", "mine") == \
        {"input": 3, "accepted": 3, "rejected": 0}
    assert convert("edit-pairs", src_jsonl, b, "--images-root", root, "--source", "mine")["accepted"] == 3
    sa, sb = samples(a), samples(b)
    assert [s["id"] for s in sa] == ["mine_p1", "mine_p1_rev", "mine_p2"] == [s["id"] for s in sb]
    assert [s["messages"] for s in sa] == [s["messages"] for s in sb]
    assert sa[0]["messages"][0]["content"] == '<image> Replace the suit with fur, "fluffy", please'
    assert sa[2]["meta"]["captions"] == [None, None] and "reverse_instruction" not in sa[2]["meta"]
    assert {s["source"] for s in sa} == {"mine"}
    for x, y in zip(sa, sb):
        assert [im["bytes"] for im in x["images"]] == [im["bytes"] for im in y["images"]]


def test_edit_pairs_csv_malformed(tmp_path, root):
    huge = "a very long caption " * 10000  # 200 kB, over the csv module's default field limit
    src = tmp_path / "bad.csv"
    src.write_text(
        "source_image,target_image,instruction,source_caption\n"
        "astronaut.png,chelsea.png,make it a cat,ok\n"             # 2 good
        "astronaut.png,chelsea.png\n"                               # 3 missing instruction cell
        "astronaut.png,,make it nothing,x\n"                        # 4 empty target
        "astronaut.png,chelsea.png,too,many,cells,here\n"           # 5 too many cells
        "\n"                                                        # 6 blank line
        f"coffee.png,rocket.png,make it a rocket,\"{huge}\"\n"      # 7 huge caption, good
        "rocket.png,coffee.png,\"multi\nline instruction\",x\n"     # 8-9 quoted newline, good (at 8)
        "chelsea.png,astronaut.png,make it a person,x\n",           # 10 good
        encoding="utf-8")
    out = tmp_path / "o"
    counts = convert("edit-pairs", src, out, "--images-root", root)
    assert counts == {"input": 7, "accepted": 4, "rejected": 3}
    got = samples(out)
    assert [s["meta"]["input"]["line"] for s in got] == [2, 7, 8, 10]  # where each record starts
    assert got[1]["meta"]["captions"][0] == huge.strip()
    assert got[2]["messages"][0]["content"] == "<image> multi\nline instruction"
    reasons = {r["line"]: r["reason"] for r in rejects(out)}
    assert set(reasons) == {3, 4, 5}
    assert "missing instruction" in reasons[3]
    assert "missing target image" in reasons[4]
    assert "cells" in reasons[5]


def test_csv_missing_column_fails_before_any_work(tmp_path, root):
    """A header without a column the format needs is a config error: one line naming the file,
    the columns found and the ones expected; nothing is written."""
    src = tmp_path / "nocol.csv"
    src.write_text("source_image,instruction\nastronaut.png,make it red\ncoffee.png,make it blue\n")
    out = tmp_path / "o"
    res = cli("convert", "edit-pairs", src, "--out", out, "--images-root", root)
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert "nocol.csv" in line and "[source_image, instruction]" in line
    assert "target image (one of target_image, edited_image" in line
    assert not out.exists()


def test_csv_that_is_not_utf8_loses_no_row(tmp_path, root):
    src = tmp_path / "latin1.csv"
    src.write_bytes(b"image,caption\nastronaut.png,caf\xe9 au lait\ncoffee.png,second\r\nrocket.png,third\r\n")
    out = tmp_path / "o"
    counts = convert("captions", src, out, "--images-root", root)
    assert counts == {"input": 3, "accepted": 2, "rejected": 1}
    (r,) = rejects(out)
    assert r["line"] == 2 and "UTF-8" in r["reason"]
    assert [s["meta"]["captions"] for s in samples(out)] == [["second"], ["third"]]


def test_values_of_the_wrong_type_in_jsonl(tmp_path, root):
    src = write_jsonl(tmp_path / "p.jsonl", [
        {"source_image": "astronaut.png", "target_image": "coffee.png", "instruction": 5},
        {"source_image": 3, "target_image": "coffee.png", "instruction": "x"},
        {"source_image": {"bytes": "text, not bytes", "path": None}, "target_image": "coffee.png", "instruction": "x"},
        {"source_image": "astronaut.png", "target_image": "coffee.png", "instruction": "   "},
        {"source_image": "astronaut.png", "target_image": "coffee.png", "instruction": "ok",
         "source_caption": "bad \ud800 caption"},
        {"source_image": "astronaut.png", "target_image": "coffee.png", "instruction": "fine"},
    ])
    out = tmp_path / "o"
    assert convert("edit-pairs", src, out, "--images-root", root) == {"input": 6, "accepted": 1, "rejected": 5}
    reasons = {r["line"]: r["reason"] for r in rejects(out)}
    assert "should be text" in reasons[1]
    assert "should be a path or an image struct" in reasons[2]
    assert "binary" in reasons[3]
    assert "is empty" in reasons[4]
    assert "UTF-8" in reasons[5]


# --- imagepulse ------------------------------------------------------------------------------

def test_imagepulse_records_give_both_directions_and_keep_scores(tmp_path):
    rec = {"image_1": _struct("astronaut"), "image_2": _struct("coffee"),
           "editing_instruction": "Add a cup of coffee", "reverse_editing_instruction": "Remove the cup of coffee",
           "image_1_caption": "an astronaut", "image_2_caption": "an astronaut with coffee",
           "image_1_preference_score": 0.61, "image_2_preference_score": 0.72,
           "artifacts_in_image_1": False, "artifacts_in_image_2": True, "clip_score": 0.3}
    no_rev = {**rec, "reverse_editing_instruction": None}
    table = pa.Table.from_pylist([rec, no_rev, {**rec, "editing_instruction": "把猫加进来",
                                                "reverse_editing_instruction": "把猫去掉"}])
    src = tmp_path / "ip.parquet"
    pq.write_table(table, src)
    out = tmp_path / "o"
    counts = convert("imagepulse", src, out)
    assert counts == {"input": 5, "accepted": 4, "rejected": 1}
    got = samples(out)
    fwd, rev = got[0], got[1]
    assert fwd["source"] == "ImagePulse"
    assert fwd["messages"] == editing_messages("Add a cup of coffee")
    assert rev["messages"] == editing_messages("Remove the cup of coffee")
    assert np.array_equal(pixels(fwd["images"][0]["bytes"]), pixels(rev["images"][1]["bytes"]))
    assert np.array_equal(pixels(fwd["images"][1]["bytes"]), np.asarray(photo("coffee", 32)))
    for s in (fwd, rev):
        m = s["meta"]
        assert m["image_1_preference_score"] == 0.61 and m["image_2_preference_score"] == 0.72
        assert m["artifacts_in_image_1"] is False and m["artifacts_in_image_2"] is True
        assert m["clip_score"] == 0.3
    assert fwd["meta"]["captions"] == ["an astronaut", "an astronaut with coffee"]
    assert rev["meta"]["captions"] == ["an astronaut with coffee", "an astronaut"]
    (r,) = rejects(out)
    assert r["line"] == 2 and "reverse" in r["reason"]
    assert got[2]["language"] == got[3]["language"] == "zh"
    assert got[3]["messages"] == editing_messages("把猫去掉", "zh")


def test_imagepulse_jsonl_with_paths(tmp_path, root):
    src = write_jsonl(tmp_path / "ip.jsonl", [{
        "image_1": "astronaut.png", "image_2": "chelsea.png", "editing_instruction": "Change the person to a cat",
        "reverse_editing_instruction": "Change the cat to a person", "image_1_preference_score": 1.5,
        "image_2_preference_score": 2.5, "artifacts_in_image_1": 0, "artifacts_in_image_2": 1}])
    out = tmp_path / "o"
    assert convert("imagepulse", src, out, "--images-root", root, "--source", "IP") == \
        {"input": 2, "accepted": 2, "rejected": 0}
    fwd, rev = samples(out)
    assert fwd["id"].startswith("IP_") and rev["id"] == fwd["id"] + "_rev"
    assert [im["path"] for im in rev["images"]] == ["chelsea.png", "astronaut.png"]
    assert rev["meta"]["image_2_preference_score"] == 2.5


# --- captions --------------------------------------------------------------------------------

def test_captions_csv_english_and_chinese(tmp_path, root):
    src = tmp_path / "caps.csv"
    src.write_text("image,caption\nastronaut.png,An astronaut in a white suit\n"
                   "coffee.jpg,\"A cup of coffee, with a spoon\"\n", encoding="utf-8")
    en, zh = tmp_path / "en", tmp_path / "zh"
    assert convert("captions", src, en, "--images-root", root) == {"input": 2, "accepted": 2, "rejected": 0}
    assert convert("captions", src, zh, "--images-root", root, "--language", "zh")["accepted"] == 2
    se, sz = samples(en), samples(zh)
    assert se[0]["messages"] == generation_messages("An astronaut in a white suit")
    assert se[0]["messages"][0]["content"] == \
        "Generate an image according to the following description: An astronaut in a white suit"
    assert se[1]["messages"][1]["content"] == "Here is an image based on the description: <image>"
    assert sz[0]["messages"][0]["content"] == "根据以下描述生成一张图像：An astronaut in a white suit"
    assert sz[0]["messages"][1]["content"] == "这是根据您的描述生成的图像：<image>"
    assert [s["task"] for s in se + sz] == ["generation"] * 4
    assert [s["language"] for s in se] == ["en", "en"] and [s["language"] for s in sz] == ["zh", "zh"]
    assert [s["id"] for s in sz] == ["zh_" + s["id"] for s in se]
    assert all(s["source"] == "caps" for s in se)


def test_captions_jsonl_with_ids_and_hostile_rows(tmp_path, root):
    huge = "一只猫" * 30000
    src = write_jsonl(tmp_path / "caps.jsonl", [
        {"id": "c1", "file_name": "chelsea.png", "text": "a cat"},
        {"id": 2, "image": "rocket.png", "prompt": "a rocket"},
        {"image": "astronaut.png"},
        {"image": "astronaut.png", "caption": 12},
        {"image": ["astronaut.png"], "caption": "list"},
        {"image": "coffee.png", "caption": huge},
        {"image": "coffee.png", "caption": "<image> sneaky tag"},
        {"image": "coffee.png", "caption": "   "},
    ])
    out = tmp_path / "o"
    counts = convert("captions", src, out, "--images-root", root, "--language", "zh")
    assert counts == {"input": 8, "accepted": 3, "rejected": 5}
    got = samples(out)
    assert [s["id"][:5] for s in got] == ["zh_c1", "zh_2", "zh_ca"]
    assert got[2]["messages"][0]["content"].endswith(huge)
    reasons = {r["line"]: r["reason"] for r in rejects(out)}
    assert set(reasons) == {3, 4, 5, 7, 8}
    assert "missing caption" in reasons[3]
    assert "should be text" in reasons[4]
    assert "should be an image path" in reasons[5]
    assert "placeholder/image count mismatch" in reasons[7]
    assert "empty" in reasons[8]


def test_captions_parquet_with_null_image(tmp_path):
    table = pa.table({"image": pa.array([_struct("coffee"), None], type=_image_struct_type()),
                      "caption": ["a coffee", "no image here"]})
    src = tmp_path / "caps.parquet"
    pq.write_table(table, src)
    out = tmp_path / "o"
    assert convert("captions", src, out) == {"input": 2, "accepted": 1, "rejected": 1}
    assert "missing image" in rejects(out)[0]["reason"]


def test_captions_bad_language_from_the_api(tmp_path, root):
    from nexus_gen.data.convert import convert_file

    src = tmp_path / "caps.csv"
    src.write_text("image,caption\nastronaut.png,x\n")
    with pytest.raises(ValueError, match="language"):
        convert_file("captions", src, tmp_path / "o", images_root=root, language="de")
    assert not (tmp_path / "o").exists()
    res = cli("convert", "captions", src, "--out", tmp_path / "o", "--language", "EN")
    assert res.exit_code != 0 and "choose en or zh" in flat(res.output)


def test_imagepulse_score_column_json_cannot_hold(tmp_path):
    rec = {"image_1": _struct("astronaut"), "image_2": _struct("coffee"),
           "editing_instruction": "Add a cup", "reverse_editing_instruction": "Remove the cup",
           "image_1_preference_score": 0.5, "artifacts_in_image_1": b"\x00\x01"}
    good = {**rec, "artifacts_in_image_1": None, "image_1": _struct("rocket")}
    src = tmp_path / "ip.parquet"
    pq.write_table(pa.Table.from_pylist([rec, good]), src)
    out = tmp_path / "o"
    assert convert("imagepulse", src, out) == {"input": 4, "accepted": 2, "rejected": 2}
    assert all(r["line"] == 1 and "JSON" in r["reason"] for r in rejects(out))
    assert [s["meta"]["input"]["line"] for s in samples(out)] == [2, 2]


def test_id_columns_of_the_wrong_type_are_rejected(tmp_path, root):
    src = write_jsonl(tmp_path / "caps.jsonl", [
        {"id": True, "image": "astronaut.png", "caption": "a"},
        {"id": {"k": 1}, "image": "astronaut.png", "caption": "b"},
        {"id": 2.5, "image": "astronaut.png", "caption": "c"},
        {"id": 7, "image": "astronaut.png", "caption": "d"},
    ])
    out = tmp_path / "o"
    assert convert("captions", src, out, "--images-root", root) == {"input": 4, "accepted": 1, "rejected": 3}
    assert [s["id"] for s in samples(out)] == ["7"]
    assert all("should be a string or an integer id" in r["reason"] for r in rejects(out))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"id": False, "source_image": "astronaut.png", "target_image": "coffee.png", "instruction": "x"},
        {"id": 3, "source_image": "astronaut.png", "target_image": "coffee.png", "instruction": "x"}])
    out2 = tmp_path / "o2"
    assert convert("edit-pairs", pairs, out2, "--images-root", root) == {"input": 2, "accepted": 1, "rejected": 1}
    assert [s["id"] for s in samples(out2)] == ["pairs_3"]


def _png_with_shared_header(img) -> bytes:
    """A PNG whose first ~8 kB (a text chunk) are the same for every image."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "same editor header " * 400)
    return encode(img, "PNG", pnginfo=info)


def test_embedded_images_without_paths_get_distinct_ids(tmp_path):
    """Ids of path-less images hash all the bytes: two images sharing their first kilobytes
    are not duplicates."""
    from PIL import Image

    img = photo("astronaut", 24)
    a, b = _png_with_shared_header(img), _png_with_shared_header(img.transpose(Image.FLIP_LEFT_RIGHT))
    assert a[:4096] == b[:4096] and a != b
    tgt = {"bytes": encode(photo("coffee", 24)), "path": None}
    pairs = pa.Table.from_pylist([
        {"source_image": {"bytes": a, "path": None}, "target_image": tgt, "instruction": "Make it coffee"},
        {"source_image": {"bytes": b, "path": None}, "target_image": tgt, "instruction": "Make it coffee"},
        {"source_image": {"bytes": b, "path": None}, "target_image": tgt, "instruction": "Make it coffee"},
    ])
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    out = tmp_path / "o"
    assert convert("edit-pairs", tmp_path / "pairs.parquet", out) == {"input": 3, "accepted": 2, "rejected": 1}
    assert "duplicate id" in rejects(out)[0]["reason"] and rejects(out)[0]["line"] == 3
    caps = pa.Table.from_pylist([{"image": {"bytes": a, "path": None}, "caption": "a photo"},
                                 {"image": {"bytes": b, "path": None}, "caption": "a photo"}])
    pq.write_table(caps, tmp_path / "caps.parquet")
    assert convert("captions", tmp_path / "caps.parquet", tmp_path / "c") == {"input": 2, "accepted": 2, "rejected": 0}


def test_captions_tsv_and_url_images(tmp_path, root):
    src = tmp_path / "caps.tsv"
    src.write_text("image\tcaption\nastronaut.png\tan astronaut, smiling\n"
                   "https://example.com/cat.png\ta cat from the web\n", encoding="utf-8")
    out = tmp_path / "o"
    assert convert("captions", src, out, "--images-root", root) == {"input": 2, "accepted": 1, "rejected": 1}
    assert samples(out)[0]["meta"]["captions"] == ["an astronaut, smiling"]
    (r,) = rejects(out)
    assert r["line"] == 3 and "URL" in r["reason"]
