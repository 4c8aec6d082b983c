"""GenEval scoring around the rules: the summary, the detections file (re-scoring, bad lines),
scoring a layout folder (resume, same bytes) and the real tiny Mask2Former end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.geneval.layout import sample_path, write_metadata
from eval.geneval.rules import ScoringOptions
from eval.geneval.score import rescore_file, score_folder, summarize
from nexus_gen.detection import Detection

DOG = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
TWO_CLOCKS = {"tag": "counting", "include": [{"class": "clock", "count": 2}],
              "exclude": [{"class": "clock", "count": 3}], "prompt": "a photo of two clocks"}
RED_CAR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
           "prompt": "a photo of a red car"}


def row(tag: str, correct: bool, prompt: str) -> dict:
    return {"tag": tag, "correct": correct, "metadata": json.dumps({"tag": tag, "prompt": prompt})}


# ---------------------------------------------------------------- summary


def test_summary_overall_is_unweighted_mean_of_tags():
    rows = [row("single_object", True, "a")] * 3 + [row("single_object", False, "b")] + \
        [row("counting", False, "c"), row("counting", True, "c")]
    s = summarize(rows)
    assert s["single_object"] == 0.75 and s["counting"] == 0.5
    assert s["overall"] == pytest.approx((0.75 + 0.5) / 2)  # not the image mean 4/6
    assert s["correct_images"] == pytest.approx(4 / 6)
    assert s["correct_prompts"] == pytest.approx(2 / 3)  # a yes, b no, c yes (any image)
    assert (s["n_images"], s["n_prompts"]) == (6, 3)
    assert list(s)[:3] == ["overall", "single_object", "counting"]
    with pytest.raises(ValueError, match="no GenEval results"):
        summarize([])


# ---------------------------------------------------------------- re-scoring a detections file


def write_lines(path: Path, objs: list) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


def clocks(*scores: float) -> list[dict]:
    return [{"box": [i * 50, 0, i * 50 + 40, 40], "score": s} for i, s in enumerate(scores)]


def test_rescore_file_official_rows_and_options(tmp_path):
    det = write_lines(tmp_path / "dets.jsonl", [
        {"filename": "x/00000/samples/0000.png", "metadata": DOG,
         "detections": {"dog": [{"box": [0, 0, 10, 10], "score": 0.5}]}},
        {"filename": "x/00001/samples/0000.png", "metadata": TWO_CLOCKS,
         "detections": {"clock": clocks(0.95, 0.92, 0.6)}},
        {"filename": "x/00002/samples/0000.png", "metadata": json.dumps(RED_CAR),  # string form
         "detections": {"car": [{"box": [0, 0, 10, 10], "score": 0.8, "color": "red"}]}},
    ])
    out = tmp_path / "res" / "results.jsonl"
    s = rescore_file(det, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, True, True]
    assert set(rows[0]) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    assert all(isinstance(r["metadata"], str) and isinstance(r["details"], str) for r in rows)
    assert json.loads(rows[2]["metadata"]) == RED_CAR
    assert json.loads(rows[1]["details"]) == {"clock": [[0, 0, 40, 40, 0.95], [50, 0, 90, 40, 0.92]]}
    assert s["overall"] == 1.0 and s["n_images"] == 3

    # other thresholds re-judge the same detections
    s = rescore_file(det, out, ScoringOptions(threshold=0.6, counting_threshold=0.5))
    assert rescore_file(det, tmp_path / "same.jsonl", {"threshold": "0.6",
                                                       "counting_threshold": 0.5}) == s
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["correct"] for r in rows] == [False, False, True]
    assert rows[1]["reason"] == "expected clock<3, found 3"
    assert s["overall"] == pytest.approx(1 / 3) and s["correct_prompts"] == pytest.approx(1 / 3)


class RecordingColors:
    """Stand-in colour classifier (the real CLIP one is tested in test_geneval_color.py): it
    reports the mean colour of the crop as red / blue and records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, int], str, int]] = []

    def classify(self, image, classname, objects):
        self.calls.append((image.size, classname, len(objects)))
        out = []
        for d in objects:
            crop = np.asarray(image.crop(tuple(int(v) for v in d.box)), dtype=float)
            r, _, b = crop.reshape(-1, 3).mean(0)
            out.append("red" if r > b else "blue")
        return out


