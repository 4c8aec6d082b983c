"""The scenes backend: edits with exact ground truth, on procedural scenes and on real photos.

- Scenes: add (an object in free space) and remove (a nameable object, background redrawn
  exactly) are one pair in opposite directions; six deterministic restylings.
- Photos (centre-cropped squares): add composites a scenes object onto the photo and remove is
  the same pair reversed (the photo itself is the exact ground truth); the four image-level
  restylings (pixel art, pastel, inverted, greyscale).
The verifier is the weight-free pixel detector of the scenes world (`scenes-pixel`)."""
from __future__ import annotations

import random
from dataclasses import asdict
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from nexus_gen.edit.backends.base import EditError, EditOutput, EditSpec, SourceRef
from nexus_gen.scenes.edits import MASK_DILATION, EditResult, add_edit, remove_edit, style_edit
from nexus_gen.scenes.palette import COLOR_RGB, COLORS
from nexus_gen.scenes.render import RenderResult, object_coverage
from nexus_gen.scenes.scene import Scene, SceneObject, place
from nexus_gen.scenes.shapes import SHAPES
from nexus_gen.scenes.styles import IMAGE_STYLES, STYLES
from nexus_gen.scenes.text import STYLE_TEXT, add_instruction, count_phrase, remove_instruction

PHOTO_STYLES = ("pixel_art", "pastel", "inverted", "grayscale")  # need no scene geometry
OBJECT_SIZE = (0.15, 0.3)  # fraction of the image side of an object composited onto a photo
# what a restyled image's caption adds (EN, ZH), so the two captions differ by the edit as
# InstructPix2Pix's do (directional CLIP is undefined for identical captions)
STYLE_CAPTION = {"outline": ("drawn as outlines only", "只画轮廓线"),
                 "pixel_art": ("as blocky pixel art", "像素画风格"),
                 "pastel": ("in soft pastel tones", "柔和的粉彩色调"),
                 "inverted": ("with inverted colours", "颜色反转"),
                 "grayscale": ("in greyscale", "灰度图")}


def styled_caption(caption: dict[str, Optional[str]], style: str) -> dict[str, Optional[str]]:
    """The caption of a restyled image: the source caption plus the style's phrase."""
    en, zh = STYLE_CAPTION[style]
    return {"en": f"{caption['en']}, {en}" if caption.get("en") else None,
            "zh": f"{caption['zh']}，{zh}" if caption.get("zh") else None}


def read_photo(path: str) -> Image.Image:
    """A photo through the project's safe decoder, as RGB at its own size; an unreadable file
    is an `EditError` naming it."""
    from nexus_gen.data.images import decode_image

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise EditError(f"source image {path}: {exc.strerror or exc}") from None
    try:
        img = decode_image(data, path)
    except Exception as exc:  # truncated, not an image, bomb: a reject naming the file
        raise EditError(f"source image {path}: {exc}") from None
    return img


def _scene_output(r: EditResult, lineage: dict[str, Any], verify: dict[str, Any]) -> EditOutput:
    src_cap = {"en": r.source_caption, "zh": r.source_caption_zh}
    tgt_cap = styled_caption(src_cap, r.style) if r.style in STYLE_CAPTION else \
        {"en": r.target_caption, "zh": r.target_caption_zh}
    return EditOutput(
        r.edit_type, r.source, r.target, r.mask,
        {"en": r.instruction, "zh": r.instruction_zh},
        {"en": r.reverse_instruction, "zh": r.reverse_instruction_zh},
        src_cap, tgt_cap, lineage, verify)


