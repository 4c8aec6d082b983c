"""Scenes world: understanding QA answers are right on the rendered pictures."""
from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from nexus_gen.scenes import random_scene
from nexus_gen.scenes.detect import detect
from nexus_gen.scenes.qa import (LETTERS, POPE_SPLITS, negatives, popularity_of, presence_questions,
                                 scene_qa)
from nexus_gen.scenes.render import render


def _rel(a, b) -> set:
    """GenEval's rule from NEXUS_GEN.md, written independently of the library."""
    ca, cb = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2), ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    off = (ca[0] - cb[0], ca[1] - cb[1])
    dim = ((a[2] - a[0]) + (b[2] - b[0]), (a[3] - a[1]) + (b[3] - b[1]))
    rev = [max(abs(o) - 0.1 * d, 0) * (1 if o > 0 else -1) for o, d in zip(off, dim)]
    if all(abs(r) < 1e-3 for r in rev):
        return set()
    n = math.hypot(*off)
    return {k for k, v in {"left of": rev[0] / n < -0.5, "right of": rev[0] / n > 0.5,
                           "above": rev[1] / n < -0.5, "below": rev[1] / n > 0.5}.items() if v}


def _answer(q) -> str:
    """The item's answer in words, read back from its own text (options for MC)."""
    if q.format == "mc":
        line = next(l for l in q.question.splitlines() if l.startswith(q.answer + ". "))
        return line[3:]
    return q.answer


@pytest.mark.parametrize("seed", range(25))
def test_answers_agree_with_what_the_detector_sees(seed):
    scene = random_scene(seed, min_objects=3, max_objects=6)
    image = render(scene, 256).image
    dets = detect(image)
    seen = Counter((d.color, d.label) for d in dets)
    items = scene_qa(scene, 256, seed=seed, split=POPE_SPLITS[seed % 3])
    assert {q.kind for q in items} >= {"counting", "presence"}
    for q in items:
        assert q.format in ("mc", "yesno")
        if q.format == "mc":
            assert q.answer in LETTERS[:len(q.choices)] and q.choices.count(q.answer_text) == 1
        else:
            assert q.answer in ("yes", "no") and q.question.endswith("Please answer yes or no.")
        text = _answer(q)
        m = q.meta
        if q.kind == "counting":
            n = sum(v for (c, s), v in seen.items() if s == m["shape"] and m["color"] in (None, c))
            assert (text == str(n)) if q.format == "mc" else (text == ("yes" if m["asked"] == n else "no"))
        elif q.kind == "color":
            (det,) = [d for d in dets if d.label == m["shape"]]
            assert (text == det.color) if q.format == "mc" else (text == ("yes" if m["asked"] == det.color else "no"))
        elif q.kind == "presence" and q.format == "yesno":
            c, s = m["object"]
            assert text == ("yes" if seen[(c, s)] else "no")
        elif q.kind == "presence":
            c, s = text.split(" ")
            assert seen[(c, s)] and all(not seen[tuple(o.split(" "))] for o in q.choices if o != text)
        elif q.kind == "position":
            oa, ob = scene.objects[m["a"]], scene.objects[m["b"]]
            (da,) = [d for d in dets if (d.color, d.label) == (oa.color, oa.shape)]
            (db,) = [d for d in dets if (d.color, d.label) == (ob.color, ob.shape)]
            rels = _rel(da.box, db.box)
            if q.format == "mc":
                assert rels == {text}
            else:
                assert m["asked"] in q.question.replace("to the ", "")
                assert text == ("yes" if m["asked"] in rels else "no")
                assert rels == {m["relation"]}


def test_every_kind_appears_and_presence_is_balanced():
    kinds = Counter()
    yes = Counter()
    for seed in range(40):
        for q in scene_qa(random_scene(seed, min_objects=3), 128, seed=seed):
            kinds[q.kind] += 1
            yes[q.kind] += q.answer == "yes"
    assert kinds["position"] > 20 and kinds["color"] > 20
    assert 0.3 < yes["presence"] / max(1, kinds["presence"]) < 0.6


def test_pope_negative_splits():
    scenes = [random_scene(s, min_objects=3) for s in range(50)]
    pop = popularity_of(scenes)
    scene = scenes[0]
    present = {(o.color, o.shape) for o in scene.objects}
    rng = random.Random(0)
    for split in POPE_SPLITS:
        neg = negatives(scene, split, 3, rng, pop)
        assert len(neg) == 3 and not (set(neg) & present)
    popular = negatives(scene, "popular", 3, rng, pop)
    absent_counts = sorted((pop[cs] for cs in pop if cs not in present), reverse=True)
    assert [pop[cs] for cs in popular] == absent_counts[:3]
    shapes = {s for _, s in present}
    assert all(s in shapes for _, s in negatives(scene, "adversarial", 3, rng))
    items = presence_questions(scene, random.Random(1), "adversarial", k=3)
    assert Counter(q.answer for q in items if q.format == "yesno") == {"yes": 3, "no": 3}
    with pytest.raises(ValueError, match="unknown POPE split 'hard'"):
        negatives(scene, "hard", 3, rng)


def test_qa_is_deterministic():
    scene = random_scene(3, min_objects=4)
    a = [(q.question, q.answer) for q in scene_qa(scene, seed=5)]
    b = [(q.question, q.answer) for q in scene_qa(scene, seed=5)]
    assert a == b and a != [(q.question, q.answer) for q in scene_qa(scene, seed=6)]
