"""GenEval's official rules on hand-built detections: every include / exclude / count / colour /
position branch and the threshold edges (no model needed: colours are injected)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.geneval.rules import (
    COLORS, ScoringOptions, box_iou, evaluate, judge, keep_detections, relative_position,
    result_row, validate_metadata,
)
from nexus_gen.detection import Detection

PROMPTS = Path(__file__).resolve().parents[1] / "eval" / "geneval" / "prompts"


def det(label: str, box=(0, 0, 10, 10), score: float = 0.95, color: str | None = None) -> Detection:
    return Detection(label=label, box=tuple(float(v) for v in box), score=score, color=color)


def single(cls: str = "dog", tag: str = "single_object", count: int = 1, **extra) -> dict:
    req = {"class": cls, "count": count, **extra}
    return {"tag": tag, "include": [req], "prompt": f"a photo of {cls}"}


# ---------------------------------------------------------------- keeping detections


def test_threshold_is_strict_and_counting_uses_its_own():
    dets = [det("dog", score=0.3), det("dog", score=0.30001), det("cat", score=0.9)]
    kept = keep_detections(dets, "single_object")
    assert [d.score for d in kept["dog"]] == [0.30001]
    assert [d.score for d in kept["cat"]] == [0.9]
    kept = keep_detections(dets, "counting")
    assert kept == {}  # 0.9 is not > 0.9, and the dogs are far below
    kept = keep_detections([det("cat", score=0.90001)], "counting")
    assert len(kept["cat"]) == 1


def test_counting_threshold_applies_only_to_counting_tag():
    meta = {"tag": "counting", "include": [{"class": "dog", "count": 2}],
            "exclude": [{"class": "dog", "count": 3}], "prompt": "a photo of two dogs"}
    dets = [det("dog", score=0.95), det("dog", score=0.85)]
    v = judge(meta, dets)
    assert not v.correct and v.reason == "expected dog>=2, found 1"
    v = judge({**meta, "tag": "two_object"}, dets)  # same clauses under the 0.3 threshold
    assert v.correct and v.reason == ""


def test_custom_thresholds():
    dets = [det("dog", score=0.5)]
    assert judge(single(), dets, options=ScoringOptions(threshold=0.5)).correct is False
    assert judge(single(), dets, options=ScoringOptions(threshold=0.49)).correct is True
    cnt = single(tag="counting")
    assert judge(cnt, dets, options=ScoringOptions(counting_threshold=0.4)).correct is True


def test_at_most_max_objects_per_class_by_score():
    dets = [det("car", box=(i, 0, i + 5, 5), score=0.4 + i * 0.01) for i in range(20)]
    kept = keep_detections(dets, "single_object")
    assert len(kept["car"]) == 16
    assert [round(d.score, 2) for d in kept["car"]] == [round(0.59 - i * 0.01, 2) for i in range(16)]
    # an exclude needing 17 can therefore never fire with the default max_objects
    meta = {"tag": "single_object", "include": [{"class": "car", "count": 1}],
            "exclude": [{"class": "car", "count": 17}], "prompt": "cars"}
    assert judge(meta, dets).correct
    assert not judge(meta, dets, options=ScoringOptions(max_objects=20)).correct
    assert len(keep_detections(dets, "single_object", ScoringOptions(max_objects=3))["car"]) == 3


def test_nms_off_by_default_and_per_class_when_on():
    same = [det("dog", score=0.9), det("dog", score=0.8), det("cat", score=0.7)]
    assert len(keep_detections(same, "two_object")["dog"]) == 2  # default 1.0: no suppression
    kept = keep_detections(same, "two_object", ScoringOptions(nms_threshold=0.5))
    assert [d.score for d in kept["dog"]] == [0.9]
    assert [d.score for d in kept["cat"]] == [0.7]  # other classes are never suppressed


def test_nms_iou_edge_and_order_after_max_objects():
    a, b = (0, 0, 9, 9), (5, 0, 14, 9)  # inclusive areas 100 each, overlap 5*10=50 -> iou 1/3
    assert box_iou(a, b) == pytest.approx(50 / 150)
    pair = [det("dog", a, 0.9), det("dog", b, 0.8)]
    opts = ScoringOptions(nms_threshold=50 / 150)  # iou == threshold: suppressed (keep only <)
    assert len(keep_detections(pair, "single_object", opts)["dog"]) == 1
    opts = ScoringOptions(nms_threshold=0.34)
    assert len(keep_detections(pair, "single_object", opts)["dog"]) == 2
    # NMS runs on the top max_objects only: a suppressed slot is not refilled from below
    three = [det("dog", a, 0.9), det("dog", a, 0.8), det("dog", (50, 50, 60, 60), 0.7)]
    kept = keep_detections(three, "single_object", ScoringOptions(max_objects=2, nms_threshold=0.5))
    assert [d.score for d in kept["dog"]] == [0.9]


def test_box_iou_disjoint_and_degenerate():
    assert box_iou((0, 0, 9, 9), (20, 20, 29, 29)) == 0.0
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0


# ---------------------------------------------------------------- include / exclude / counting


def test_include_needs_count_objects():
    meta = single("dog", count=2)
    v = judge(meta, [det("dog")])
    assert (v.correct, v.reason) == (False, "expected dog>=2, found 1")
    assert judge(meta, [det("dog"), det("dog", score=0.5)]).correct
    v = judge(meta, [])
    assert (v.correct, v.reason) == (False, "expected dog>=2, found 0")


def test_two_object_includes_are_anded():
    meta = {"tag": "two_object", "include": [{"class": "dog", "count": 1},
                                            {"class": "cat", "count": 1}], "prompt": "dog and cat"}
    assert judge(meta, [det("dog"), det("cat")]).correct
    v = judge(meta, [det("dog")])
    assert not v.correct and v.reason == "expected cat>=1, found 0"
    v = judge(meta, [])
    assert v.reason == "expected dog>=1, found 0\nexpected cat>=1, found 0"


def test_exclude_fails_at_count_or_more():
    meta = {"tag": "counting", "include": [{"class": "clock", "count": 2}],
            "exclude": [{"class": "clock", "count": 3}], "prompt": "two clocks"}
    two = [det("clock", score=0.95), det("clock", score=0.99)]
    assert judge(meta, two).correct
    v = judge(meta, two + [det("clock", score=0.91)])
    assert (v.correct, v.reason) == (False, "expected clock<3, found 3")
    # below the counting threshold the third clock does not count
    assert judge(meta, two + [det("clock", score=0.9)]).correct


def test_excludes_are_ored_and_independent_of_includes():
    meta = {"tag": "single_object", "include": [{"class": "dog", "count": 1}],
            "exclude": [{"class": "cat", "count": 1}, {"class": "car", "count": 2}], "prompt": "x"}
    assert judge(meta, [det("dog"), det("car")]).correct
    assert not judge(meta, [det("dog"), det("cat")]).correct
    v = judge(meta, [det("cat"), det("car"), det("car")])
    assert v.reason == "expected dog>=1, found 0\nexpected cat<1, found 1\nexpected car<2, found 2"


# ---------------------------------------------------------------- colour


def test_colour_uses_precomputed_colours_of_top_count_objects():
    meta = single("car", tag="colors", color="red")
    assert judge(meta, [det("car", color="red")]).correct
    v = judge(meta, [det("car", score=0.9, color="blue"), det("car", score=0.8, color="red")])
    assert not v.correct  # only the top-1 object is judged
    assert v.reason == "expected red car>=1, found 0 red; and 1 blue"
    assert judge(meta, [det("car", score=0.9, color="red"), det("car", score=0.8, color="blue")]).correct


def test_colour_counting_needs_count_matches():
    meta = single("car", tag="colors", count=2, color="red")
    v = judge(meta, [det("car", score=0.9, color="red"), det("car", score=0.8, color="green")])
    assert not v.correct
    assert v.reason == "expected red car>=2, found 1 red; and 1 red, 1 green"
    assert judge(meta, [det("car", color="red"), det("car", score=0.5, color="red")]).correct


def test_colour_classifier_called_only_for_missing_colours():
    calls = []

    def fake_color(cls, objs):  # an injected classifier (the real one is CLIP, tested elsewhere)
        calls.append((cls, [o.score for o in objs]))
        return ["yellow"] * len(objs)

    meta = single("banana", tag="colors", count=2, color="yellow")
    dets = [det("banana", score=0.9, color="yellow"), det("banana", score=0.8),
            det("banana", score=0.7)]
    assert judge(meta, dets, color_fn=fake_color).correct
    assert calls == [("banana", [0.8])]  # the third object is not among the top 2
    with pytest.raises(ValueError, match="needs a colour classifier"):
        judge(meta, dets)


def test_colour_not_checked_when_count_fails():
    def boom(cls, objs):
        raise AssertionError("colour must not be classified when the count already failed")

    v = judge(single("car", tag="colors", count=2, color="red"), [det("car")], color_fn=boom)
    assert v.reason == "expected car>=2, found 1"


def test_color_attr_two_clauses():
    meta = {"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "green"},
                                            {"class": "cup", "count": 1, "color": "purple"}],
            "prompt": "a green bus and a purple cup"}
    assert judge(meta, [det("bus", color="green"), det("cup", color="purple")]).correct
    v = judge(meta, [det("bus", color="purple"), det("cup", color="green")])
    assert v.reason == ("expected green bus>=1, found 0 green; and 1 purple\n"
                        "expected purple cup>=1, found 0 purple; and 1 green")


# ---------------------------------------------------------------- position


def pos_meta(rel: str) -> dict:
    return {"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                           {"class": "dog", "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of a dog {rel} a teddy bear"}


@pytest.mark.parametrize("rel,dog_box", [
    ("right of", (200, 0, 300, 100)), ("left of", (-300, 0, -200, 100)),
    ("above", (0, -300, 100, -200)), ("below", (0, 200, 100, 300)),
])
def test_each_relation(rel, dog_box):
    bear = det("teddy bear", (0, 0, 100, 100))
    assert judge(pos_meta(rel), [bear, det("dog", dog_box)]).correct
    others = [r for r in ("right of", "left of", "above", "below") if r != rel]
    for other in others:
        v = judge(pos_meta(other), [bear, det("dog", dog_box)])
        assert not v.correct and v.reason == f"expected dog {other} target, found {rel} target"


def test_relative_position_margin_edges():
    # centres 10 apart on x, summed widths 50: |10| - 0.1*50 = 5, 5/10 = 0.5 is not > 0.5
    a, b = (-2.5, 0, 22.5, 1), (-12.5, 0, 12.5, 1)
    assert relative_position(a, b) == set()
    a2 = (-2.45, 0, 22.45, 1)  # summed widths 49.9 -> 5.01/10 > 0.5
    assert relative_position(a2, b) == {"right of"}
    assert relative_position(a, b, position_threshold=0.0) == {"right of"}
    # overlapping centres: no relation at all
    assert relative_position((0, 0, 10, 10), (0, 0, 10, 10)) == set()
    # diagonal with small boxes: both relations (y grows downward)
    assert relative_position((100, 100, 101, 101), (0, 0, 1, 1)) == {"right of", "below"}
    # shrinking one axis to zero makes the other dominate
    assert relative_position((100, 0, 101, 400), (0, 0, 1, 300)) == {"right of"}


def test_position_every_object_against_every_target():
    meta = {"tag": "position", "include": [{"class": "cup", "count": 2},
                                           {"class": "dog", "count": 1, "position": ["right of", 0]}],
            "prompt": "a dog right of two cups"}
    cups = [det("cup", (0, 0, 10, 10), 0.9), det("cup", (100, 0, 110, 10), 0.8)]
    v = judge(meta, cups + [det("dog", (50, 0, 60, 10))])  # right of the first cup only
    assert not v.correct and v.reason == "expected dog right of target, found left of target"
    assert judge(meta, cups + [det("dog", (200, 0, 210, 10))]).correct
    # a third, lower-scored cup is not in the group (only top `count` objects are matched)
    v = judge(meta, cups + [det("cup", (500, 0, 510, 10), 0.5), det("dog", (200, 0, 210, 10))])
    assert v.correct


def test_position_only_top_count_objects_are_placed():
    dogs = [det("dog", (200, 0, 210, 10), 0.9), det("dog", (-200, 0, -190, 10), 0.8)]
    bear = det("teddy bear", (0, 0, 10, 10))
    assert judge(pos_meta("right of"), [bear] + dogs).correct
    v = judge(pos_meta("right of"), [bear, dogs[1]])
    assert not v.correct


def test_position_without_target_group():
    v = judge(pos_meta("right of"), [det("dog", (200, 0, 300, 100))])
    assert v.reason == "expected teddy bear>=1, found 0\nno target for dog to be right of"


def test_position_skipped_when_colour_fails():
    meta = {"tag": "position", "include": [
        {"class": "cup", "count": 1},
        {"class": "dog", "count": 1, "color": "red", "position": ["right of", 0]}], "prompt": "x"}
    v = judge(meta, [det("cup"), det("dog", (-100, 0, -90, 10), color="blue")])
    assert v.reason == "expected red dog>=1, found 0 red; and 1 blue"  # no position reason added


def test_overlapping_objects_have_no_relation():
    v = judge(pos_meta("above"), [det("teddy bear", (0, 0, 100, 100)),
                                  det("dog", (10, 10, 90, 90))])
    assert not v.correct and v.reason == "expected dog above target, found  target"


def test_position_threshold_option():
    # dog right of the bear by 60 px centre offset, widths 100+100: 60 - 0.1*200 = 40 -> 0.67
    dets = [det("teddy bear", (0, 0, 100, 100)), det("dog", (60, 0, 160, 100))]
    assert judge(pos_meta("right of"), dets).correct
    assert not judge(pos_meta("right of"), dets, options=ScoringOptions(position_threshold=0.2)).correct


# ---------------------------------------------------------------- options, prompts, rows


def test_options_defaults_and_parsing():
    o = ScoringOptions()
    assert (o.threshold, o.counting_threshold, o.max_objects, o.nms_threshold,
            o.position_threshold) == (0.3, 0.9, 16, 1.0, 0.1)
    p = ScoringOptions.from_mapping({"threshold": "0.5", "max_objects": "4", "max_overlap": "0.7"})
    assert (p.threshold, p.max_objects, p.nms_threshold) == (0.5, 4, 0.7)
    with pytest.raises(ValueError, match="unknown GenEval option 'treshold'"):
        ScoringOptions.from_mapping({"treshold": 0.5})
    with pytest.raises(ValueError, match="threshold"):
        ScoringOptions(threshold=1.5)
    with pytest.raises(ValueError, match="max_objects"):
        ScoringOptions(max_objects=0)
    with pytest.raises(ValueError, match="nms_threshold"):
        ScoringOptions(nms_threshold=0.0)
    with pytest.raises(ValueError, match="not a number"):
        ScoringOptions.from_mapping({"threshold": "high"})


def test_every_official_prompt_validates_and_counts():
    lines = (PROMPTS / "evaluation_metadata.jsonl").read_text().splitlines()
    metas = [json.loads(line) for line in lines]
    for m in metas:
        validate_metadata(m)
    tags = {}
    for m in metas:
        tags[m["tag"]] = tags.get(m["tag"], 0) + 1
    assert tags == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94,
                    "position": 100, "color_attr": 100}
    assert len((PROMPTS / "object_names.txt").read_text().splitlines()) == 80
    assert "MIT License" in (PROMPTS / "LICENSE").read_text()


@pytest.mark.parametrize("bad,msg", [
    ({"include": [], "prompt": "x"}, "'tag'"),
    ({"tag": "colors", "include": [{"class": "car", "count": 1, "color": "grey"}], "prompt": "x"},
     "colour 'grey'"),
    ({"tag": "colors", "include": [{"class": "car", "count": 0}], "prompt": "x"}, "count"),
    ({"tag": "position", "include": [{"class": "car", "count": 1, "position": ["near", 0]}],
      "prompt": "x"}, "position"),
    ({"tag": "position", "include": [{"class": "car", "count": 1},
                                     {"class": "dog", "count": 1, "position": ["above", 1]}],
      "prompt": "x"}, "earlier include"),
    ({"tag": "x", "include": [{"count": 1}], "prompt": "x"}, "'class'"),
])
def test_bad_prompt_records_are_named(bad, msg):
    with pytest.raises(ValueError, match=msg):
        validate_metadata(bad)


def test_result_row_has_official_fields_with_json_strings():
    meta = single("dog")
    v = judge(meta, [det("dog", (1, 2, 3, 4), 0.75), det("cat", score=0.1)])
    row = result_row("out/00000/samples/0000.png", meta, v)
    assert list(row) == ["filename", "tag", "prompt", "correct", "reason", "metadata", "details"]
    assert isinstance(row["metadata"], str) and json.loads(row["metadata"]) == meta
    assert isinstance(row["details"], str)
    assert json.loads(row["details"]) == {"dog": [[1.0, 2.0, 3.0, 4.0, 0.75]]}  # cat not kept
    assert row["correct"] is True and row["tag"] == "single_object"


def test_evaluate_accepts_grouped_input():
    kept = {"dog": [det("dog")]}
    assert evaluate(single("dog"), kept) == (True, "")
    assert set(COLORS) == {"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown",
                           "black", "white"}