class ScenesBackend:
    NAME = "scenes"
    ROLES = ("detector",)
    DETECTORS = ("scenes-pixel",)

    def __init__(self, detector: Optional[str] = "scenes-pixel") -> None:
        self.detector = detector

    @classmethod
    def from_recipe(cls, recipe: Any, base: Any, device: str = "cpu",
                    verify: bool = True) -> "ScenesBackend":
        return cls(detector=recipe.models.detector if verify else None)

    def check_models(self) -> list[str]:
        return []  # weight-free: nothing to load

    def describe_models(self) -> dict[str, str]:
        return {"detector": self.detector} if self.detector else {}

    def model_report(self) -> dict[str, dict[str, Any]]:
        return {k: {"spec": v, "id": v, "status": "ok (weight-free)"} for k, v in self.describe_models().items()}

    # -- planning
    def styles_for(self, source_kind: str) -> tuple[str, ...]:
        return STYLES if source_kind == "scene" else PHOTO_STYLES

    def supports(self, source_kind: str, edit_type: str) -> bool:
        return edit_type in ("add", "remove", "style") and source_kind in ("scene", "image")

    # -- execution
    def edit(self, source: SourceRef, spec: EditSpec, seed: int) -> EditOutput:
        if source.error:
            raise EditError(source.error)
        lineage = {"backend": self.NAME, "edit": spec.to_json(), "seed": seed}
        if source.kind == "scene":
            return self._scene_edit(source, spec, seed, lineage)
        return self._photo_edit(source, spec, seed, lineage)

    def _scene_edit(self, source: SourceRef, spec: EditSpec, seed: int,
                    lineage: dict[str, Any]) -> EditOutput:
        scene = Scene.from_dict(source.scene)
        try:
            if spec.type == "add":
                r = add_edit(scene, source.size, seed=seed)
            elif spec.type == "remove":
                r = remove_edit(scene, source.size, seed=seed)
            else:
                r = style_edit(scene, spec.style, source.size, seed=seed)
        except ValueError as exc:  # no free space, nothing nameable to remove, ...
            raise EditError(f"{spec.type} on scene {source.key}: {exc}") from None
        verify = {"object": r.meta["object"]} if spec.type in ("add", "remove") else {}
        return _scene_output(r, {**lineage, "scene": source.scene}, verify)

    def _photo_edit(self, source: SourceRef, spec: EditSpec, seed: int,
                    lineage: dict[str, Any]) -> EditOutput:
        from nexus_gen.edit.sources import fit_source, read_source_image

        photo = fit_source(read_source_image(source), source.size)
        cap = source.caption
        if spec.type == "style":
            if spec.style not in PHOTO_STYLES:
                raise EditError(f"style {spec.style!r} needs a scene; photos take {PHOTO_STYLES}")
            target, mask = IMAGE_STYLES[spec.style](RenderResult(photo, Scene(), []))
            en, ren, zh, rzh = STYLE_TEXT[spec.style]
            caps = {"en": cap, "zh": None}
            return EditOutput("style", photo, target, mask, {"en": en, "zh": zh},
                              {"en": ren, "zh": rzh}, caps, styled_caption(caps, spec.style), lineage, {})
        rng = random.Random(seed)
        obj = place(rng, rng.choice(SHAPES), rng.choice(COLORS), rng.uniform(*OBJECT_SIZE), [])
        if obj is None:
            raise EditError(f"no room for an object on {source.path}")
        x, y, cov = object_coverage(obj, source.size, source.size)
        a = np.asarray(photo, dtype=np.float32)
        h, w = cov.shape
        region = a[y:y + h, x:x + w]
        region[:] = region * (1 - cov[..., None]) + np.array(COLOR_RGB[obj.color], np.float32) * cov[..., None]
        with_obj = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")
        footprint = np.zeros((source.size, source.size), bool)
        footprint[y:y + h, x:x + w] = cov > 0
        mask = ndimage.binary_dilation(footprint, iterations=MASK_DILATION)
        variant = seed % 3
        add_en, add_zh = add_instruction(obj, variant)
        rem_en, rem_zh = remove_instruction(Scene((obj,)), 0, variant)
        with_cap = {"en": f"{cap}, with {count_phrase(1, obj.shape, obj.color)}" if cap else None,
                    "zh": None}
        plain_cap = {"en": cap, "zh": None}
        lineage = {**lineage, "object": asdict(obj)}
        verify = {"object": asdict(obj)}
        if spec.type == "add":
            return EditOutput("add", photo, with_obj, mask, {"en": add_en, "zh": add_zh},
                              {"en": rem_en, "zh": rem_zh}, plain_cap, with_cap, lineage, verify)
        return EditOutput("remove", with_obj, photo, mask, {"en": rem_en, "zh": rem_zh},
                          {"en": add_en, "zh": add_zh}, with_cap, plain_cap, lineage, verify)

    # -- verification
    def verify(self, out: EditOutput) -> dict[str, Optional[bool]]:
        """The pixel detector's verdicts: add -> is the added object found inside the mask;
        remove -> is the removed object still found there."""
        verdict: dict[str, Optional[bool]] = {"object_in_mask": None, "object_present": None}
        obj = out.verify.get("object")
        if self.detector is None or obj is None or out.edit_type not in ("add", "remove"):
            return verdict
        from nexus_gen.scenes.detect import object_in_mask

        found = object_in_mask(out.target, obj["shape"], obj["color"], out.mask)
        verdict["object_in_mask" if out.edit_type == "add" else "object_present"] = found
        return verdict