def test_rescore_classifies_missing_colours_on_the_image(tmp_path):
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :40, 0] = 255  # left half red, right half blue
    img[:, 40:, 2] = 255
    p = tmp_path / "moved" / "00000" / "samples" / "0000.png"
    p.parent.mkdir(parents=True)
    Image.fromarray(img).save(p)
    det = write_lines(tmp_path / "moved" / "dets.jsonl", [
        # the filename points at the original place; the layout tail next to the file is found
        {"filename": "/gone/00000/samples/0000.png", "metadata": RED_CAR,
         "detections": {"car": [{"box": [0, 0, 40, 40], "score": 0.9},
                                {"box": [40, 0, 80, 40], "score": 0.8}]}},
    ])
    fake = RecordingColors()
    s = rescore_file(det, tmp_path / "r.jsonl", classifier=fake)
    assert s["overall"] == 1.0 and fake.calls == [((80, 40), "car", 1)]
    det2 = write_lines(tmp_path / "moved" / "dets2.jsonl", [
        {"filename": "/gone/00000/samples/0000.png", "metadata": RED_CAR,
         "detections": {"car": [{"box": [40, 0, 80, 40], "score": 0.9}]}}])
    assert rescore_file(det2, tmp_path / "r.jsonl", classifier=fake)["overall"] == 0.0
    missing = write_lines(tmp_path / "dets3.jsonl", [
        {"filename": "/gone/00009/samples/0000.png", "metadata": RED_CAR,
         "detections": {"car": [{"box": [40, 0, 80, 40], "score": 0.9}]}}])
    with pytest.raises(FileNotFoundError, match="00009"):
        rescore_file(missing, tmp_path / "r.jsonl", classifier=fake)


GOOD = {"filename": "a.png", "metadata": DOG, "detections": {"dog": [{"box": [0, 0, 1, 1], "score": 0.5}]}}


@pytest.mark.parametrize("bad,msg", [
    ("{not json", "not valid JSON"),
    ({"metadata": DOG, "detections": {}}, "'filename'"),
    ({"filename": "b.png", "metadata": {"tag": "x"}, "detections": {}}, "bad 'metadata'"),
    ({"filename": "b.png", "metadata": DOG, "detections": []}, "'detections' must be an object"),
    ({"filename": "b.png", "metadata": DOG, "detections": {"dog": [{"box": [0, 0, 1], "score": 1}]}},
     "box"),
    ({"filename": "b.png", "metadata": DOG, "detections": {"dog": [{"box": [0, 0, 1, 1]}]}},
     "'score'"),
    ({"filename": "b.png", "metadata": DOG, "detections": {"dog": [{"box": [0, 0, 1, 1], "score": 7}]}},
     "not in \\[0, 1\\]"),
    ({"filename": "b.png", "metadata": DOG,
      "detections": {"dog": [{"box": [0, 0, 1, 1], "score": 0.5, "color": "grey"}]}}, "colour 'grey'"),
    ('{"filename": "b.png", "metadata": %s, "detections": {"dog": [{"box": [0, NaN, 1, 1], '
     '"score": 0.5}]}}' % json.dumps(DOG), "non-finite"),
    (GOOD, "repeats image"),
])
def test_bad_detection_lines_name_file_and_line(tmp_path, bad, msg):
    det = write_lines(tmp_path / "dets.jsonl", [GOOD, bad])
    with pytest.raises(ValueError, match=msg) as e:
        rescore_file(det, tmp_path / "r.jsonl")
    if "repeats" not in msg:
        assert f"{det}:2:" in str(e.value)
    assert not (tmp_path / "r.jsonl").exists()


