"""Deterministic restylings of a scene (the scenes world's 'style transfer' edits).

Each returns the styled image and the mask of pixels it may change: object-level styles
(outline, palette swap) touch only object footprints, image-level ones the whole frame."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from nexus_gen.scenes.render import RenderResult, render
from nexus_gen.scenes.scene import Scene

STYLES: tuple[str, ...] = ("outline", "pixel_art", "pastel", "inverted", "grayscale", "palette_swap")
OUTLINE_WIDTH = 0.08  # stroke width as a fraction of each object's size
PASTEL_MIX = 0.55  # share of white mixed into every pixel


def _full(res: RenderResult) -> np.ndarray:
    return np.ones((res.image.height, res.image.width), bool)


def _footprints(res: RenderResult) -> np.ndarray:
    mask = np.zeros((res.image.height, res.image.width), bool)
    for o in res.objects:
        mask |= o.footprint
    return mask


def outline(res: RenderResult) -> tuple[Image.Image, np.ndarray]:
    """Objects drawn as strokes only, background showing through."""
    styled = render(res.scene, res.image.size, outline=OUTLINE_WIDTH)
    return styled.image, _footprints(res)


def pixel_art(res: RenderResult) -> tuple[Image.Image, np.ndarray]:
    """Blocks of 1/32 of the shorter side (at least 4 px), colours posterised to 8 levels."""
    w, h = res.image.size
    block = max(4, min(w, h) // 32)
    small = res.image.resize((max(1, w // block), max(1, h // block)), Image.BOX)
    big = small.resize((w, h), Image.NEAREST)
    return ImageOps.posterize(big, 3), _full(res)


def pastel(res: RenderResult) -> tuple[Image.Image, np.ndarray]:
    """Every colour mixed with white: soft, light tones."""
    a = np.asarray(res.image, dtype=np.float32)
    out = np.rint(a * (1 - PASTEL_MIX) + 255 * PASTEL_MIX).astype(np.uint8)
    return Image.fromarray(out, mode="RGB"), _full(res)


def inverted(res: RenderResult) -> tuple[Image.Image, np.ndarray]:
    """Photographic negative (its own inverse)."""
    return ImageOps.invert(res.image), _full(res)


def grayscale(res: RenderResult) -> tuple[Image.Image, np.ndarray]:
    """Luminance only, kept as RGB."""
    return ImageOps.grayscale(res.image).convert("RGB"), _full(res)


def recolor(scene: Scene, mapping: dict[str, str]) -> Scene:
    """The scene with object colours renamed by `mapping` (colours not in it are kept)."""
    objs = tuple(replace(o, color=mapping.get(o.color, o.color)) for o in scene.objects)
    return replace(scene, objects=objs)


IMAGE_STYLES: dict[str, Callable[[RenderResult], tuple[Image.Image, np.ndarray]]] = {
    "outline": outline, "pixel_art": pixel_art, "pastel": pastel, "inverted": inverted,
    "grayscale": grayscale,
}
