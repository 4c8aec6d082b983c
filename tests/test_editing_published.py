"""Readers of the published editing benchmarks on small synthetic tables in their own schema
(GEdit-Bench arrow, ImgEdit basic_edit.json, MagicBrush, Emu Edit), their bad inputs, the GEdit
averaging and the ImgEdit score reading, each against hand-computed values."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from eval.editing import gedit, imgedit
from eval.editing.edit_items import BenchmarkError
from eval.editing.edit_run import EditingConfig, check, edit_step, prepare
from eval.editing.edit_sources import detect_format, load_items


def _png(color=(200, 10, 10), size=(24, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _gedit_rows():
    img = {"bytes": _png(), "path": None}
    rows = [
        {"task_type": "subject-add", "key": "k1", "instruction": "add a cat", "instruction_language": "en",
         "input_image": img, "input_image_raw": img, "Intersection_exist": True},
        {"task_type": "subject-add", "key": "k1", "instruction": "加一只猫", "instruction_language": "cn",
         "input_image": img, "input_image_raw": img, "Intersection_exist": True},
        {"task_type": "color_alter", "key": "k2", "instruction": "make it blue", "instruction_language": "en",
         "input_image": img, "input_image_raw": img, "Intersection_exist": False},
        # bad rows: each skipped with its reason
        {"task_type": "color_alter", "key": "k2", "instruction": "again", "instruction_language": "en",
         "input_image": img, "input_image_raw": img, "Intersection_exist": False},
        {"task_type": "subject_add", "key": "k3", "instruction": "x", "instruction_language": "en",
         "input_image": img, "input_image_raw": img, "Intersection_exist": False},
        {"task_type": "ps_human", "key": "k4", "instruction": "x", "instruction_language": "zh",
         "input_image": img, "input_image_raw": img, "Intersection_exist": False},
        {"task_type": "ps_human", "key": "k5", "instruction": "x", "instruction_language": "en",
         "input_image": None, "input_image_raw": None, "Intersection_exist": False},
    ]
    return rows


def _write_arrow(path: Path, rows, drop: str = "") -> Path:
    """A `datasets`-style arrow file (IPC stream), as GEdit-Bench's `train` split is stored."""
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [("task_type", pa.string()), ("key", pa.string()), ("instruction", pa.string()),
              ("instruction_language", pa.string()), ("input_image", image),
              ("input_image_raw", image), ("Intersection_exist", pa.bool_())]
    schema = pa.schema([f for f in fields if f[0] != drop])
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != drop} for r in rows], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
        w.write_table(table)
    return path


def test_gedit_reader_follows_the_published_layout(tmp_path):
    table = _write_arrow(tmp_path / "gedit" / "data-00000-of-00001.arrow", _gedit_rows())
    assert detect_format(str(tmp_path / "gedit")) == "gedit"
    loaded = gedit.read_gedit(tmp_path / "gedit", "mymodel")
    assert [i.id for i in loaded.items] == ["subject-add/en/k1", "subject-add/cn/k1", "color_alter/en/k2"]
    first = loaded.items[0]
    assert first.edited_path == "mymodel/fullset/subject-add/en/k1.png"
    assert first.extra["source_path"] == "mymodel/fullset/subject-add/en/k1_SRCIMG.png"
    assert first.extra["intersection_exist"] is True and first.language == "en"
    reasons = {s["reason"] for s in loaded.skipped}
    assert "duplicate key" in reasons
    assert any(r.startswith("unknown task_type 'subject_add'") for r in reasons)
    assert any(r.startswith("unknown instruction_language 'zh'") for r in reasons)
    assert "missing input_image" in reasons
    assert len(loaded.items) + len(loaded.skipped) == 7  # every row is an item or a counted skip
    assert [i.id for i in gedit.read_gedit(table, "m", language="cn").items] == ["subject-add/cn/k1"]
    with pytest.raises(BenchmarkError, match="`cn`, not `zh`"):
        gedit.read_gedit(table, "m", language="zh")


def test_gedit_table_missing_a_column_is_a_clear_error(tmp_path):
    table = _write_arrow(tmp_path / "g.arrow", _gedit_rows(), drop="Intersection_exist")
    with pytest.raises(BenchmarkError, match="GEdit-Bench table .* lacks column\\(s\\) Intersection_exist"):
        gedit.read_gedit(table, "m")