# ---------------------------------------------------------------- scoring a layout folder


class TableDetector:
    """Stand-in detector for the folder logic (the real Mask2Former runs in the last test):
    returns fixed detections by the image's top-left pixel value, and counts its calls."""

    def __init__(self, table: dict[int, list[Detection]], fail_after: int | None = None) -> None:
        self.table, self.fail_after, self.calls = table, fail_after, 0

    def __call__(self, image):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        key = int(np.asarray(image)[0, 0, 0])
        return [Detection(d.label, d.box, d.score, color=d.color) for d in self.table[key]]


def make_folder(root: Path) -> tuple[Path, TableDetector]:
    out = root / "gen"
    table: dict[int, list[Detection]] = {}
    metas = [DOG, TWO_CLOCKS, RED_CAR]
    dets = [
        [[Detection("dog", (0, 0, 10, 10), 0.9)], [Detection("cat", (0, 0, 10, 10), 0.9)]],
        [[Detection("clock", (0, 0, 9, 9), 0.95), Detection("clock", (20, 0, 29, 9), 0.93)],
         [Detection("clock", (0, 0, 9, 9), 0.95)]],
        [[Detection("car", (0, 0, 16, 16), 0.9, color="red")],
         [Detection("car", (0, 0, 16, 16), 0.9, color="green")]],
    ]
    for i, meta in enumerate(metas):
        write_metadata(out, i, meta)
        for n in range(2):
            key = 10 * i + n
            Image.new("RGB", (32, 32), (key, 0, 0)).save(sample_path(out, i, n))
            table[key] = dets[i][n]
    return out, TableDetector(table)


def test_score_folder_writes_detections_and_results(tmp_path):
    out, detector = make_folder(tmp_path)
    rows, s = score_folder(out, detector)
    assert [r["correct"] for r in rows] == [True, False, True, False, True, False]
    assert rows[3]["reason"] == "expected clock>=2, found 1"
    assert s["overall"] == pytest.approx(0.5) and s["correct_prompts"] == 1.0
    recs = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [r["filename"] for r in recs] == [r["filename"] for r in rows]
    assert set(recs[0]) == {"filename", "metadata", "detections"}
    assert recs[4]["detections"] == {"car": [{"box": [0.0, 0.0, 16.0, 16.0], "score": 0.9,
                                              "color": "red"}]}
    assert recs[2]["metadata"] == TWO_CLOCKS  # an object here (it is a JSON string in results)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert results == rows
    # the written detections re-score to the same verdicts
    assert rescore_file(out / "detections.jsonl", tmp_path / "again.jsonl") == s


def test_score_folder_resumes_and_gives_the_same_bytes(tmp_path):
    ref, det_ref = make_folder(tmp_path / "a")
    score_folder(ref, det_ref)
    out, detector = make_folder(tmp_path / "b")
    detector.fail_after = 3
    with pytest.raises(KeyboardInterrupt):
        score_folder(out, detector)
    assert len((out / "detections.jsonl").read_text().splitlines()) == 3
    # a writer killed mid-line leaves a partial last line: it is dropped and redone
    with (out / "detections.jsonl").open("a") as f:
        f.write('{"filename": "half')
    detector.fail_after, detector.calls = None, 0
    rows, _ = score_folder(out, detector)
    assert detector.calls == 3  # only the missing images were detected
    for name in ("detections.jsonl", "results.jsonl"):
        a = (ref / name).read_text().replace(str(ref), "OUT")
        b = (out / name).read_text().replace(str(out), "OUT")
        assert a == b
    detector.calls = 0
    score_folder(out, detector)
    assert detector.calls == 0  # everything already detected


