"""Render a scene with PIL: anti-aliased shapes over a background, with exact boxes and masks.

Each object's coverage is rasterised only inside its own box, then composited in list order;
a pixel an object does not touch is never written, which is what makes add/remove edits exact
(pixels outside an object's footprint are bit-identical with and without it)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
from PIL import Image

from nexus_gen.detection import Detection
from nexus_gen.scenes.palette import BACKGROUND_RGB, COLOR_RGB, TEXTURE_AMPLITUDE
from nexus_gen.scenes.scene import Background, Scene, SceneObject, random_scene  # noqa: F401

Size = Union[int, tuple[int, int]]


@dataclass
class RenderedObject:
    """Ground truth of one drawn object. `mask` is what is visible (coverage >= 0.5 after
    occlusion), `full_mask` the whole shape, `footprint` every pixel the shape touches at all."""

    obj: SceneObject
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 (pixel edges) of the visible mask
    mask: np.ndarray = field(repr=False)
    full_mask: np.ndarray = field(repr=False)
    footprint: np.ndarray = field(repr=False)

    @property
    def occluded(self) -> bool:
        """True when another object hides part of this one."""
        return not np.array_equal(self.mask, self.full_mask)


@dataclass
class RenderResult:
    """A rendered scene: the RGB image and per-object ground truth (same order as the scene)."""

    image: Image.Image
    scene: Scene
    objects: list[RenderedObject]

    @property
    def boxes(self) -> list[tuple[float, float, float, float]]:
        return [o.box for o in self.objects]

    @property
    def masks(self) -> list[np.ndarray]:
        return [o.mask for o in self.objects]

    def detections(self) -> list[Detection]:
        """The ground truth as detections (score 1), for checking scorers against truth."""
        return [Detection(o.obj.shape, o.box, 1.0, o.mask, o.obj.color)
                for o in self.objects if o.mask.any()]


def _size(size: Size) -> tuple[int, int]:
    w, h = (size, size) if isinstance(size, int) else size
    if not (isinstance(w, int) and isinstance(h, int) and w >= 8 and h >= 8):
        raise ValueError(f"render size {size!r}: expected an int or (width, height), each >= 8")
    return w, h


def _texture(bg: Background, width: int, height: int) -> np.ndarray:
    """Zero-mean grey pattern in [-1, 1], float32 [height, width], resolution-independent."""
    ys = (np.arange(height, dtype=np.float64) + 0.5) / height
    xs = (np.arange(width, dtype=np.float64) + 0.5) / width
    rng = np.random.default_rng(bg.seed)
    if bg.texture == "striped":
        period = rng.uniform(0.04, 0.1)
        theta = math.radians(rng.choice([0, 45, 90, 135]))
        t = xs[None, :] * math.cos(theta) + ys[:, None] * math.sin(theta)
        return np.sin(2 * math.pi * t / period).astype(np.float32)
    if bg.texture == "checkered":
        n = int(rng.integers(6, 14))
        return np.where(((xs[None, :] * n).astype(int) + (ys[:, None] * n).astype(int)) % 2 == 0,
                        1.0, -1.0).astype(np.float32)
    grid = rng.uniform(-1, 1, size=(24, 24)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def render_background(bg: Background, width: int, height: int) -> np.ndarray:
    """The background alone, float32 RGB [height, width, 3] in 0..255."""
    base = np.array(BACKGROUND_RGB[bg.color], dtype=np.float32)
    out = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    if bg.kind == "gradient":
        other = np.array(BACKGROUND_RGB[bg.color2], dtype=np.float32)
        a = math.radians(bg.angle)
        xs = np.arange(width, dtype=np.float32) / max(width - 1, 1) - 0.5
        ys = np.arange(height, dtype=np.float32) / max(height - 1, 1) - 0.5
        t = xs[None, :] * math.cos(a) + ys[:, None] * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        out = base + (other - base) * t[..., None]
    elif bg.kind == "texture":
        out = out + TEXTURE_AMPLITUDE * _texture(bg, width, height)[..., None]
    return out.astype(np.float32)


def object_coverage(obj: SceneObject, width: int, height: int, outline: float = 0.0
                    ) -> tuple[int, int, np.ndarray]:
    """(x_off, y_off, coverage) of one object: the coverage patch and where it sits."""
    from nexus_gen.scenes.shapes import coverage

    x0, y0, w, h = obj.box(width, height)
    ix0, iy0 = max(int(math.floor(x0)) - 1, 0), max(int(math.floor(y0)) - 1, 0)
    ix1, iy1 = min(int(math.ceil(x0 + w)) + 1, width), min(int(math.ceil(y0 + h)) + 1, height)
    if ix1 <= ix0 or iy1 <= iy0:
        return ix0, iy0, np.zeros((0, 0), np.float32)
    cov = coverage(obj.shape, x0 - ix0, y0 - iy0, w, h, ix1 - ix0, iy1 - iy0, outline=outline)
    return ix0, iy0, cov


def _mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def render(scene: Scene, size: Size = 256, outline: float = 0.0,
           colors: Optional[dict[str, tuple[int, int, int]]] = None) -> RenderResult:
    """Draw `scene` at `size` (int or (width, height)). `outline` > 0 draws strokes of that width
    as a fraction of each object's size (a style); `colors` overrides object RGB values."""
    width, height = _size(size)
    palette = COLOR_RGB if colors is None else colors
    img = render_background(scene.background, width, height)
    covs = []
    for obj in scene.objects:
        stroke = outline * obj.size * min(width, height) if outline > 0 else 0.0
        x, y, cov = object_coverage(obj, width, height, outline=stroke)
        covs.append((x, y, cov))
        if cov.size == 0:
            continue
        h, w = cov.shape
        region = img[y:y + h, x:x + w]
        a = cov[..., None]
        col = np.array(palette[obj.color], dtype=np.float32)
        touched = cov > 0
        region[touched] = (region * (1 - a) + col * a)[touched]
    # Visible coverage: an object's coverage times what every later object leaves uncovered.
    rendered: list[RenderedObject] = []
    remaining = np.ones((height, width), np.float32)
    claimed = np.zeros((height, width), bool)  # a pixel belongs to at most one visible mask
    for obj, (x, y, cov) in reversed(list(zip(scene.objects, covs))):
        full = np.zeros((height, width), np.float32)
        h, w = cov.shape
        full[y:y + h, x:x + w] = cov
        vis = full * remaining
        remaining = remaining * (1 - full)
        mask = (vis >= 0.5) & ~claimed
        claimed |= mask
        rendered.append(RenderedObject(obj, _mask_box(mask), mask, full >= 0.5, full > 0))
    rendered.reverse()
    out = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), mode="RGB")
    return RenderResult(out, scene, rendered)
