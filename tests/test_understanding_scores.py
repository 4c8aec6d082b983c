"""Scorers against hand-computed cases: MME acc / acc+ and totals, POPE precision / recall / F1 /
yes-ratio under both frameworks' conventions, CircularEval rotations, multiple choice."""
from __future__ import annotations

import pytest

from eval.understanding.qa_scores import (Scored, score_circular, score_mc, score_mme, score_pope)


def _yn(i, answer, extracted, **kw):
    return Scored(id=str(i), answer=answer, extracted=extracted, kind="yesno", **kw)


def test_mme_acc_plus_and_subtask_score():
    """existence: 3 images x 2 questions; right: img1 both, img2 one, img3 none ->
    acc = 3/6 = 50, acc+ = 1/3 = 33.33, score = 83.33. count: 1 image, both right -> 200.
    perception = 283.33 (max 2000), cognition has no subtask -> None."""
    rows = [_yn(1, "yes", "yes", category="existence", group="a.jpg"),
            _yn(2, "no", "no", category="existence", group="a.jpg"),
            _yn(3, "yes", "yes", category="existence", group="b.jpg"),
            _yn(4, "no", "yes", category="existence", group="b.jpg"),
            _yn(5, "yes", None, category="existence", group="c.jpg", reason="x"),
            _yn(6, "no", "yes", category="existence", group="c.jpg"),
            _yn(7, "yes", "yes", category="count", group="d.jpg"),
            _yn(8, "no", "no", category="count", group="d.jpg")]
    s = score_mme(rows)
    ex = s["subtasks"]["existence"]
    assert ex["acc"] == pytest.approx(50.0) and ex["acc_plus"] == pytest.approx(100 / 3)
    assert ex["score"] == pytest.approx(50 + 100 / 3)
    assert s["subtasks"]["count"]["score"] == pytest.approx(200.0)
    assert s["perception"] == pytest.approx(250 + 100 / 3)
    assert s["perception_max"] == 2000 and s["cognition_max"] == 800 and s["cognition"] is None
    assert len(s["perception_missing_subtasks"]) == 8 and len(s["cognition_missing_subtasks"]) == 4


def test_mme_flags_images_without_two_questions():
    rows = [_yn(1, "yes", "yes", category="OCR", group="a"), _yn(2, "no", "no", category="OCR", group="b"),
            _yn(3, "no", "no", category="OCR", group="b")]
    assert score_mme(rows)["unpaired_images"] == 1


# POPE: gt yes x4 (answers: yes, yes, no, unparsed), gt no x4 (yes, no, no, unparsed)
POPE_ROWS = [_yn(1, "yes", "yes", split="random"), _yn(2, "yes", "yes", split="random"),
             _yn(3, "yes", "no", split="random"), _yn(4, "yes", None, split="random", reason="r"),
             _yn(5, "no", "yes", split="random"), _yn(6, "no", "no", split="random"),
             _yn(7, "no", "no", split="random"), _yn(8, "no", None, split="random", reason="r")]


def test_pope_lmms_eval_convention():
    """lmms-eval: TP=2, FP=1, FN only for an exact 'no' = 1 -> P = 2/3, R = 2/3, F1 = 2/3;
    accuracy 4/8; yes-ratio = share of ground-truth yes = 4/8."""
    m = score_pope(POPE_ROWS, unknown_is_no=False, yes_ratio="ground-truth")["splits"]["random"]
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(0.5)
    assert m["yes_ratio"] == pytest.approx(0.5)


def test_pope_vlmevalkit_convention():
    """VLMEvalKit: y_pred = extracted == 'Yes', so the unparsed gt-yes is a FN: FN = 2 ->
    P = 2/3, R = 2/4, F1 = 2*(2/3*1/2)/(2/3+1/2) = 4/7; yes-ratio (answers parsed as yes) 3/8."""
    m = score_pope(POPE_ROWS, unknown_is_no=True, yes_ratio="predicted")["splits"]["random"]
    assert m["fn"] == 2 and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(4 / 7) and m["yes_ratio"] == pytest.approx(3 / 8)


def test_pope_per_split_and_comma_categories():
    """Splits are scored apart; VLMEvalKit splits 'popular,adversarial' into both (and counts
    the row twice overall)."""
    rows = [_yn(1, "yes", "yes", split="popular"), _yn(2, "no", "yes", split="adversarial"),
            _yn(3, "no", "no", split="popular,adversarial")]
    s = score_pope(rows, split_on_comma=True)
    assert s["splits"]["popular"]["n"] == 2 and s["splits"]["adversarial"]["n"] == 2
    assert s["overall"]["n"] == 4
    assert s["splits"]["popular"]["accuracy"] == 1.0 and s["splits"]["adversarial"]["accuracy"] == 0.5
    assert s["mean_accuracy"] == pytest.approx(0.75)
    assert score_pope(rows, split_on_comma=False)["overall"]["n"] == 3


def _mc(i, answer, extracted, category="c", reason=""):
    return Scored(id=str(i), answer=answer, extracted=extracted, kind="mc", category=category,
                  group=str(int(i % 1e6)), reason=reason)


def test_circular_counts_a_question_only_if_every_rotation_is_right():
    """Question 1: rotations 1, 1000001, 2000001, 3000001 all right -> hit. Question 2: one
    rotation wrong -> miss. Question 3: one rotation unparsed -> miss. 1 of 3 = 33.33%; the
    vanilla per-row accuracy is 10/12 = 83.33%."""
    rows = []
    for q, wrong in ((1, None), (2, 2000002), (3, 3000003)):
        for r in range(4):
            idx = q + r * 1_000_000
            ans = "ABCD"[(q + r) % 4]
            if idx == wrong and q == 2:
                rows.append(_mc(idx, ans, "A" if ans != "A" else "B"))
            elif idx == wrong:
                rows.append(_mc(idx, ans, None, reason="no option"))
            else:
                rows.append(_mc(idx, ans, ans))
    s = score_circular(rows)
    assert s["groups"] == 3 and s["circular_accuracy"] == pytest.approx(100 / 3)
    assert s["vanilla"]["accuracy"] == pytest.approx(1000 / 12)
    assert s["rotations"] == {4: 3}


def test_circular_group_without_main_row_is_counted_not_scored():
    """VLMEvalKit scores groups from their main row (index == int(index % 1e6))."""
    rows = [_mc(5, "A", "A"), _mc(1000005, "B", "B"), _mc(1000007, "C", "C")]
    s = score_circular(rows)
    assert s["groups"] == 1 and s["rows_without_main_row"] == 1 and s["circular_accuracy"] == 100.0


def test_mc_accuracy_per_category():
    rows = [_mc(1, "A", "A", "x"), _mc(2, "B", "C", "x"), _mc(3, "C", None, "y", "r"), _mc(4, "D", "D", "y")]
    s = score_mc(rows)
    assert s["accuracy"] == 50.0 and s["n"] == 4 and s["unparsed"] == 1
    assert s["per_category"]["x"]["accuracy"] == 50.0 and s["per_category"]["y"]["accuracy"] == 50.0