def test_gedit_edits_land_where_the_official_scorer_reads_them(tmp_path):
    table = _write_arrow(tmp_path / "g.arrow", _gedit_rows())
    plan = check(EditingConfig(data=str(table), editor="identity", out=tmp_path / "run"))
    prepare(plan)
    edit_step(plan)
    assert (plan.out / "identity/fullset/subject-add/cn/k1.png").is_file()
    assert (plan.out / "identity/fullset/subject-add/cn/k1_SRCIMG.png").read_bytes()  # source beside it
    skipped = [json.loads(x) for x in (plan.out / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 4


def test_gedit_averages_per_task_then_over_tasks_by_hand():
    rows = [  # (task, SC, PQ, intersection)
        ("subject-add", 8, 2, True), ("subject-add", 4, 9, False),
        ("color_alter", 6, 6, True),
    ]
    data = [{"task_type": t, "language": "en", "sc": s, "pq": p, "intersection_exist": i} for t, s, p, i in rows]
    data.append({"task_type": "color_alter", "language": "cn", "sc": 0, "pq": 0, "intersection_exist": True})
    agg = gedit.aggregate(data, "en")
    # per item O = sqrt(SC*PQ): 4, 6, 6; per task means, then the mean over the two tasks
    assert agg["tasks"]["subject-add"] == {"n": 2, "SC": 6.0, "PQ": 5.5, "O": 5.0}
    assert agg["tasks"]["color_alter"] == {"n": 1, "SC": 6.0, "PQ": 6.0, "O": 6.0}
    assert agg["average"] == {"SC": 6.0, "PQ": 5.75, "O": 5.5}  # not the mean over 3 items (5.333)
    assert agg["intersection"]["average"] == {"SC": 7.0, "PQ": 4.0, "O": 5.0}
    assert len(agg["missing_tasks"]) == 9
    # SC / PQ of one item: the minimum of each score list, O their geometric mean
    assert gedit.item_scores([7, 3], [9, 5]) == (3.0, 5.0, math.sqrt(15))


def test_gedit_csvs_have_the_official_columns(tmp_path):
    rows = [{"task_type": "subject-add", "source_image": "a_SRCIMG.png", "edited_image": "a.png",
             "instruction": "add", "sementics_score": 7.0, "quality_score": 8.0,
             "intersection_exist": True, "instruction_language": "en"}]
    paths = gedit.write_csvs(rows, tmp_path, "m")
    assert [p.name for p in paths] == ["m_subject-add_gpt_score.csv", "m_combined_gpt_score.csv"]
    with paths[0].open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["source_image", "edited_image", "instruction", "sementics_score",
                                     "quality_score", "intersection_exist", "instruction_language"]
        assert next(reader)["sementics_score"] == "7.0"


def test_imgedit_reader_and_its_bad_entries(tmp_path):
    (tmp_path / "orig" / "animal").mkdir(parents=True)
    (tmp_path / "orig" / "animal" / "000000001.jpg").write_bytes(_png())
    # written by hand: a repeated key that json.load would silently collapse
    (tmp_path / "basic_edit.json").write_text("""{
      "12": {"id": "animal/000000001.jpg", "prompt": "Add a hat.", "edit_type": "add"},
      "7": {"id": "animal/000000001.jpg", "prompt": "Make it pop art.", "edit_type": "style"},
      "12": {"id": "animal/000000001.jpg", "prompt": "again", "edit_type": "add"},
      "x1": {"id": "animal/000000001.jpg", "prompt": "p", "edit_type": "add"},
      "9": {"id": "animal/000000009.jpg", "prompt": "Remove it.", "edit_type": "remove"},
      "10": {"id": "animal/000000001.jpg", "edit_type": "remove"}
    }""")
    assert detect_format(str(tmp_path / "basic_edit.json")) == "imgedit"
    loaded = load_items(str(tmp_path / "basic_edit.json"), images_root=tmp_path / "orig")
    assert [(i.id, i.edit_type, i.edited_path) for i in loaded.items] == [
        ("12", "add", "edited/12.png"), ("7", "style", "edited/7.png")]
    assert {s["id"]: s["reason"] for s in loaded.skipped} == {
        "12": "duplicate key", "x1": "key is not a numeric string",
        "9": "missing image animal/000000009.jpg", "10": "missing field(s) prompt"}


def test_imgedit_scores_are_read_and_averaged_as_officially():
    answer = "Brief reasoning: fine.\nPrompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Integrity: 3"
    assert imgedit.criterion_scores(answer) == [4, 3, 3]
    assert imgedit.criterion_scores("Prompt Compliance: 4.5\nScore:3\nQuality: 2") == [2]  # digits only
    assert imgedit.item_score([4, 3, 3]) == 3.33
    agg = imgedit.aggregate([{"edit_type": "add", "score": 3.33}, {"edit_type": "add", "score": 5.0},
                             {"edit_type": "style", "score": 2.0}])
    assert agg["types"] == {"add": {"n": 2, "score": 4.17}, "style": {"n": 1, "score": 2.0}}
    assert agg["overall"] == pytest.approx((4.17 + 2.0) / 2)


def test_magicbrush_and_emu_edit_tables(tmp_path):
    img = {"bytes": _png(), "path": None}
    mb = [{"img_id": "1", "turn_index": 1, "source_img": img, "mask_img": img, "instruction": "a",
           "target_img": img},
          {"img_id": "1", "turn_index": 1, "source_img": img, "mask_img": img, "instruction": "b",
           "target_img": img},
          {"img_id": "2", "turn_index": 2, "source_img": img, "mask_img": img, "instruction": "c",
           "target_img": None}]
    pq.write_table(pa.Table.from_pylist(mb), tmp_path / "mb.parquet")
    loaded = load_items(str(tmp_path / "mb.parquet"))
    assert loaded.kind == "magicbrush" and [i.id for i in loaded.items] == ["1-1"]
    assert sorted(s["reason"] for s in loaded.skipped) == ["duplicate id (img_id, turn_index)", "missing target_img"]
    emu = [{"instruction": "make it snow", "image": img, "task": "global", "split": "test", "idx": 3,
            "hash": "h", "input_caption": "a road", "output_caption": "a snowy road"}]
    emu += [dict(emu[0], instruction="again"), dict(emu[0], idx=4, instruction="  "),
            dict(emu[0], idx=5, image=None)]
    pq.write_table(pa.Table.from_pylist(emu), tmp_path / "emu.parquet")
    loaded = load_items(str(tmp_path / "emu.parquet"))
    assert [i.id for i in loaded.items] == ["test-3"] and loaded.items[0].instruction == "make it snow"
    assert [(s["id"], s["reason"]) for s in loaded.skipped] == \
        [("test-3", "duplicate id (split, idx)"), ("test-4", "empty instruction"), ("test-5", "missing image")]
    item = loaded.items[0]
    assert (item.id, item.edit_type, item.target, item.source_caption, item.target_caption) == \
        ("test-3", "global", None, "a road", "a snowy road")
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in emu[0].items() if k != "output_caption"}]),
                   tmp_path / "emu2.parquet")
    with pytest.raises(BenchmarkError, match="Emu Edit table .* lacks column\\(s\\) output_caption"):
        load_items(str(tmp_path / "emu2.parquet"), "emu-edit")


