"""A pixel-based shape detector for the scenes world: no weights, works on any RGB image.

Pixels are split into object-like and background-like with the palette's thresholds, object
pixels get their nearest palette colour, and seeds (per-colour regions that survive a 3x3
opening) split each connected object region into instances. Each instance's class is the shape
template (stretched to its box) with the best IoU, penalised when the box's aspect ratio is
wrong for that shape; that adjusted IoU, rescaled, is the confidence. Irregular regions (noise,
photos) match no template well, so they get low or zero scores."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from PIL import Image
from scipy import ndimage

from nexus_gen.detection import Detection
from nexus_gen.scenes.palette import COLOR_RGB, COLORS, FG_CHROMA, FG_DARK, FG_LIGHT
from nexus_gen.scenes.shapes import ASPECT, SHAPES, template

_PALETTE = np.array([COLOR_RGB[c] for c in COLORS], dtype=np.float32)
MAX_COLOR_DISTANCE = 90.0  # object pixels farther than this from every palette colour are unlabelled
MIN_AREA_FRACTION = 0.0008  # instances smaller than this share of the image are ignored
MIN_AREA_PIXELS = 24
IOU_FLOOR, IOU_FULL = 0.55, 0.88  # adjusted IoU mapped linearly onto score 0..1
ASPECT_PENALTY = 3.0
PURITY_FLOOR, PURITY_FULL = 0.5, 0.9  # share of interior pixels of the instance's own colour
BORDER_FACTOR = 0.5  # an instance touching the image border may be cut off: halve its score
CLASSIFY_MAX_SIDE = 128  # regions larger than this are downscaled before template matching
_OPEN = np.ones((3, 3), bool)


def foreground(rgb: np.ndarray) -> np.ndarray:
    """Object-like pixels of a uint8 RGB array: saturated, near-black or near-white."""
    mx = rgb.max(axis=2).astype(np.int16)
    mn = rgb.min(axis=2).astype(np.int16)
    return ((mx - mn) > FG_CHROMA) | (mx < FG_DARK) | (mn > FG_LIGHT)


def color_labels(rgb: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Per-pixel index into COLORS of the nearest palette colour (-1 off foreground or too far)."""
    labels = np.full(fg.shape, -1, np.int16)
    px = rgb[fg].astype(np.float32)
    if len(px):
        d = ((px[:, None, :] - _PALETTE[None, :, :]) ** 2).sum(axis=2)
        idx = d.argmin(axis=1)
        ok = d[np.arange(len(px)), idx] <= MAX_COLOR_DISTANCE ** 2
        labels[fg] = np.where(ok, idx, -1)
    return labels


