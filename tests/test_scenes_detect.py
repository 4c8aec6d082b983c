"""Scenes world: the weight-free pixel detector (accuracy on 1000 scenes, noise and photos)."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

from nexus_gen.detection import Detection
from nexus_gen.scenes import Background, Scene, SceneObject, random_scene
from nexus_gen.scenes.detect import classify_shape, detect
from nexus_gen.scenes.render import render
from nexus_gen.scenes.shapes import ASPECT, SHAPES, template


def _match(obj, dets, tol=2.0):
    """The detection whose box is within `tol` px of the object's box on every side, if any."""
    for d in dets:
        if max(abs(a - b) for a, b in zip(d.box, obj.box)) <= tol:
            return d
    return None


def test_1000_random_scenes_find_non_occluded_objects():
    total = right = extra = 0
    wrong = []
    for seed in range(1000):
        res = render(random_scene(seed), 256)
        dets = detect(res.image)
        matched = set()
        for o in res.objects:
            if o.occluded:
                continue
            total += 1
            d = _match(o, dets)
            if d is not None and d.label == o.obj.shape and d.color == o.obj.color:
                right += 1
                matched.add(id(d))
                # the mask agrees with the ground truth mask almost everywhere
                inter = np.count_nonzero(d.mask & o.mask)
                assert inter / np.count_nonzero(d.mask | o.mask) > 0.85
            else:
                wrong.append((seed, o.obj, d))
        extra += sum(1 for d in dets if id(d) not in matched and d.score > 0.3)
    assert total > 2500
    assert right / total >= 0.99, wrong[:10]
    assert extra <= 0.01 * total


def test_detections_have_the_shared_structure():
    res = render(random_scene(5, n_objects=3), 200)
    dets = detect(res.image)
    assert len(dets) == 3
    for d in dets:
        assert isinstance(d, Detection)
        assert d.label in SHAPES and d.color is not None
        assert 0 < d.score <= 1
        assert d.mask.dtype == bool and d.mask.shape == (200, 200)
        x1, y1, x2, y2 = d.box
        ys, xs = np.nonzero(d.mask)
        assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


@pytest.mark.parametrize("color", ["black", "white", "brown", "yellow"])
@pytest.mark.parametrize("bg", [Background("plain", "dark grey"), Background("plain", "light grey"),
                                Background("texture", "beige", texture="checkered", seed=1),
                                Background("gradient", "dark grey", "light grey", angle=45)])
def test_every_shape_in_hard_colours_on_every_background(color, bg):
    objs = tuple(SceneObject(s, color, 0.15 + 0.23 * (i % 4), 0.25 + 0.5 * (i // 4), 0.16)
                 for i, s in enumerate(SHAPES))
    res = render(Scene(objs, bg), 256)
    dets = detect(res.image)
    for o in res.objects:
        d = _match(o, dets)
        assert d is not None and (d.label, d.color) == (o.obj.shape, color), (o.obj, d)
        assert d.score > 0.9


def test_overlapping_objects_of_different_colours_are_split():
    a = SceneObject("square", "red", 0.38, 0.5, 0.36)
    b = SceneObject("circle", "blue", 0.62, 0.5, 0.36)
    dets = detect(render(Scene((a, b)), 256).image)
    top = {(d.label, d.color) for d in dets if d.score > 0.3}
    assert ("circle", "blue") in top  # the unoccluded one is still found whole
    assert {d.color for d in dets} >= {"red", "blue"}


def test_uniform_noise_yields_no_detections():
    rng = np.random.default_rng(0)
    for _ in range(5):
        img = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
        assert [d for d in detect(img) if d.score > 0.3] == []


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_photos_yield_few_confident_detections(name):
    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    dets = detect(img)
    assert sum(d.score > 0.3 for d in dets) <= 3
    assert all(d.score <= 0.9 for d in dets)


def test_classifier_separates_templates():
    for s in SHAPES:
        best, score, scores = classify_shape(template(s, 48, round(48 / ASPECT[s])))
        assert best == s and score > 0.97
        assert sorted(scores.values())[-2] < 0.9  # no other shape is a near miss


def test_detect_rejects_non_images():
    with pytest.raises(TypeError, match="PIL.Image"):
        detect(np.zeros((8, 8, 3)))


def test_jpeg_compressed_renders_are_still_found():
    import io

    total = found = 0
    for seed in range(100):
        res = render(random_scene(5000 + seed), 256)
        buf = io.BytesIO()
        res.image.save(buf, format="JPEG", quality=90)
        dets = detect(Image.open(buf).convert("RGB"))
        for o in res.objects:
            total += 1
            d = _match(o, dets, tol=3)
            found += d is not None and (d.label, d.color) == (o.obj.shape, o.obj.color)
    assert found / total >= 0.97