def test_a_table_of_nothing_usable_fails_before_any_work(tmp_path):
    rows = [r for r in _gedit_rows() if r["instruction_language"] == "zh"]
    table = _write_arrow(tmp_path / "g.arrow", rows)
    with pytest.raises(ValueError, match="no usable edit items \\(1 skipped"):
        check(EditingConfig(data=str(table), editor="identity", out=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_unified_shards_in_one_language_with_reverse_directions_named(tmp_path):
    from nexus_gen.data.shards import ShardWriter
    from nexus_gen.data.templates import editing_messages

    red, blue = {"bytes": _png((200, 10, 10)), "path": None}, {"bytes": _png((10, 10, 200)), "path": None}

    def sample(sid, lang, direction, images, caps=("a red square", "a blue square")):
        return {"id": sid, "source": "t", "task": "editing", "language": lang,
                "messages": editing_messages("make it blue", lang), "images": images,
                "meta": {"edit_type": "style", "direction": direction, "triplet_id": "t1",
                         "captions": list(caps), "instruction": "make it blue"}}

    with ShardWriter(tmp_path / "shards", prefix="test") as w:
        w.write(sample("t1", "en", "forward", [red, blue]))
        w.write(sample("t1_rev", "en", "reverse", [blue, red], ("a blue square", "a red square")))
        w.write(sample("zh_t1", "zh", "forward", [red, blue]))
    loaded = load_items(str(tmp_path / "shards"))
    assert loaded.kind == "shards"
    assert [(i.id, i.edit_type, i.source_caption) for i in loaded.items] == [
        ("t1", "style", "a red square"), ("t1_rev", "style-reverse", "a blue square")]
    assert [i.id for i in load_items(str(tmp_path / "shards"), language="zh").items] == ["zh_t1"]