def test_score_folder_selected_prompts_keep_other_detections(tmp_path):
    out, detector = make_folder(tmp_path)
    score_folder(out, detector)
    detector.calls = 0
    rows, s = score_folder(out, detector, indices=[1, 2])
    assert detector.calls == 0 and len(rows) == 4 and s["n_prompts"] == 2
    assert [r["tag"] for r in rows] == ["counting", "counting", "colors", "colors"]
    assert len((out / "detections.jsonl").read_text().splitlines()) == 6  # nothing dropped
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    with pytest.raises(ValueError, match="among the selected prompts"):
        score_folder(out, detector, indices=[7])


def test_score_folder_rejects_empty_and_needs_colours(tmp_path):
    write_metadata(tmp_path / "e", 0, DOG)
    with pytest.raises(ValueError, match="has no images"):
        score_folder(tmp_path / "e", TableDetector({}))
    out, detector = make_folder(tmp_path)
    for d in detector.table[20] + detector.table[21]:
        d.color = None  # the detector knows no colour: the classifier must answer
    fake = RecordingColors()
    rows, _ = score_folder(out, detector, classifier=fake)
    assert [c[1:] for c in fake.calls] == [("car", 1), ("car", 1)]
    assert [r["correct"] for r in rows[4:]] == [True, True]  # both crops are pure red


def test_score_folder_with_tiny_mask2former(tmp_path):
    from skimage import data

    from eval.geneval.mask2former import load_detector

    detector = load_detector("tiny")
    out = tmp_path / "gen"
    write_metadata(out, 0, DOG)
    write_metadata(out, 1, TWO_CLOCKS)
    Image.fromarray(data.astronaut()).resize((96, 96)).save(sample_path(out, 0, 0))
    Image.fromarray(data.coffee()).resize((120, 80)).save(sample_path(out, 1, 0))
    rows, s = score_folder(out, detector)
    recs = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and set(s) >= {"overall", "single_object", "counting"}
    for rec, (w, h) in zip(recs, [(96, 96), (120, 80)]):
        boxes = [d for dets in rec["detections"].values() for d in dets]
        assert len(boxes) == 100  # the official top-100 (query, class) candidates
        for d in boxes:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h and 0 <= d["score"] <= 1
        assert set(rec["detections"]) <= set(
            (Path("eval/geneval/prompts/object_names.txt")).read_text().splitlines())
    # the random model is unsure of everything: nothing passes 0.3; with no threshold the
    # top candidates are kept and judged (at most 16 per class)
    assert all(json.loads(r["details"]) == {} for r in rows)
    rescore_file(out / "detections.jsonl", tmp_path / "r.jsonl",
                 ScoringOptions(threshold=0.0, counting_threshold=0.0))
    res = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    kept = json.loads(res[0]["details"])
    assert kept and all(1 <= len(v) <= 16 for v in kept.values())
    # same image, same detections: deterministic bytes
    first = (out / "detections.jsonl").read_bytes()
    (out / "detections.jsonl").unlink()
    score_folder(out, detector)
    assert (out / "detections.jsonl").read_bytes() == first


def test_an_interrupted_metadata_write_leaves_the_old_record_and_no_temp_file(tmp_path, monkeypatch):
    """Ctrl-C while a prompt's metadata.jsonl is written (simulated: the write stops half-way with
    KeyboardInterrupt): the record there before is intact, nothing half-written stays behind, and a
    resumed run can read it."""
    from pathlib import Path

    from eval.geneval import layout

    layout.write_metadata(tmp_path, 3, {"prompt": "a photo of a cat", "tag": "single_object"})
    real = Path.write_text

    def half(self, text, *a, **k):
        real(self, text[: len(text) // 2], *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half)
    with pytest.raises(KeyboardInterrupt):
        layout.write_metadata(tmp_path, 3, {"prompt": "a photo of a dog", "tag": "single_object"})
    monkeypatch.undo()
    assert layout.read_metadata(tmp_path, 3) == {"prompt": "a photo of a cat", "tag": "single_object"}
    assert sorted(p.name for p in layout.prompt_dir(tmp_path, 3).iterdir()) == ["metadata.jsonl", "samples"]
