"""Benchmark readers (VLMEvalKit TSV, parquet, build shards) and saved predictions: the published
layouts' rules and every bad input named in issue 12, each a clear error or a counted item."""
from __future__ import annotations

import base64
import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from eval.understanding.benchmark_items import TableError, load_items, read_tsv, select
from eval.understanding.predictions import read_predictions


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


RED, BLUE = _png((255, 0, 0)), _png((0, 0, 255))
B64_RED, B64_BLUE = base64.b64encode(RED).decode(), base64.b64encode(BLUE).decode()


def _tsv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)
    return path


def test_vlmevalkit_tsv_image_references_and_mme_pairs(tmp_path):
    """A cell of <= 64 chars is another row's index whose image it reuses; MME pairs its two
    questions by image_path; broken base64 and a reference to nowhere are counted items."""
    p = _tsv(tmp_path / "MME.tsv", ["index", "image", "question", "answer", "category", "image_path"], [
        [0, B64_RED, "Is it red? Please answer yes or no.", "Yes", "color", "color/a.png"],
        [1, "0", "Is it blue? Please answer yes or no.", "No", "color", "color/a.png"],
        [2, "@" * 100, "Q?", "Yes", "color", "color/b.png"],
        [3, "99", "Q?", "No", "color", "color/b.png"],
    ])
    items = read_tsv(p, "mme")
    assert [i.id for i in items] == ["0", "1", "2", "3"]
    assert items[0].images == [RED] and items[1].images == [RED]  # the reference resolved
    assert items[0].answer == "yes" and items[1].answer == "no"
    assert items[0].group == items[1].group == "color/a.png"
    assert "broken base64" in items[2].error
    assert "refers to index '99'" in items[3].error
    assert items[0].prompt == "Is it red? Please answer yes or no."


def test_tsv_missing_column_is_a_clear_error(tmp_path):
    p = _tsv(tmp_path / "bad.tsv", ["index", "image", "question", "category"], [[0, B64_RED, "Q", "c"]])
    with pytest.raises(TableError, match=r"bad.tsv: missing column\(s\) 'answer'"):
        read_tsv(p, "mme")


def test_tsv_answer_outside_options_is_counted(tmp_path):
    p = _tsv(tmp_path / "mc.tsv", ["index", "question", "A", "B", "answer"],
             [[0, "Q", "x", "y", "E"], [1, "Q", "x", "y", "b"]])
    items = read_tsv(p, "mc")
    assert "not one of the options AB" in items[0].error
    assert items[1].answer == "B" and not items[1].error


def test_mmbench_circular_groups_and_vlmevalkit_prompt(tmp_path):
    """Rotations share int(index % 1e6); the prompt is VLMEvalKit's Hint / Question / Options."""
    p = _tsv(tmp_path / "MMBench.tsv", ["index", "image", "question", "hint", "A", "B", "C", "answer",
                                        "category"], [
        [7, B64_BLUE, "Colour?", "Look closely", "red", "blue", "", "B", "attr"],
        [1000007, "7", "Colour?", "", "blue", "red", "", "A", "attr"],
    ])
    items = read_tsv(p, "mmbench")
    assert [i.group for i in items] == ["7", "7"]
    assert items[1].images == [BLUE]
    assert items[0].choices == {"A": "red", "B": "blue"}  # the empty C column is no option
    assert items[0].prompt == ("Hint: Look closely\nQuestion: Colour?\nOptions:\nA. red\nB. blue\n"
                               "Please select the correct answer from the options above. \n")
    assert items[1].prompt.startswith("Question: Colour?\n")


def test_mmbench_non_integer_index_is_a_clear_error(tmp_path):
    p = _tsv(tmp_path / "m.tsv", ["index", "image", "question", "A", "B", "answer"],
             [["q1", B64_RED, "Q", "x", "y", "A"]])
    with pytest.raises(TableError, match="index 'q1' is not a number"):
        read_tsv(p, "mmbench")


