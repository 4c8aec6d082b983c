"""Scenes world: scene model and renderer (determinism, any size, exact boxes/masks, backgrounds)."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

from nexus_gen.scenes import COLORS, SHAPES, Background, Scene, SceneObject, random_scene
from nexus_gen.scenes.detect import foreground
from nexus_gen.scenes.palette import COLOR_RGB
from nexus_gen.scenes.render import render, render_background


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_vocabulary_matches_geneval_colours_and_has_six_shapes():
    assert COLORS == ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown",
                      "black", "white")
    assert len(SHAPES) >= 6 and len(set(SHAPES)) == len(SHAPES)
    assert {"circle", "square", "triangle", "star", "hexagon", "heart"} <= set(SHAPES)


def test_same_seed_same_bytes_different_seed_different_scene():
    a = _png(render(random_scene(7), 200).image)
    b = _png(render(random_scene(7), 200).image)
    assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()
    assert random_scene(7) != random_scene(8)
    assert a != _png(render(random_scene(8), 200).image)


@pytest.mark.parametrize("size", [64, 257, (320, 180), (150, 300), 1024])
def test_any_resolution_boxes_are_mask_extents(size):
    scene = random_scene(3, n_objects=4, aspect=(size[0] / size[1]) if isinstance(size, tuple) else 1)
    res = render(scene, size)
    w, h = (size, size) if isinstance(size, int) else size
    assert res.image.size == (w, h) and res.image.mode == "RGB"
    assert len(res.objects) == len(scene.objects) == 4
    for o in res.objects:
        assert o.mask.shape == (h, w)
        ys, xs = np.nonzero(o.mask)
        assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        # the mask sits inside the geometric box of the shape
        x0, y0, bw, bh = o.obj.box(w, h)
        assert x0 - 1 <= o.box[0] and o.box[2] <= x0 + bw + 1
        assert y0 - 1 <= o.box[1] and o.box[3] <= y0 + bh + 1


def test_mask_pixels_have_the_object_colour_and_edges_are_antialiased():
    obj = SceneObject("circle", "blue", 0.5, 0.5, 0.5)
    res = render(Scene((obj,), Background("plain", "grey")), 128)
    px = np.asarray(res.image)
    inner = res.objects[0].mask
    core = np.zeros_like(inner)
    core[48:80, 48:80] = True
    assert (px[core] == COLOR_RGB["blue"]).all()
    # some pixels are neither object nor background colour: partial coverage on the edge
    edge = res.objects[0].footprint & ~core
    colours = {tuple(p) for p in px[edge]}
    assert len(colours - {COLOR_RGB["blue"], (150, 150, 150)}) > 5


def test_occlusion_gives_partial_visible_mask():
    a = SceneObject("square", "red", 0.4, 0.5, 0.4)
    b = SceneObject("circle", "green", 0.6, 0.5, 0.4)
    res = render(Scene((a, b), Background()), 128)
    assert res.objects[0].occluded and not res.objects[1].occluded
    assert not (res.objects[0].mask & res.objects[1].mask).any()
    assert res.objects[0].full_mask.sum() > res.objects[0].mask.sum()


def test_non_overlapping_placement_and_overlap_option():
    for seed in range(30):
        res = render(random_scene(seed, min_objects=4, max_objects=6), 128)
        assert not any(o.occluded for o in res.objects)
    overlapped = sum(any(o.occluded for o in render(random_scene(s, n_objects=6, allow_overlap=True,
                                                                   size_range=(0.3, 0.4)), 96).objects)
                     for s in range(10))
    assert overlapped > 0


@pytest.mark.parametrize("kind", ["plain", "gradient", "texture"])
def test_backgrounds_are_never_object_like(kind):
    seen = set()
    for seed in range(12):
        bg = random_scene(seed, background=kind).background
        seen.add(bg.texture or bg.color2 or bg.color)
        px = np.clip(np.rint(render_background(bg, 96, 96)), 0, 255).astype(np.uint8)
        assert not foreground(px).any(), bg
    assert len(seen) > 2
    # every object colour is object-like, so black and white objects separate from any background
    pal = np.array([[COLOR_RGB[c] for c in COLORS]], np.uint8)
    assert foreground(pal).all()


def test_scene_round_trips_through_dict():
    s = random_scene(11, background="texture")
    assert Scene.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("bad, match", [
    (lambda: SceneObject("blob", "red", 0.5, 0.5, 0.2), "unknown shape 'blob'"),
    (lambda: SceneObject("circle", "teal", 0.5, 0.5, 0.2), "unknown colour 'teal'"),
    (lambda: SceneObject("circle", "red", 1.5, 0.5, 0.2), "centre"),
    (lambda: Background("gradient", "grey"), "color2"),
    (lambda: render(Scene(), 4), "render size"),
    (lambda: random_scene(0, background="plaid"), "background 'plaid'"),
])
def test_bad_input_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_same_bytes_in_a_fresh_process_with_another_hash_seed():
    """Renders, edits, QA and prompt renders do not depend on the process (hash seeds, order)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import hashlib, io\n"
        "from nexus_gen.scenes import random_scene\n"
        "from nexus_gen.scenes.render import render\n"
        "from nexus_gen.scenes.edits import random_edit\n"
        "from nexus_gen.scenes.qa import scene_qa\n"
        "from nexus_gen.scenes.prompts import generate_prompts, render_prompt\n"
        "h = hashlib.sha256()\n"
        "def add(img):\n"
        "    b = io.BytesIO(); img.save(b, format='PNG'); h.update(b.getvalue())\n"
        "add(render(random_scene(1, background='texture'), 96).image)\n"
        "e = random_edit(2, 96, 'style'); add(e.target); h.update(e.instruction.encode())\n"
        "e = random_edit(3, 96, 'remove'); add(e.target); h.update(e.instruction_zh.encode())\n"
        "h.update(repr([(q.question, q.answer) for q in scene_qa(random_scene(4), 96, 1, 'adversarial')]).encode())\n"
        "add(render_prompt(generate_prompts()[300], 5, 96))\n"
        "print(h.hexdigest())\n"
    )
    repo = Path(__file__).resolve().parents[1]
    outs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(repo))
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, cwd=repo, check=True,
                                capture_output=True, text=True).stdout.strip())
    assert len(outs) == 1 and len(outs.pop()) == 64
