"""Scenes world: edits with exact ground truth, and their instructions (EN + ZH)."""
from __future__ import annotations

import io

import numpy as np
import pytest

from nexus_gen.scenes import Background, Scene, SceneObject, random_scene
from nexus_gen.scenes.detect import detect
from nexus_gen.scenes.edits import add_edit, random_edit, remove_edit, style_edit
from nexus_gen.scenes.render import render
from nexus_gen.scenes.styles import STYLES


def _px(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def _bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("seed", range(8))
def test_remove_then_add_gives_the_original_back(seed):
    scene = random_scene(seed, min_objects=2, max_objects=5, background=("plain", "gradient",
                                                                           "texture")[seed % 3])
    rem = remove_edit(scene, 192, seed=seed)
    i = rem.meta["index"]
    back = add_edit(rem.target_scene, 192, seed=seed, obj=scene.objects[i], index=i)
    assert _bytes(back.target) == _bytes(rem.source)
    assert back.target_scene == scene
    # texts of the pair are each other's reverse
    assert back.instruction == rem.reverse_instruction
    assert back.reverse_instruction == rem.instruction
    assert back.instruction_zh == rem.reverse_instruction_zh


@pytest.mark.parametrize("seed", range(8))
def test_add_and_remove_change_only_pixels_inside_the_mask(seed):
    scene = random_scene(100 + seed, max_objects=4, background="texture" if seed % 2 else None)
    for edit in (add_edit(scene, 160, seed=seed), remove_edit(scene, 160, seed=seed)):
        diff = (_px(edit.source) != _px(edit.target)).any(axis=2)
        assert diff.any()
        assert not (diff & ~edit.mask).any()
        assert edit.mask.mean() < 0.3


def test_overlapping_remove_redraws_what_was_underneath_exactly():
    under = SceneObject("square", "blue", 0.45, 0.5, 0.4)
    top = SceneObject("circle", "red", 0.6, 0.5, 0.3)
    scene = Scene((under, top), Background("texture", "grey", texture="striped", seed=3))
    edit = remove_edit(scene, 128, index=1)
    assert _bytes(edit.target) == _bytes(render(Scene((under,), scene.background), 128).image)


def test_add_puts_a_detectable_object_in_free_space_and_remove_makes_it_gone():
    for seed in range(6):
        scene = random_scene(seed, max_objects=3)
        add = add_edit(scene, 256, seed=seed)
        obj = add.target_scene.objects[add.meta["index"]]
        inside = [d for d in detect(add.target) if d.mask[add.mask].sum() > 0.9 * d.mask.sum()]
        assert [(d.label, d.color) for d in inside] == [(obj.shape, obj.color)]
        before = detect(add.source)
        assert not any(d.mask[add.mask].any() for d in before)  # free space: nothing was there
        assert obj.color in add.instruction and obj.shape in add.instruction
        rem = remove_edit(add.target_scene, 256, index=add.meta["index"])
        assert not any(d.mask[rem.mask].any() for d in detect(rem.target))


@pytest.mark.parametrize("style", STYLES)
def test_style_edits_are_deterministic_and_confined_to_their_mask(style):
    scene = random_scene(21, min_objects=3, max_objects=5)
    a, b = style_edit(scene, style, 128, seed=1), style_edit(scene, style, 128, seed=1)
    assert _bytes(a.target) == _bytes(b.target)
    diff = (_px(a.source) != _px(a.target)).any(axis=2)
    assert diff.mean() > 0.01
    assert not (diff & ~a.mask).any()
    assert a.edit_type == "style" and a.style == style
    assert a.instruction and a.reverse_instruction and a.instruction != a.reverse_instruction
    assert a.instruction_zh and a.reverse_instruction_zh


def test_at_least_five_styles_with_distinct_results():
    scene = random_scene(4, min_objects=3)
    outs = {_bytes(style_edit(scene, s, 96).target) for s in STYLES}
    assert len(STYLES) >= 5 and len(outs) == len(STYLES)


def test_inverted_is_its_own_reverse_and_palette_swap_reverses():
    scene = random_scene(8, min_objects=3)
    inv = style_edit(scene, "inverted", 96)
    assert (255 - _px(inv.target) == _px(inv.source)).all()
    sw = style_edit(scene, "palette_swap", 96, seed=2)
    (a, b), = [(k, v) for k, v in sw.meta["mapping"].items()][:1]
    assert f"{a} shapes {b}" in sw.instruction and f"{b} shapes {a}" in sw.reverse_instruction
    back = style_edit(sw.target_scene, "palette_swap", 96, seed=2)
    if set(back.meta["mapping"]) == set(sw.meta["mapping"]):
        assert _bytes(back.target) == _bytes(sw.source)
    got = sorted((d.label, d.color) for d in detect(render(sw.target_scene, 256).image))
    want = sorted((o.shape, sw.meta["mapping"].get(o.color, o.color)) for o in scene.objects)
    assert got == want


def test_random_edits_cover_every_type_and_bad_input_is_named():
    kinds = {random_edit(s, 96).edit_type for s in range(12)}
    assert kinds == {"add", "remove", "style"}
    with pytest.raises(ValueError, match="unknown style 'sepia'"):
        style_edit(random_scene(0), "sepia")
    with pytest.raises(ValueError, match="unknown edit type"):
        random_edit(0, edit_type="move")
    with pytest.raises(ValueError, match="no object that can be removed"):
        remove_edit(Scene(), 64)


def test_remove_then_add_back_underneath_restores_overlapping_scene():
    under = SceneObject("hexagon", "yellow", 0.45, 0.5, 0.4)
    top = SceneObject("heart", "purple", 0.6, 0.55, 0.35)
    scene = Scene((under, top), Background("gradient", "slate", "beige", angle=30))
    rem = remove_edit(scene, 128, index=0)
    assert render(scene, 128).objects[0].occluded
    back = add_edit(rem.target_scene, 128, obj=under, index=0)
    assert _bytes(back.target) == _bytes(rem.source)
    on_top = add_edit(rem.target_scene, 128, obj=under)  # drawn last instead: a different image
    assert _bytes(on_top.target) != _bytes(rem.source)
