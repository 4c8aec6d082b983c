"""Adversarial pass over the data foundation: the same bytes whatever the worker setting, images of
every size and kind reading back exactly through our reader and through `datasets`, empty and
all-bad inputs, hostile CSV / jsonl text, id collisions, bad output folders, interrupted runs."""
from __future__ import annotations

import functools
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import xxhash
from PIL import Image, ImageOps

from conftest import EXAMPLE as EXAMPLE_IMAGES
from data_fixtures import (bomb_png, cli, convert, corrupt_middle_jpeg, edit_row, encode, exif_rotated_jpeg, flat,
                           gen_row, last_json, photo, rejects, samples, truncated_jpeg, truncated_png, und_row,
                           write_jsonl)

from nexus_gen.data.convert import base as convert_base
from nexus_gen.data.convert import convert_file
from nexus_gen.data.shards import ShardWriter, read_manifest



# --- an images root of every size and kind ---------------------------------------------------

def _gray16() -> bytes:
    from skimage import data

    arr = (data.camera()[::4, ::4].astype(np.uint16) * 257 + 3).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")


def _palette_with_transparency() -> bytes:
    img = photo("rocket", 64).convert("P", palette=Image.ADAPTIVE, colors=16)
    return encode(img, "PNG", transparency=0)


def _motion_photo() -> bytes:
    """A JPEG followed by a video, as phones write "motion photos": the image ends at its EOI
    marker, far from the end of the file."""
    video = b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(5).bytes(48_000)
    return encode(photo("chelsea", 80), "JPEG", quality=90) + video


