"""Edits with exact ground truth in the scenes world: add, remove and style.

Add and remove are the same pair in opposite directions (as in ImagePulse): the target is the
scene re-rendered with / without the object, so the background under a removed object is
redrawn exactly and pixels outside the object's footprint are bit-identical. Style edits are
deterministic restylings. Every edit carries its instruction and reverse instruction (EN, ZH)."""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
from PIL import Image
from scipy import ndimage

from nexus_gen.scenes.palette import COLORS
from nexus_gen.scenes.render import RenderResult, Size, render
from nexus_gen.scenes.scene import Scene, SceneObject, place, random_scene
from nexus_gen.scenes.shapes import SHAPES
from nexus_gen.scenes.styles import IMAGE_STYLES, STYLES, recolor
from nexus_gen.scenes.text import (STYLE_TEXT, add_instruction, caption, caption_zh,
                                   palette_swap_text, refer, remove_instruction)

EDIT_TYPES: tuple[str, ...] = ("add", "remove", "style")
MASK_DILATION = 2  # px added around an object's footprint in add/remove masks


@dataclass
class EditResult:
    """One edit: source -> target images, the mask of pixels allowed to change, and texts."""

    edit_type: str  # add | remove | style
    source: Image.Image
    target: Image.Image
    mask: np.ndarray = field(repr=False)  # bool [H, W]; pixels outside are identical
    instruction: str
    reverse_instruction: str
    instruction_zh: str
    reverse_instruction_zh: str
    source_scene: Scene
    target_scene: Scene
    style: Optional[str] = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def source_caption(self) -> str:
        return caption(self.source_scene)

    @property
    def target_caption(self) -> str:
        return caption(self.target_scene)

    @property
    def source_caption_zh(self) -> str:
        return caption_zh(self.source_scene)

    @property
    def target_caption_zh(self) -> str:
        return caption_zh(self.target_scene)


def _object_mask(res: RenderResult, index: int) -> np.ndarray:
    return ndimage.binary_dilation(res.objects[index].footprint, iterations=MASK_DILATION)


def _aspect(size: Size) -> float:
    w, h = (size, size) if isinstance(size, int) else size
    return w / h


def add_edit(scene: Scene, size: Size = 256, seed: int = 0, obj: Optional[SceneObject] = None,
             index: Optional[int] = None, size_range: tuple[float, float] = (0.12, 0.25)
             ) -> EditResult:
    """Add `obj` (default: a random object placed in free space, nameable in the result) at
    draw position `index` (default: on top). The reverse instruction removes it."""
    rng = random.Random(seed)
    if obj is None:
        for _ in range(100):
            cand = place(rng, rng.choice(SHAPES), rng.choice(COLORS), rng.uniform(*size_range),
                         scene.objects, aspect=_aspect(size))
            if cand is not None and refer(scene.with_object(cand), len(scene.objects)) is not None:
                obj = cand
                break
        if obj is None:
            raise ValueError(f"no free space to add an object to a scene of {len(scene.objects)} "
                             f"objects (seed {seed}); try another seed or a smaller size_range")
    target_scene = scene.with_object(obj, index)
    at = len(scene.objects) if index is None else index
    variant = seed % 3  # phrasing variant: the same for an add and its reverse remove
    en, zh = add_instruction(obj, variant)
    ren, rzh = remove_instruction(target_scene, at, variant)
    src, tgt = render(scene, size), render(target_scene, size)
    return EditResult("add", src.image, tgt.image, _object_mask(tgt, at), en, ren, zh, rzh,
                      scene, target_scene, meta={"object": asdict(obj), "index": at})


def remove_edit(scene: Scene, size: Size = 256, seed: int = 0, index: Optional[int] = None
                ) -> EditResult:
    """Remove object `index` (default: a random one that can be named unambiguously); the
    background is redrawn exactly. The reverse instruction adds it back."""
    rng = random.Random(seed)
    if index is None:
        nameable = [i for i in range(len(scene.objects)) if refer(scene, i) is not None]
        if not nameable:
            raise ValueError(f"scene has no object that can be removed by name "
                             f"({len(scene.objects)} objects)")
        index = rng.choice(nameable)
    target_scene = scene.without(index)
    obj = scene.objects[index]
    variant = seed % 3  # phrasing variant: the same for an add and its reverse remove
    en, zh = remove_instruction(scene, index, variant)
    ren, rzh = add_instruction(obj, variant)
    src, tgt = render(scene, size), render(target_scene, size)
    return EditResult("remove", src.image, tgt.image, _object_mask(src, index), en, ren, zh, rzh,
                      scene, target_scene, meta={"object": asdict(obj), "index": index})


def style_edit(scene: Scene, style: str, size: Size = 256, seed: int = 0) -> EditResult:
    """Restyle the whole scene deterministically (`style` in STYLES). `palette_swap` swaps two
    object colours present (or recolours the only one to an absent colour)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}: expected one of {', '.join(STYLES)}")
    src = render(scene, size)
    target_scene = scene
    meta: dict[str, Any] = {}
    if style == "palette_swap":
        present = sorted({o.color for o in scene.objects}, key=COLORS.index)
        if not present:
            raise ValueError("palette_swap needs at least one object in the scene")
        rng = random.Random(seed)
        if len(present) >= 2:
            a, b = rng.sample(present, 2)
            mapping, swap = {a: b, b: a}, True
        else:
            a, b = present[0], rng.choice([c for c in COLORS if c != present[0]])
            mapping, swap = {a: b}, False
        target_scene = recolor(scene, mapping)
        tgt = render(target_scene, size)
        changed = np.zeros((src.image.height, src.image.width), bool)
        for o in src.objects:
            if o.obj.color in mapping:
                changed |= o.footprint
        target, mask = tgt.image, changed
        texts = palette_swap_text(a, b, swap)
        meta = {"mapping": mapping}
    else:
        target, mask = IMAGE_STYLES[style](src)
        texts = STYLE_TEXT[style]
    en, ren, zh, rzh = texts
    return EditResult("style", src.image, target, mask, en, ren, zh, rzh, scene, target_scene,
                      style=style, meta=meta)


def random_edit(seed: int, size: Size = 256, edit_type: Optional[str] = None) -> EditResult:
    """A random scene and a random edit of it, the same for the same seed."""
    if edit_type is not None and edit_type not in EDIT_TYPES:
        raise ValueError(f"unknown edit type {edit_type!r}: expected one of {', '.join(EDIT_TYPES)}")
    rng = random.Random(seed)
    kind = edit_type or rng.choice(EDIT_TYPES)
    scene = random_scene(rng.randrange(2**31), max_objects=4 if kind == "add" else 5,
                         aspect=_aspect(size))
    sub = rng.randrange(2**31)
    if kind == "add":
        return add_edit(scene, size, seed=sub)
    if kind == "remove":
        if not any(refer(scene, i) for i in range(len(scene.objects))):
            return add_edit(scene, size, seed=sub)
        return remove_edit(scene, size, seed=sub)
    return style_edit(scene, rng.choice(STYLES), size, seed=sub)
