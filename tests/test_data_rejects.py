"""Nothing is lost and nothing stops the run: every bad record becomes a reject row naming its file
and line with a readable reason; bad options fail at once, before any work, writing nothing."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from data_fixtures import (bomb_png, cli, convert, flat, edit_row, gen_row, last_json, rejects, samples, truncated_jpeg,
                           truncated_png, und_row, write_jsonl, write_photo)


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    write_photo(root / "astronaut.png", "astronaut")
    write_photo(root / "coffee.jpg", "coffee", "JPEG")
    write_photo(root / "chelsea.png", "chelsea")
    write_photo(root / "rocket.jpg", "rocket", "JPEG")
    (root / "zero.png").write_bytes(b"")
    (root / "trunc.png").write_bytes(truncated_png())
    (root / "trunc.jpg").write_bytes(truncated_jpeg())
    (root / "text.png").write_bytes(b"this file holds words, not pixels\n" * 4)
    (root / "bomb.png").write_bytes(bomb_png(30000, 30000))
    (tmp_path / "secret.png").write_bytes((root / "astronaut.png").read_bytes())
    (root / "link_out.png").symlink_to(tmp_path / "secret.png")
    return root


def _bad_and_good(tmp_path: Path) -> tuple[list, dict[int, str], set[int]]:
    """Rows of one input file: good lines between bad ones. Returns rows, {line: reason regex} of
    the bad ones, and the good line numbers."""
    good = lambda i: und_row(f"good{i}", "astronaut.png")  # noqa: E731
    rows: list = []
    bad: dict[int, str] = {}
    goods: set[int] = set()

    def add(row, reason=None):
        rows.append(row)
        if reason is None:
            goods.add(len(rows))
        else:
            bad[len(rows)] = reason

    add(good(1))
    add(und_row("b_missing", "nope/missing.png"), r"not found")
    add(gen_row("good2", "coffee.jpg"))
    add(und_row("b_escape", "../secret.png"), r"escapes the images root")
    add(und_row("b_abs", str(tmp_path / "secret.png")), r"escapes the images root")
    add(und_row("b_link", "link_out.png"), r"escapes the images root")
    add(edit_row("good3", "chelsea.png", "rocket.jpg"))
    add(und_row("b_zero", "zero.png"), r"empty \(0 bytes\)")
    add(und_row("b_trpng", "trunc.png"), r"truncated PNG")
    add(und_row("b_trjpg", "trunc.jpg"), r"truncated JPEG")
    add(und_row("b_text", "text.png"), r"not a recognised image format")
    add(und_row("b_bomb", "bomb.png"), r"decompression bomb")
    add(good(4))
    add('{"id": "b_json", "images": ["astronaut.png"], "messages": [', r"bad JSON")
    add('["a", "list", "not", "an", "object"]', r"expected a JSON object")
    add({"source": "test", "images": ["astronaut.png"],
         "messages": [{"role": "user", "content": "<image>\nq"}, {"role": "assistant", "content": "a"}]},
        r"missing field 'id'")
    add({**und_row("b_noms", "astronaut.png"), "messages": None}, r"missing field 'messages'")
    add({**und_row("b_msgtype", "astronaut.png"), "messages": "hello"}, r"'messages' should be list")
    add({**und_row("b_contenttype", "astronaut.png"),
         "messages": [{"role": "user", "content": ["<image>"]}, {"role": "assistant", "content": "a"}]},
        r"'content' should be a string")
    add({**und_row("b_idtype", "astronaut.png"), "id": {"x": 1}}, r"'id' should be")
    add({**und_row("b_idbool", "astronaut.png"), "id": True}, r"'id' should be")
    add({**und_row("b_imgs", "astronaut.png"), "images": {"0": "astronaut.png"}}, r"'images' should be a list")
    add(good(5))
    add({**und_row("b_count", "astronaut.png"), "images": ["astronaut.png", "coffee.jpg"]},
        r"placeholder/image count mismatch: 1 <image> tag\(s\) in messages but 2 image\(s\)")
    add({**und_row("b_role", "astronaut.png"),
         "messages": [{"role": "human", "content": "<image>\nq"}, {"role": "assistant", "content": "a"}]},
        r"unknown role")
    add({**und_row("b_empty", "astronaut.png"), "messages": []}, r"'messages' is empty")
    add(und_row("good1", "chelsea.png"), r"duplicate id 'good1'")
    add({**und_row("b_surrogate", "astronaut.png"),
         "messages": [{"role": "user", "content": "<image>\nq \ud800"}, {"role": "assistant", "content": "a"}]},
        r"not valid UTF-8")
    add({**und_row("b_sur_id\ud800", "astronaut.png")}, r"id: text is not valid UTF-8")
    add({**und_row("b_nul", "astronaut.png"), "images": ["astr\u0000onaut.png"]}, r"NUL")
    add(good(6))
    return rows, bad, goods


def test_bad_lines_become_rejects_and_the_run_goes_on(tmp_path, images):
    rows, bad, goods = _bad_and_good(tmp_path)
    src = tmp_path / "mixed.jsonl"
    with open(src, "w", encoding="utf-8", errors="surrogatepass") as f:  # json.dumps escapes \ud800
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    out = tmp_path / "out"
    counts = convert("nexus-gen-jsonl", src, out, "--images-root", images)
    assert counts == {"input": len(rows), "accepted": len(goods), "rejected": len(bad)}
    rej = rejects(out)
    by_line = {r["line"]: r for r in rej}
    assert len(by_line) == len(rej) == len(bad)
    assert set(by_line) == set(bad)
    import re

    for line, pattern in bad.items():
        r = by_line[line]
        assert r["file"] == "mixed.jsonl"
        assert re.search(pattern, r["reason"]), (line, r["reason"], pattern)
    assert by_line[min(k for k, v in bad.items() if "duplicate" in v)]["id"] == "good1"
    got = samples(out)
    assert sorted(s["meta"]["input"]["line"] for s in got) == sorted(goods)
    assert {s["task"] for s in got} == {"understanding", "generation", "editing"}
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    man = json.loads((out / "manifest.json").read_text())
    assert man["total_rows"] == len(goods)


def test_jsonl_encoding_edge_cases(tmp_path, images):
    """BOM, CRLF line endings, blank lines and a non-UTF-8 line: good lines all accepted, the bad
    line named by its physical line number."""
    lines = [json.dumps(und_row("a", "astronaut.png")), "", "   ", json.dumps(und_row("b", "coffee.jpg"))]
    raw = ("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8")
    raw += b'{"id": "c\xff", "images": []}\r\n' + json.dumps(und_row("d", "chelsea.png")).encode() + b"\r\n"
    src = tmp_path / "crlf.jsonl"
    src.write_bytes(raw)
    out = tmp_path / "o"
    counts = convert("nexus-gen-jsonl", src, out, "--images-root", images)
    assert counts == {"input": 4, "accepted": 3, "rejected": 1}
    assert [s["id"] for s in samples(out)] == ["a", "b", "d"]
    assert [(r["line"], "UTF-8" in r["reason"]) for r in rejects(out)] == [(5, True)]
    assert samples(out)[0]["messages"][0]["content"] == "<image>\nWhat is in the picture?"


def test_json_array_with_bom_and_object_file(tmp_path, images):
    src = tmp_path / "arr.json"
    src.write_bytes(("\ufeff" + json.dumps([und_row("a", "astronaut.png"), 5, und_row("b", "coffee.jpg")]))
                    .encode("utf-8"))
    out = tmp_path / "o"
    assert convert("nexus-gen-jsonl", src, out, "--images-root", images) == \
        {"input": 3, "accepted": 2, "rejected": 1}
    assert rejects(out)[0]["line"] == 2
    one = tmp_path / "one.json"
    one.write_text(json.dumps(und_row("solo", "astronaut.png")))
    assert convert("nexus-gen-jsonl", one, tmp_path / "o2", "--images-root", images)["accepted"] == 1
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "x"},\n {"id": ')
    res = cli("convert", "nexus-gen-jsonl", broken, "--out", tmp_path / "o3", "--images-root", images)
    # streamed: the whole first item is read (and rejected for what it lacks), the cut one is a reject
    assert res.exit_code == 1 and last_json(res) == {"input": 2, "accepted": 0, "rejected": 2}
    first, cut = rejects(tmp_path / "o3")
    assert first["line"] == 1 and "missing field 'messages'" in first["reason"]
    assert "bad JSON" in cut["reason"] and cut["line"] == 2


def test_int_ids_and_null_source(tmp_path, images):
    src = write_jsonl(tmp_path / "ids.jsonl", [
        {**und_row("x", "astronaut.png"), "id": 17},
        {**und_row("x", "astronaut.png"), "id": "17"},  # the same id once stringified
        {**und_row("x", "astronaut.png"), "id": 1.5},
        {**und_row("y", "astronaut.png"), "id": ""},
    ])
    out = tmp_path / "o"
    counts = convert("nexus-gen-jsonl", src, out, "--images-root", images)
    assert counts == {"input": 4, "accepted": 1, "rejected": 3}
    assert samples(out)[0]["id"] == "17"
    reasons = {r["line"]: r["reason"] for r in rejects(out)}
    assert "duplicate id '17'" in reasons[2]
    assert "'id' should be" in reasons[3]
    assert "id" in reasons[4]


# --- options fail fast -----------------------------------------------------------------------

@pytest.fixture()
def good_input(tmp_path, images) -> Path:
    return write_jsonl(tmp_path / "good.jsonl", [und_row("a", "astronaut.png")])


@pytest.mark.parametrize("args,needle", [
    (["convert", "no-such-format", "{inp}"], "unknown format"),
    (["convert", "nexus-gen-jsonl", "{tmp}/missing.jsonl"], "does not exist"),
    (["convert", "nexus-gen-jsonl", "{tmp}/*.nothing"], "no input matches"),
    (["convert", "nexus-gen-jsonl", "{inp}", "--images-root", "{tmp}/nowhere"], "not a directory"),
    (["convert", "nexus-gen-jsonl", "{inp}", "--images-root", "{inp}"], "not a directory"),
    (["convert", "captions", "{inp}", "--language", "fr"], "choose en or zh"),
    (["convert", "nexus-gen-jsonl", "{inp}", "--language", "zh"], "--language applies"),
    (["convert", "nexus-gen-jsonl", "{inp}", "--shard-size", "lots"], "is not a size"),
    (["convert", "nexus-gen-jsonl", "{inp}", "--shard-size", "0"], "positive"),
    (["convert", "nexus-gen-jsonl", "{inp}", "--shard-size", "-5MB"], "positive"),
    (["convert", "nexus-gen-jsonl", "{inp}", "--shard-size", "infMB"], "size"),
    (["convert", "nexus-gen-jsonl", "{inp}", "--verify", "deep"], "choose header or full"),
    (["convert", "nexus-gen-jsonl", "{inp}", "--workers", "-1"], "workers"),
    (["convert", "nexus-gen-jsonl", "{tmp}/table.txt"], "unknown table format"),
    (["convert", "edit-pairs", "{tmp}/broken.parquet"], "parquet"),
])
def test_bad_options_fail_before_any_work(tmp_path, good_input, args, needle):
    (tmp_path / "table.txt").write_text("id\n1\n")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    out = tmp_path / "out"
    argv = [a.format(inp=good_input, tmp=tmp_path) for a in args] + ["--out", str(out)]
    res = cli(*argv)
    assert res.exit_code != 0
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), repr(res.exception)
    assert needle.lower() in flat(res.output), res.output
    assert not out.exists()


def test_out_that_is_a_file_fails_clearly(tmp_path, good_input):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    res = cli("convert", "nexus-gen-jsonl", good_input, "--out", out)
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), repr(res.exception)
    assert "not a directory" in flat(res.output)
    assert out.read_text() == "not a folder"


def test_deeply_nested_json_is_a_reject_not_a_crash(tmp_path, images):
    deep = "[" * 100000 + "]" * 100000
    src = tmp_path / "deep.jsonl"
    src.write_text(deep + "\n" + json.dumps(und_row("ok", "astronaut.png")) + "\n")
    out = tmp_path / "o"
    assert convert("nexus-gen-jsonl", src, out, "--images-root", images) == {"input": 2, "accepted": 1, "rejected": 1}
    assert rejects(out)[0]["line"] == 1 and "nested too deeply" in rejects(out)[0]["reason"]
    whole = tmp_path / "deep.json"
    whole.write_text(deep)
    res = cli("convert", "nexus-gen-jsonl", whole, "--out", tmp_path / "o2", "--images-root", images)
    assert res.exit_code == 1 and last_json(res) == {"input": 1, "accepted": 0, "rejected": 1}
    assert "nested too deeply" in rejects(tmp_path / "o2")[0]["reason"]


def test_json_lines_under_a_json_name(tmp_path, images):
    src = tmp_path / "lines.json"
    src.write_text(json.dumps(und_row("a", "astronaut.png")) + "\n" + json.dumps(und_row("b", "coffee.jpg")) + "\n")
    assert convert("nexus-gen-jsonl", src, tmp_path / "o", "--images-root", images) == \
        {"input": 2, "accepted": 2, "rejected": 0}


def test_converting_a_shard_into_its_own_folder_is_refused(tmp_path, images):
    out = tmp_path / "o"
    convert("nexus-gen-jsonl", write_jsonl(tmp_path / "in.jsonl", [und_row("a", "astronaut.png")]), out,
            "--images-root", images)
    shard = out / "train-00000.parquet"
    before = shard.read_bytes()
    res = cli("convert", "nexus-gen-jsonl", shard, "--out", out)
    assert res.exit_code != 0 and "replaces" in flat(res.output)
    assert shard.read_bytes() == before
    assert convert("nexus-gen-jsonl", shard, tmp_path / "again")["accepted"] == 1


def test_input_file_name_that_is_not_utf8(tmp_path, images):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.jsonl"  # a latin-1 file name
    with open(raw, "w", encoding="utf-8") as f:
        f.write(json.dumps(und_row("a", "astronaut.png")) + "\n")
    out = tmp_path / "o"
    assert convert("nexus-gen-jsonl", os.fsdecode(raw), out, "--images-root", images) == \
        {"input": 1, "accepted": 1, "rejected": 0}
    (s,) = samples(out)
    assert s["meta"]["input"]["file"] == "caf\ufffd.jsonl"
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["converted_from"]["input"] == "caf\ufffd.jsonl"