def test_parquet_lmms_eval_mme_layout(tmp_path):
    """lmms-eval's MME parquet: `question_id` names the image (shared by its two questions), so
    ids become row numbers and `question_id` pairs them; images are {bytes, path} structs."""
    rows = [{"question_id": "a.png", "image": {"bytes": RED, "path": None}, "question": "Q1",
             "answer": "Yes", "category": "OCR"},
            {"question_id": "a.png", "image": {"bytes": RED, "path": None}, "question": "Q2",
             "answer": "No", "category": "OCR"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mme.parquet")
    items = load_items("mme", str(tmp_path / "mme.parquet"))
    assert [i.id for i in items] == ["0", "1"] and {i.group for i in items} == {"a.png"}
    assert items[0].images == [RED]


def test_parquet_seed_layout(tmp_path):
    rows = [{"question_id": "s1", "question": "What?", "choice_a": "x", "choice_b": "y",
             "choice_c": "z", "choice_d": "w", "answer": "C", "data_type": "image", "image": [RED]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "seed.parquet")
    (it,) = load_items("mc", str(tmp_path / "seed.parquet"))
    assert it.choices == {"A": "x", "B": "y", "C": "z", "D": "w"} and it.answer == "C"
    assert it.prompt.endswith("D. w\nAnswer with the option's letter from the given choices directly.")


def test_build_shards_understanding_samples(tmp_path):
    """`nexus-gen build` understanding samples: question from the user turn, options from its
    'X. text' lines, kind / format from meta.qa."""
    from nexus_gen.data.shards import ShardWriter
    from nexus_gen.data.templates import understanding_messages

    q = "What colour is the star?\nA. red\nB. blue\nAnswer with the option's letter from the given choices directly."
    with ShardWriter(tmp_path / "built") as w:
        w.write({"id": "und_1", "source": "scenes", "task": "understanding", "language": "en",
                 "messages": understanding_messages(q, "B"), "images": [{"bytes": BLUE, "path": None}],
                 "meta": {"qa": {"kind": "color", "format": "mc", "answer_text": "blue"}}})
        w.write({"id": "gen_1", "source": "scenes", "task": "generation", "language": "en",
                 "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "<image>"}],
                 "images": [{"bytes": RED, "path": None}], "meta": {}})
    (it,) = load_items("scenes", str(tmp_path / "built"))
    assert it.id == "und_1" and it.prompt == q and it.answer == "B"
    assert it.choices == {"A": "red", "B": "blue"} and it.category == "color" and it.images == [BLUE]


def test_limit_keeps_groups_whole(tmp_path):
    p = _tsv(tmp_path / "MME.tsv", ["index", "image", "question", "answer", "category", "image_path"],
             [[k, B64_RED if k == 0 else "0", "Q", "Yes", "OCR", f"{k // 2}.png"] for k in range(6)])
    assert [i.id for i in select(read_tsv(p, "mme"), 3)] == ["0", "1", "2", "3"]


def _jsonl(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" if not isinstance(x, str) else x + "\n" for x in lines))
    return path


def test_predictions_duplicate_id_is_an_error(tmp_path):
    p = _jsonl(tmp_path / "p.jsonl", [{"id": "1", "prediction": "A"}, {"id": "1", "prediction": "B"}])
    with pytest.raises(ValueError, match=r"p.jsonl:2: duplicate id '1'"):
        read_predictions(p)


def test_predictions_unknown_id_and_bad_line_are_errors(tmp_path):
    p = _jsonl(tmp_path / "p.jsonl", [{"id": "9", "prediction": "A"}])
    with pytest.raises(ValueError, match="1 id\\(s\\) not in the benchmark"):
        read_predictions(p, ["1", "2"])
    q = _jsonl(tmp_path / "q.jsonl", ["{not json"])
    with pytest.raises(ValueError, match="q.jsonl:1: not JSON"):
        read_predictions(q)