def classify_shape(mask: np.ndarray) -> tuple[str, float, dict[str, float]]:
    """(best shape, its adjusted IoU, all adjusted IoUs) of a binary mask cropped to its box."""
    h, w = mask.shape
    tol = 1.5 / max(min(w, h), 1)  # one or two pixels of box error are not evidence
    observed = math.log(w / h)
    if max(w, h) > CLASSIFY_MAX_SIDE:  # compare large regions at a bounded resolution
        k = CLASSIFY_MAX_SIDE / max(w, h)
        w, h = max(1, round(w * k)), max(1, round(h * k))
        small = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BOX)
        mask = np.asarray(small) >= 128
    scores = {}
    for s in SHAPES:
        t = template(s, w, h)
        inter = np.count_nonzero(t & mask)
        union = np.count_nonzero(t | mask)
        iou = inter / union if union else 0.0
        off = max(0.0, abs(observed - math.log(ASPECT[s])) - tol)
        scores[s] = iou * math.exp(-ASPECT_PENALTY * off)
    best = max(scores, key=scores.__getitem__)
    return best, scores[best], scores


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if not isinstance(image, Image.Image):
        raise TypeError(f"detect() needs a PIL.Image, got {type(image).__name__}")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def detect(image: Image.Image, min_score: float = 0.0) -> list[Detection]:
    """Shapes in `image` as Detections (label = shape, colour, box, mask, score in (0, 1]),
    sorted by score; detections scoring <= `min_score` are dropped."""
    rgb = _to_rgb_array(image)
    height, width = rgb.shape[:2]
    min_area = max(MIN_AREA_PIXELS, int(MIN_AREA_FRACTION * height * width))
    fg = foreground(rgb)
    labels = color_labels(rgb, fg)

    # Seeds: per colour, the pixels that survive a 3x3 opening, as connected regions.
    seeds = np.zeros((height, width), np.int32)
    seed_color: list[int] = [-1]
    for ci in np.unique(labels[labels >= 0]):
        ys, xs = np.nonzero(labels == ci)
        win = (slice(max(ys.min() - 1, 0), ys.max() + 2), slice(max(xs.min() - 1, 0), xs.max() + 2))
        core = ndimage.binary_opening(labels[win] == ci, structure=_OPEN)
        lab, n = ndimage.label(core)
        if n == 0:
            continue
        areas = np.bincount(lab.ravel(), minlength=n + 1)
        for k in np.nonzero(areas[1:] >= min_area // 2)[0] + 1:
            seed_color.append(int(ci))
            seeds[win][lab == k] = len(seed_color) - 1

    regions, _ = ndimage.label(fg)
    out: list[Detection] = []
    for ri, sl in enumerate(ndimage.find_objects(regions), start=1):
        if sl is None:
            continue
        region = regions[sl] == ri
        local_seeds = np.where(region, seeds[sl], 0)
        ids = np.unique(local_seeds[local_seeds > 0])
        if len(ids) == 0:
            continue
        if len(ids) == 1:
            parts = [(int(ids[0]), region)]
        else:
            # Overlapping objects of different colours: each pixel joins its nearest seed.
            _, (iy, ix) = ndimage.distance_transform_edt(local_seeds == 0, return_indices=True)
            owner = np.where(region, local_seeds[iy, ix], 0)
            parts = [(int(k), owner == k) for k in ids]
        for sid, part in parts:
            det = _instance(part, sl, seed_color[sid], labels[sl], min_area, height, width)
            if det is not None and det.score > min_score:
                out.append(det)
    out.sort(key=lambda d: (-d.score, d.box))
    return out


def _instance(part: np.ndarray, sl: tuple[slice, slice], color_index: int,
              local_labels: np.ndarray, min_area: int, height: int, width: int
              ) -> Optional[Detection]:
    """One instance from its region mask (in the crop `sl`), or None if it is not shape-like."""
    area = int(np.count_nonzero(part))
    if area < min_area:
        return None
    ys, xs = np.nonzero(part)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = part[y0:y1, x0:x1]
    shape, adj_iou, _ = classify_shape(crop)
    score = (adj_iou - IOU_FLOOR) / (IOU_FULL - IOU_FLOOR)
    inner = ndimage.binary_erosion(part, iterations=2)
    if not inner.any():
        inner = part
    purity = float(np.count_nonzero(local_labels[inner] == color_index)) / np.count_nonzero(inner)
    score *= min(1.0, max(0.0, (purity - PURITY_FLOOR) / (PURITY_FULL - PURITY_FLOOR)))
    oy, ox = sl[0].start, sl[1].start
    if oy + y0 == 0 or ox + x0 == 0 or oy + y1 == height or ox + x1 == width:
        score *= BORDER_FACTOR
    score = float(min(1.0, score))
    if score <= 0:
        return None
    mask = np.zeros((height, width), bool)
    mask[oy + y0:oy + y1, ox + x0:ox + x1] = crop
    box = (float(ox + x0), float(oy + y0), float(ox + x1), float(oy + y1))
    return Detection(shape, box, score, mask, COLORS[color_index])


def object_in_mask(image: Image.Image, shape: str, color: str, mask: np.ndarray) -> bool:
    """Does the detector find an object of this shape and colour whose box centre lies inside
    `mask` (bool [H, W])? The verdict behind add ("is the added object there") and remove ("is
    the removed object still there") edits, for built triplets and edited images alike."""
    for d in detect(image):
        if d.label != shape or d.color != color:
            continue
        cx, cy = int((d.box[0] + d.box[2]) / 2), int((d.box[1] + d.box[3]) / 2)
        if 0 <= cy < mask.shape[0] and 0 <= cx < mask.shape[1] and mask[cy, cx]:
            return True
    return False