def _zoo(root: Path) -> dict[str, bytes]:
    root.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(1).integers(0, 256, (1100, 1300, 3), dtype=np.uint8)
    files = {
        "tiny.png": encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "coffee.jpg": encode(photo("coffee", 32), "JPEG", quality=85),
        "astronaut.png": encode(photo("astronaut", None), "PNG"),
        "noise.png": encode(Image.fromarray(noise), "PNG", compress_level=1),  # ~4 MB
        "cat.png": (EXAMPLE_IMAGES / "cat.png").read_bytes(),
        "gen_0.png": (EXAMPLE_IMAGES / "assets/example_datasets/images/gen_0.png").read_bytes(),
        "und_0.jpg": (EXAMPLE_IMAGES / "assets/example_datasets/images/und_0.jpg").read_bytes(),
        "cmyk.jpg": encode(photo("chelsea", 96).convert("CMYK"), "JPEG", quality=90),
        "gray16.png": _gray16(),
        "palette_t.png": _palette_with_transparency(),
        "rotated.jpg": exif_rotated_jpeg(64, 40, orientation=6),
        "motion.jpg": _motion_photo(),
        "zero.png": b"",
        "trunc.png": truncated_png(),
        "trunc.jpg": truncated_jpeg(),
        "words.png": b"no pixels here\n" * 8,
        "bomb.png": bomb_png(30000, 30000),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


GOOD_IMAGES = ("tiny.png", "coffee.jpg", "astronaut.png", "noise.png", "cat.png", "gen_0.png", "und_0.jpg",
               "cmyk.jpg", "gray16.png", "palette_t.png", "rotated.jpg", "motion.jpg")


def _expected_pixels(data: bytes) -> np.ndarray:
    """What an upright RGB reading of `data` is, computed with PIL alone (the oracle)."""
    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I"):
            grey = np.clip(np.rint(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
            return np.stack([grey] * 3, axis=-1)
        if im.mode == "P" and "transparency" in im.info:
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
        return np.asarray(im.convert("RGB"))


def _kept_as_is(data: bytes) -> bool:
    """An image already upright RGB PNG/JPEG is stored byte for byte."""
    with Image.open(io.BytesIO(data)) as im:
        return (im.format in ("PNG", "JPEG") and im.mode == "RGB" and "transparency" not in im.info
                and im.getexif().get(0x0112, 1) == 1)


def _mixed_rows() -> tuple[list, int, int]:
    """Good records over every image (big ones repeated for volume), an image used twice in one
    record, and one of each kind of bad record. Returns rows, #good, #bad."""
    rows: list = []
    good = bad = 0

    def ok(row):
        nonlocal good
        rows.append(row)
        good += 1

    def no(row):
        nonlocal bad
        rows.append(row)
        bad += 1

    for i, name in enumerate(GOOD_IMAGES):
        ok(und_row(f"u_{name}", name, answer=f"answer {i}"))
    no(und_row("b_missing", "nope.png"))
    for i in range(6):
        ok(gen_row(f"g_noise_{i}", "noise.png", prompt=f"static number {i}"))
        ok(und_row(f"u_tiny_{i}", "tiny.png"))
    no(und_row("b_escape", "../outside.png"))
    no(und_row("b_zero", "zero.png"))
    ok(edit_row("e_same_image", "cat.png", "cat.png", "change nothing at all"))
    ok({**und_row("u_twice", "gen_0.png"), "images": ["gen_0.png", "gen_0.png"],
        "messages": [{"role": "user", "content": "<image><image>\nAre these the same?"},
                     {"role": "assistant", "content": "Yes."}]})
    no(und_row("b_trunc_png", "trunc.png"))
    no(und_row("b_trunc_jpg", "trunc.jpg"))
    ok(edit_row("e_cmyk_rot", "cmyk.jpg", "rotated.jpg", "turn the cat into a rocket"))
    no(und_row("b_words", "words.png"))
    no(und_row("b_bomb", "bomb.png"))
    no('{"id": "b_json", "images": [')
    no({"source": "s", "images": [], "messages": [{"role": "user", "content": "hi"}]})
    no({**und_row("b_count", "tiny.png"), "images": ["tiny.png", "tiny.png"]})
    no({**und_row("b_role", "tiny.png"), "messages": [{"role": "robot", "content": "<image>\nq"},
                                                      {"role": "assistant", "content": "a"}]})
    no({**und_row("b_empty", "tiny.png"), "messages": []})
    no(und_row("u_tiny_0", "coffee.jpg"))  # duplicate id
    ok({**und_row("x", "coffee.jpg"), "id": 7})
    no({**und_row("x", "coffee.jpg"), "id": "7"})  # the same id once stringified
    for i in range(4):
        ok(gen_row(f"g_big_{i}", ("gen_0.png", "cat.png", "astronaut.png", "noise.png")[i], prompt=f"big {i}"))
    ok(und_row("u_last", "und_0.jpg"))
    return rows, good, bad


def _write_mixed(path: Path) -> Path:
    rows, _, _ = _mixed_rows()
    write_jsonl(path, rows[:-1])
    with open(path, "a", encoding="utf-8") as f:  # the last line has no newline
        f.write(json.dumps(rows[-1]))
    return path


def _tree(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def zoo_builds(tmp_path_factory) -> dict:
    """The mixed input built five ways, with 1 MB row groups and 6 MB shards (many row groups,
    several shards, groups from one 4 MB image to dozens of 1-pixel ones)."""
    d = tmp_path_factory.mktemp("zoo")
    files = _zoo(d / "imgs")
    (d / "outside.png").write_bytes(files["tiny.png"])
    src = _write_mixed(d / "mixed.jsonl")
    runs = {"workers1": ["--workers", 1], "default": [], "workers3": ["--workers", 3],
            "full": ["--verify", "full"], "full_workers1": ["--verify", "full", "--workers", 1]}
    outs, counts = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(convert_base, "ShardWriter", functools.partial(ShardWriter, row_group_bytes=1 << 20))
        for name, extra in runs.items():
            outs[name] = d / name
            counts[name] = convert("nexus-gen-jsonl", src, outs[name], "--images-root", d / "imgs",
                                   "--shard-size", "6MB", *extra)
    return {"dir": d, "files": files, "src": src, "outs": outs, "counts": counts}


def test_every_worker_setting_and_verify_depth_gives_the_same_bytes(zoo_builds):
    _, good, bad = _mixed_rows()
    outs = zoo_builds["outs"]
    for name, counts in zoo_builds["counts"].items():
        assert counts == {"input": good + bad, "accepted": good, "rejected": bad}, name
    ref = _tree(outs["workers1"])
    assert {"manifest.json", "rejects.jsonl"} < set(ref)
    for name, out in outs.items():
        tree = _tree(out)
        assert sorted(tree) == sorted(ref), name
        for f in ref:
            assert tree[f] == ref[f], (name, f)
    man = read_manifest(outs["workers1"])
    assert len(man["shards"]) >= 3
    groups = [pq.ParquetFile(outs["workers1"] / s["file"]).metadata.num_row_groups for s in man["shards"]]
    assert sum(groups) >= 2 * len(groups) and max(groups) >= 3, groups


def test_images_of_every_kind_read_back_exactly(zoo_builds):
    files = zoo_builds["files"]
    got = samples(zoo_builds["outs"]["default"])
    by_id = {s["id"]: s for s in got}
    assert len(by_id) == len(got)
    for s in got:
        refs = [im["path"] for im in s["images"]]
        assert s["meta"]["image_xxh3_128"] == [xxhash.xxh3_128_hexdigest(im["bytes"]) for im in s["images"]]
        for ref, im in zip(refs, s["images"]):
            original = files[ref]
            if _kept_as_is(original):
                assert im["bytes"] == original, (s["id"], ref)
            else:  # normalised: a PNG of the upright RGB pixels, exactly
                with Image.open(io.BytesIO(im["bytes"])) as stored:
                    assert stored.format == "PNG" and stored.mode == "RGB", ref
                    assert stored.getexif().get(0x0112, 1) == 1
                    assert np.array_equal(np.asarray(stored), _expected_pixels(original)), ref
    for name in ("cmyk.jpg", "gray16.png", "palette_t.png", "rotated.jpg"):
        assert not _kept_as_is(files[name]), name
    for name in ("noise.png", "cat.png", "motion.jpg", "und_0.jpg", "tiny.png"):
        assert by_id[f"u_{name}"]["images"][0]["bytes"] == files[name], name
    assert by_id["u_rotated.jpg"]["images"][0]["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
    # an image used twice in one record is stored twice, both whole
    same = by_id["e_same_image"]["images"]
    assert same[0]["bytes"] == same[1]["bytes"] == files["cat.png"]
    twice = by_id["u_twice"]["images"]
    assert twice[0]["bytes"] == twice[1]["bytes"] == files["gen_0.png"]
    assert by_id["7"]["meta"]["input"]["line"] > 0


def test_datasets_decodes_every_image_of_a_multi_shard_build(zoo_builds, tmp_path):
    import datasets

    out = zoo_builds["outs"]["workers3"]
    files = sorted(str(p) for p in out.glob("train-*.parquet"))
    assert len(files) >= 3
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    ours = samples(out)
    assert len(ds) == len(ours)
    assert isinstance(ds.features["images"].feature, datasets.Image)
    files_by_name = zoo_builds["files"]
    for row, s in zip(ds, ours):
        assert row["id"] == s["id"]
        assert len(row["images"]) == len(s["images"])
        for pil, im in zip(row["images"], s["images"]):
            assert isinstance(pil, Image.Image)
            assert np.array_equal(np.asarray(pil.convert("RGB")), _expected_pixels(files_by_name[im["path"]])), \
                (s["id"], im["path"])


def test_rejects_name_line_and_reason_for_every_bad_record(zoo_builds):
    rows, _, bad = _mixed_rows()
    rej = rejects(zoo_builds["outs"]["default"])
    assert len(rej) == bad
    assert all(r["file"] == "mixed.jsonl" and r["reason"] for r in rej)
    by_id = {r["id"]: r["reason"] for r in rej if r["id"]}
    expect = {"b_missing": "not found", "b_escape": "escapes the images root", "b_zero": "0 bytes",
              "b_trunc_png": "truncated PNG", "b_trunc_jpg": "truncated JPEG", "b_words": "not a recognised image",
              "b_bomb": "decompression bomb", "b_count": "placeholder/image count mismatch",
              "b_role": "role", "b_empty": "empty", "u_tiny_0": "duplicate id", "7": "duplicate id"}
    for rid, needle in expect.items():
        assert needle in by_id[rid], (rid, by_id[rid])
    lines = {r["line"] for r in rej}
    for r in rej:  # each line number points at the record that was rejected
        row = rows[r["line"] - 1]
        if isinstance(row, dict) and r["id"] is not None:
            assert str(row.get("id")) == r["id"]
    assert len(lines) == bad


# --- --verify full: the check that decodes, the same on every thread count -------------------

def test_full_verification_is_deterministic_and_catches_corrupt_middles(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "bad_middle.jpg").write_bytes(corrupt_middle_jpeg())
    (imgs / "good.jpg").write_bytes(encode(photo("astronaut", 96), "JPEG"))
    (imgs / "cmyk.jpg").write_bytes(encode(photo("coffee", 64).convert("CMYK"), "JPEG"))
    rows = []
    for i in range(30):
        rows.append(und_row(f"g{i}", ("good.jpg", "cmyk.jpg")[i % 2], answer=f"a{i}"))
        if i % 7 == 3:
            rows.append(und_row(f"m{i}", "bad_middle.jpg"))
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    trees = []
    for extra in ([], ["--workers", 1], ["--workers", 3]):
        out = tmp_path / f"o{len(trees)}"
        assert convert("nexus-gen-jsonl", src, out, "--images-root", imgs, "--verify", "full", "--shard-size", "20k",
                       *extra) == {"input": 34, "accepted": 30, "rejected": 4}
        trees.append(_tree(out))
    assert trees[0] == trees[1] == trees[2]
    assert all("corrupt" in r["reason"] for r in rejects(tmp_path / "o0"))
    header = tmp_path / "header"
    assert convert("nexus-gen-jsonl", src, header, "--images-root", imgs, "--shard-size", "20k")["accepted"] == 34


# --- images real cameras write ---------------------------------------------------------------

def test_jpeg_with_data_after_its_end_marker_is_not_called_truncated(tmp_path):
    """Motion photos (a JPEG with a video appended) and JPEGs with padding after the end marker
    decode fine: they are kept, byte for byte, at either verification depth."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    motion = _motion_photo()
    padded = encode(photo("coffee", 64), "JPEG") + b"\x00" * 4096
    (imgs / "motion.jpg").write_bytes(motion)
    (imgs / "padded.jpg").write_bytes(padded)
    cut = motion[: motion.index(b"ftypmp42") - 40]  # the image itself cut short: still truncated
    (imgs / "cut.jpg").write_bytes(cut)
    src = write_jsonl(tmp_path / "in.jsonl", [und_row("motion", "motion.jpg"), und_row("padded", "padded.jpg"),
                                              und_row("cut", "cut.jpg")])
    for verify in ("header", "full"):
        out = tmp_path / verify
        assert convert("nexus-gen-jsonl", src, out, "--images-root", imgs, "--verify", verify) == \
            {"input": 3, "accepted": 2, "rejected": 1}
        got = {s["id"]: s["images"][0]["bytes"] for s in samples(out)}
        assert got == {"motion": motion, "padded": padded}
        (r,) = rejects(out)
        assert r["id"] == "cut" and "truncated" in r["reason"]


# --- empty and all-bad inputs ------------------------------------------------------------------

@pytest.mark.parametrize("fmt,name,content", [
    ("nexus-gen-jsonl", "empty.jsonl", b""),
    ("nexus-gen-jsonl", "blank.jsonl", b"\n\n  \r\n"),
    ("nexus-gen-jsonl", "empty.json", b"[]"),
    ("captions", "header_only.csv", b"image,caption\r\n"),
    ("captions", "empty.csv", b""),
    ("edit-pairs", "bom_only.csv", "\ufeff".encode()),
])
def test_an_empty_input_gives_an_empty_valid_build(tmp_path, fmt, name, content):
    src = tmp_path / name
    src.write_bytes(content)
    out = tmp_path / "out"
    res = cli("convert", fmt, src, "--out", out)
    # nothing to convert is an error (exit 1) that says why; the empty build is still valid
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert last_json(res) == {"input": 0, "accepted": 0, "rejected": 0}
    assert "no shard" in flat(res.output)  # says plainly that there is nothing to load
    assert f"{name} holds no record" in res.stderr
    man = read_manifest(out)
    assert man["shards"] == [] and man["total_rows"] == 0 and man["total_bytes"] == 0
    assert man["features"]["images"] == [{"_type": "Image"}]
    assert (out / "rejects.jsonl").read_bytes() == b""
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "rejects.jsonl"]
    val = cli("validate", out)
    assert val.exit_code == 0 and last_json(val)["samples"] == 0, val.output


def test_an_input_of_only_bad_records_keeps_every_one_as_a_reject(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "zero.png").write_bytes(b"")
    src = write_jsonl(tmp_path / "bad.jsonl", [und_row("a", "zero.png"), "{not json", und_row("b", "nope.png"),
                                               {"id": "c"}])
    out = tmp_path / "out"
    res = cli("convert", "nexus-gen-jsonl", src, "--out", out, "--images-root", imgs)
    assert res.exit_code == 1, res.output
    assert last_json(res) == {"input": 4, "accepted": 0, "rejected": 4}
    assert "nothing accepted" in res.stderr
    assert "no shard" in flat(res.output)
    assert [r["line"] for r in rejects(out)] == [1, 2, 3, 4]
    assert read_manifest(out)["total_rows"] == 0
    exported = cli("export", "nexus-gen-jsonl", out, "--out", tmp_path / "exp")
    assert exported.exit_code == 2 and "no parquet shards" in exported.stderr


# --- hostile text --------------------------------------------------------------------------------

def test_csv_with_bom_crlf_and_quoted_newlines_keeps_text_and_locations(tmp_path):
    """A record spanning several lines is located at the line it starts on, and the line breaks
    inside its quoted cell are kept."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.png").write_bytes(encode(photo("astronaut", 32), "PNG"))
    text = ("\ufeffimage,caption\r\n"                    # 1
            "a.png,\"a caption\r\nover two lines\"\r\n"   # 2-3
            "missing.png,\"also\nsplit\rthree ways\"\r\n"  # 4-6
            "\r\n"                                        # 7 (blank)
            "a.png,\"\"\r\n"                              # 8: empty caption
            "a.png,\"quote \"\" inside, and a comma\"\r\n"  # 9
            "gone.png,plain")                             # 10, no final newline
    src = tmp_path / "caps.csv"
    src.write_bytes(text.encode("utf-8"))
    out = tmp_path / "o"
    assert convert("captions", src, out, "--images-root", imgs) == {"input": 5, "accepted": 2, "rejected": 3}
    got = samples(out)
    assert [s["meta"]["input"]["line"] for s in got] == [2, 9]
    assert got[0]["meta"]["captions"] == ["a caption\r\nover two lines"]
    assert got[1]["meta"]["captions"] == ['quote " inside, and a comma']
    assert [(r["line"], r["reason"].split(" ")[0]) for r in rejects(out)] == \
        [(4, "image"), (8, "missing"), (10, "image")]


def test_long_text_non_bmp_unicode_and_a_last_line_without_newline(tmp_path):
    import datasets

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.png").write_bytes(encode(photo("coffee", 32), "PNG"))
    long_answer = ("𝕏 emoji 😀 and 中文 " * 40_000)[:600_000]
    rows = [{**und_row("😀_𝕏_id", "a.png"), "messages": [{"role": "user", "content": "<image>\nWhat? 🧪"},
                                                       {"role": "assistant", "content": long_answer}]},
            und_row("plain", "a.png")]
    src = tmp_path / "u.jsonl"
    src.write_text(json.dumps(rows[0], ensure_ascii=False) + "\n" + json.dumps(rows[1]), encoding="utf-8")
    caps = tmp_path / "caps.csv"
    caps.write_text("image,caption\na.png,\"" + long_answer + "\"\n", encoding="utf-8")
    out, out2 = tmp_path / "o", tmp_path / "o2"
    assert convert("nexus-gen-jsonl", src, out, "--images-root", imgs)["accepted"] == 2
    assert convert("captions", caps, out2, "--images-root", imgs)["accepted"] == 1
    ds = datasets.load_dataset("parquet", data_files=str(out / "train-*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert list(ds["id"]) == ["😀_𝕏_id", "plain"]
    assert ds[0]["messages"][1]["content"] == long_answer
    assert ds[0]["messages"][0]["content"] == "<image>\nWhat? 🧪"
    assert samples(out2)[0]["meta"]["captions"] == [long_answer.strip()]


def test_lone_surrogates_are_rejected_in_every_format_and_rejects_stay_utf8(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.png").write_bytes(encode(photo("coffee", 32), "PNG"))
    llava = tmp_path / "l.jsonl"
    llava.write_text("\n".join([
        '{"id": "ok", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\\nq"}, '
        '{"from": "gpt", "value": "a"}]}',
        '{"id": "bad\\udc80", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\\nq"}, '
        '{"from": "gpt", "value": "a"}]}',
        '{"id": "txt", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\\nq \\ud83d"}, '
        '{"from": "gpt", "value": "a"}]}',
        '{"id": "pair", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\\n\\ud83d\\ude00"}, '
        '{"from": "gpt", "value": "a"}]}',
    ]) + "\n", encoding="ascii")
    out = tmp_path / "o"
    assert convert("llava", llava, out, "--images-root", imgs) == {"input": 4, "accepted": 2, "rejected": 2}
    assert [s["messages"][0]["content"] for s in samples(out)] == ["<image>\nq", "<image>\n😀"]
    raw = (out / "rejects.jsonl").read_bytes()
    raw.decode("utf-8")  # valid UTF-8 whatever the ids hold
    rej = rejects(out)
    assert [r["line"] for r in rej] == [2, 3]
    assert rej[0]["id"] == "bad\udc80" and "UTF-8" in rej[0]["reason"]
    caps = tmp_path / "c.csv"
    caps.write_bytes(b"image,caption\na.png,fine\na.png,caf\xe9 latin-1\na.png,also fine\n")
    out2 = tmp_path / "o2"
    assert convert("captions", caps, out2, "--images-root", imgs) == {"input": 3, "accepted": 2, "rejected": 1}
    assert rejects(out2)[0]["line"] == 3


def test_int_and_string_ids_that_read_the_same_collide_in_every_format(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.png").write_bytes(encode(photo("coffee", 32), "PNG"))
    (imgs / "b.png").write_bytes(encode(photo("rocket", 32), "PNG"))
    conv = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    llava = write_jsonl(tmp_path / "l.jsonl", [{"id": 1, "image": "a.png", "conversations": conv},
                                                {"id": "1", "image": "b.png", "conversations": conv},
                                                {"id": "01", "image": "b.png", "conversations": conv}])
    assert convert("llava", llava, tmp_path / "o1", "--images-root", imgs) == \
        {"input": 3, "accepted": 2, "rejected": 1}
    assert [s["id"] for s in samples(tmp_path / "o1")] == ["1", "01"]
    pairs = write_jsonl(tmp_path / "p.jsonl", [
        {"id": 5, "source_image": "a.png", "target_image": "b.png", "instruction": "swap",
         "reverse_instruction": "swap back"},
        {"id": "5", "source_image": "b.png", "target_image": "a.png", "instruction": "other"},
    ])
    counts = convert("edit-pairs", pairs, tmp_path / "o2", "--images-root", imgs)
    assert counts == {"input": 3, "accepted": 2, "rejected": 1}
    assert [s["id"] for s in samples(tmp_path / "o2")] == ["p_5", "p_5_rev"]
    assert "duplicate id 'p_5'" in rejects(tmp_path / "o2")[0]["reason"]


def test_a_file_name_that_is_not_utf8_gives_a_valid_default_source(tmp_path):
    """The default source is the input's name: a latin-1 file name must not make every sample
    of the file a reject (a lone surrogate in `source` and `id`)."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.png").write_bytes(encode(photo("coffee", 32), "PNG"))
    folder = os.fsencode(str(tmp_path))
    caps = os.fsdecode(folder + b"/caf\xe9.csv")
    with open(caps, "w", encoding="utf-8") as f:
        f.write("image,caption\na.png,a cup of coffee\n")
    llava = os.fsdecode(folder + b"/d\xe9j\xe0.jsonl")
    write_jsonl(Path(llava), [{"id": 1, "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}])
    for fmt, src, name in (("captions", caps, "caf\ufffd"), ("llava", llava, "d\ufffdj\ufffd")):
        out = tmp_path / fmt
        assert convert(fmt, src, out, "--images-root", imgs) == {"input": 1, "accepted": 1, "rejected": 0}
        (s,) = samples(out)
        assert s["source"] == name
    res = cli("convert", "captions", caps, "--out", tmp_path / "o", "--images-root", imgs,
              "--source", os.fsdecode(b"web\xff"))
    assert res.exit_code == 2 and "--source" in res.output and "UTF-8" in res.output, res.output
    assert not (tmp_path / "o").exists()


# --- NaN scores: meta must stay JSON --------------------------------------------------------------

def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_scores_are_stored_as_json_null(tmp_path):
    """ImagePulse scores can be NaN (a pandas missing value); `meta` is JSON text that strict
    readers (DuckDB, JavaScript, serde) parse, and NaN / Infinity are not JSON."""
    import pyarrow as pa

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.png").write_bytes(encode(photo("coffee", 32), "PNG"))
    (imgs / "b.png").write_bytes(encode(photo("rocket", 32), "PNG"))
    table = pa.table({"image_1": ["a.png"], "image_2": ["b.png"], "editing_instruction": ["add a hat"],
                      "reverse_editing_instruction": ["remove the hat"],
                      "image_1_preference_score": pa.array([float("nan")], pa.float64()),
                      "image_2_preference_score": pa.array([0.5], pa.float64()),
                      "clip_score": pa.array([float("inf")], pa.float64())})
    pq.write_table(table, tmp_path / "ip.parquet")
    out = tmp_path / "o"
    assert convert("imagepulse", tmp_path / "ip.parquet", out, "--images-root", imgs)["accepted"] == 2
    for meta in pq.read_table(out / "train-00000.parquet").column("meta").to_pylist():
        m = _strict_json(meta)
        assert m["image_1_preference_score"] is None and m["clip_score"] is None
        assert m["image_2_preference_score"] == 0.5


# --- bad output folders and inputs that are a build's own files ----------------------------------

def test_out_inside_a_file_fails_clearly_before_any_work(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.png").write_bytes(encode(photo("coffee", 32), "PNG"))
    src = write_jsonl(tmp_path / "in.jsonl", [und_row("a", "a.png")])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = cli("convert", "nexus-gen-jsonl", src, "--out", blocker / "sub", "--images-root", imgs)
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), (res.output, repr(res.exception))
    assert str(blocker / "sub") in res.output and "folder" in flat(res.output)
    assert blocker.read_text() == "x"
    with pytest.raises(ValueError, match="output folder"):
        convert_file("nexus-gen-jsonl", src, blocker / "sub", images_root=imgs)


@pytest.mark.parametrize("name", ["rejects.jsonl", "manifest.json"])
def test_a_builds_own_rejects_or_manifest_as_input_is_refused(tmp_path, name):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.png").write_bytes(encode(photo("coffee", 32), "PNG"))
    out = tmp_path / "o"
    convert("nexus-gen-jsonl", write_jsonl(tmp_path / "in.jsonl", [und_row("a", "a.png"), und_row("b", "x.png")]),
            out, "--images-root", imgs)
    before = _tree(out)
    link = tmp_path / f"alias_{name}"
    link.symlink_to(out / name)
    for inp in (out / name, link):
        res = cli("convert", "nexus-gen-jsonl", inp, "--out", tmp_path / "." / "o", "--images-root", imgs)
        assert res.exit_code == 2 and "replaces" in flat(res.output), res.output
    assert _tree(out) == before


# --- interrupted runs ---------------------------------------------------------------------------

class _DiskFullWriter(ShardWriter):
    """A shard writer whose disk fills up at the 80th sample."""

    def write(self, sample):
        self.n = getattr(self, "n", 0) + 1
        if self.n == 80:
            raise OSError(28, "No space left on device")
        super().write(sample)


@pytest.mark.parametrize("workers", [None, 3])
@pytest.mark.parametrize("failure", ["interrupt", "disk-full"])
def test_an_interrupted_rebuild_leaves_no_half_files_and_no_stale_results(tmp_path, monkeypatch, workers, failure):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.png").write_bytes(encode(photo("astronaut", 64), "PNG"))
    rows = [und_row(f"s{i:03d}", "a.png" if i % 9 else "missing.png", answer=f"a{i}") for i in range(120)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "o"
    convert_file("nexus-gen-jsonl", src, out, images_root=imgs, shard_bytes=30_000, workers=workers)
    assert read_manifest(out)["total_rows"] == 106 and len(rejects(out)) == 14
    if failure == "interrupt":  # Ctrl-C while an image is being checked
        real = convert_base.build_sample
        calls = {"n": 0}

        def flaky(draft, opts):
            calls["n"] += 1
            if calls["n"] == 90:
                raise KeyboardInterrupt("stopped mid-run")
            return real(draft, opts)

        monkeypatch.setattr(convert_base, "build_sample", flaky)
        expected = KeyboardInterrupt
    else:
        monkeypatch.setattr(convert_base, "ShardWriter", _DiskFullWriter)
        expected = OSError
    with pytest.raises(expected):
        convert_file("nexus-gen-jsonl", src, out, images_root=imgs, shard_bytes=30_000, workers=workers)
    left = sorted(p.name for p in out.iterdir())
    assert "manifest.json" not in left  # an unfinished build is never taken for a finished one
    assert "rejects.jsonl" not in left  # nor are the previous run's rejects left to describe it
    assert [n for n in left if n.startswith(".") or n.endswith(".tmp")] == []
    assert left, "finished shards of the interrupted run are kept"
    for n in left:  # and they are whole
        assert n.startswith("train-") and pq.ParquetFile(out / n).metadata.num_rows > 0
    val = cli("validate", out)  # nor does validate pass it: the manifest is the completion marker
    assert val.exit_code == 1 and "unfinished build" in flat(val.output), val.output
    monkeypatch.undo()
    counts = convert_file("nexus-gen-jsonl", src, out, images_root=imgs, shard_bytes=30_000, workers=workers).counts()
    assert counts == {"input": 120, "accepted": 106, "rejected": 14}
    assert len(rejects(out)) == 14
    assert cli("validate", out).exit_code == 0


def test_export_of_a_zoo_build_round_trips_pixels(zoo_builds, tmp_path):
    """The exported jsonl converts back to the same ids, messages and pixels."""
    out = zoo_builds["outs"]["default"]
    exp = tmp_path / "exp"
    res = cli("export", "nexus-gen-jsonl", out, "--out", exp)
    assert res.exit_code == 0, res.output
    back = tmp_path / "back"
    counts = convert("nexus-gen-jsonl", exp / "data.jsonl", back)
    first = samples(out)
    assert counts["accepted"] == len(first) and counts["rejected"] == 0
    for a, b in zip(first, samples(back)):
        assert (a["id"], a["messages"], a["task"]) == (b["id"], b["messages"], b["task"])
        for x, y in zip(a["images"], b["images"]):
            assert x["bytes"] == y["bytes"]
    shutil.rmtree(exp)
