"""`nexus-gen validate`: counts per task, source and language; every problem printed (bad rows
written straight to parquet, manifest mismatches, missing or corrupt shards); non-zero exit."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_fixtures import (PHOTOS, cli, convert, corrupt_middle_jpeg, edit_row, encode, gen_row, last_json, photo,
                           truncated_png, und_row, write_jsonl, write_photo)

from nexus_gen.data.check import validate_shards
from nexus_gen.data.schema import arrow_schema
from nexus_gen.data.shards import ShardWriter, sample_to_row
from nexus_gen.data.templates import editing_messages, generation_messages


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("good")
    for name in PHOTOS:
        write_photo(d / "imgs" / f"{name}.png", name, size=24)
    rows = [und_row("u1", "astronaut.png"), gen_row("g1", "coffee.png"), edit_row("e1", "chelsea.png", "rocket.png"),
            {**edit_row("e2", "rocket.png", "chelsea.png", "把火箭变成猫"), "source": "other"}]
    out = d / "shards"
    convert("nexus-gen-jsonl", write_jsonl(d / "in.jsonl", rows), out, "--images-root", d / "imgs",
            "--shard-size", "1k")
    return out


def _copy(good: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(good, dst)
    return dst


def test_validate_prints_counts_and_passes(good):
    res = cli("validate", good)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "4 samples" in out
    assert "by task:\n" in out and "  editing: 2\n" in out and "  generation: 1\n" in out
    assert "by source:\n" in out and "  test: 3\n" in out and "  other: 1\n" in out
    assert "by language:\n" in out and "  en: 3\n" in out and "  zh: 1\n" in out
    assert "problem:" not in out
    summary = last_json(res)
    assert summary == {"samples": 4, "by_task": {"understanding": 1, "generation": 1, "editing": 2},
                       "by_source": {"test": 3, "other": 1}, "by_language": {"en": 3, "zh": 1},
                       "problems": 0, "ok": True}
    assert cli("validate", good, "--full").exit_code == 0


def _bad_rows() -> list[dict]:
    img = {"bytes": encode(photo("coffee", 16)), "path": "c.png"}
    base = {"source": "direct", "language": "en", "meta": {}}
    return [
        {**base, "id": "ok", "task": "generation", "messages": generation_messages("a cup"), "images": [img]},
        {**base, "id": "one_image_edit", "task": "editing", "messages": editing_messages("red"), "images": [img]},
        {**base, "id": "weird_task", "task": "painting", "messages": generation_messages("x"), "images": [img]},
        {**base, "id": "ok", "task": "generation", "messages": generation_messages("again"), "images": [img]},
        {**base, "id": "broken_png", "task": "generation", "messages": generation_messages("x"),
         "images": [{"bytes": truncated_png(), "path": None}]},
        {**base, "id": "bad_lang", "language": "English", "task": "generation",
         "messages": generation_messages("x"), "images": [img]},
    ]


def test_validate_reports_every_problem_in_a_parquet_written_directly(tmp_path):
    rows = [sample_to_row(r) for r in _bad_rows()]
    f = tmp_path / "direct.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), f)
    res = cli("validate", f)
    assert res.exit_code == 1, res.output
    problems = [ln for ln in res.stdout.splitlines() if ln.startswith("problem:")]
    text = "\n".join(problems)
    assert "id='one_image_edit': placeholder/image count mismatch" in text
    assert "id='weird_task'" in text and "painting" in text
    assert "direct.parquet#3 id='ok': duplicate id" in text
    assert "id='broken_png'" in text and "truncated PNG" in text
    assert "id='bad_lang'" in text and "language" in text
    assert not any("#0 " in p for p in problems)
    assert last_json(res)["problems"] == len(problems) and last_json(res)["ok"] is False
    assert "6 samples" in res.stdout


def test_validate_catches_meta_that_is_not_json(tmp_path):
    row = sample_to_row(_bad_rows()[0])
    row["meta"] = "{not json"
    f = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=arrow_schema()), f)
    report = validate_shards(f)
    assert any("meta is not valid JSON" in p for p in report.problems)


def test_manifest_sha_mismatch_when_a_shard_is_edited(good, tmp_path):
    d = _copy(good, tmp_path)
    shard = sorted(d.glob("train-*.parquet"))[0]
    table = pq.read_table(shard)
    pq.write_table(table, shard, compression="gzip")  # same rows, different bytes
    res = cli("validate", d)
    assert res.exit_code == 1
    assert f"problem: {shard}: sha256 differs from the manifest" in res.stdout
    assert "4 samples" in res.stdout  # the rows are still all checked


def test_manifest_row_count_mismatch(good, tmp_path):
    d = _copy(good, tmp_path)
    man = json.loads((d / "manifest.json").read_text())
    man["shards"][0]["rows"] += 1
    (d / "manifest.json").write_text(json.dumps(man))
    res = cli("validate", d)
    assert res.exit_code == 1 and "rows, the manifest says" in res.stdout


def test_missing_corrupt_and_stray_shards_are_problems_not_crashes(good, tmp_path):
    d = _copy(good, tmp_path)
    files = sorted(d.glob("train-*.parquet"))
    assert len(files) >= 3
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:200])
    shutil.copy(files[2], d / "train-00099.parquet")
    res = cli("validate", d)
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert f"{files[0]}: listed in the manifest but missing" in res.stdout
    assert f"{files[1]}: not a readable parquet file" in res.stdout
    assert "train-00099.parquet: a shard file the manifest does not list" in res.stdout


def test_unreadable_manifest_is_a_problem(good, tmp_path):
    d = _copy(good, tmp_path)
    (d / "manifest.json").write_text("{ half a manifest")
    res = cli("validate", d)
    assert res.exit_code == 1 and "unreadable manifest" in res.stdout
    assert "4 samples" in res.stdout  # the shards found are still checked


def test_empty_folder_is_not_ok(tmp_path):
    (tmp_path / "empty").mkdir()
    res = cli("validate", tmp_path / "empty")
    assert res.exit_code == 1 and "no parquet shards found" in res.stdout


def test_validate_full_decodes_every_image(tmp_path):
    bad = corrupt_middle_jpeg()
    good_img = encode(photo("astronaut", 16))
    out = tmp_path / "s"
    with ShardWriter(out) as w:
        for i, data in enumerate((good_img, bad)):
            w.write({"id": f"x{i}", "source": "t", "task": "generation", "language": "en",
                     "messages": generation_messages("p"), "images": [{"bytes": data, "path": None}], "meta": {}})
    assert cli("validate", out).exit_code == 0
    res = cli("validate", out, "--full")
    assert res.exit_code == 1
    assert "id='x1'" in res.stdout and "corrupt" in res.stdout


def test_convert_verify_full_rejects_corrupt_middle_jpeg(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "corrupt.jpg").write_bytes(corrupt_middle_jpeg())
    write_photo(imgs / "fine.jpg", "chelsea", "JPEG", size=32)
    src = write_jsonl(tmp_path / "in.jsonl", [gen_row("c", "corrupt.jpg"), gen_row("f", "fine.jpg")])
    assert convert("nexus-gen-jsonl", src, tmp_path / "h", "--images-root", imgs, "--verify", "header") == \
        {"input": 2, "accepted": 2, "rejected": 0}
    assert convert("nexus-gen-jsonl", src, tmp_path / "f", "--images-root", imgs, "--verify", "full") == \
        {"input": 2, "accepted": 1, "rejected": 1}
    rej = [json.loads(ln) for ln in (tmp_path / "f" / "rejects.jsonl").read_text().splitlines()]
    assert rej[0]["line"] == 1 and "corrupt" in rej[0]["reason"]
