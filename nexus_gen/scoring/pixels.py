"""Pixel-space helpers for the l1 / l2 / masked-l1 metrics: images to [0, 1] arrays, resized to
a reference size the way MagicBrush does (bicubic, to the reference's width x height)."""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image

from nexus_gen.scoring import metrics
from nexus_gen.scoring.images import ImageInput, ImageLoadError, describe, load_rgb


def to_unit(image: Image.Image) -> np.ndarray:
    """RGB PIL image -> float32 array [H, W, 3] in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def resize_to(image: Image.Image, reference: Image.Image) -> Image.Image:
    """`image` resized (bicubic) to the reference's size, unchanged if already that size."""
    if image.size == reference.size:
        return image
    return image.resize(reference.size, Image.Resampling.BICUBIC)


def mask_array(mask, size: tuple[int, int]) -> np.ndarray:
    """An edit mask (bool/uint8 array, PIL image, path or bytes) -> bool [H, W] at `size` (W, H).

    Non-zero pixels are inside; resizing uses nearest neighbour so the mask stays binary."""
    if isinstance(mask, np.ndarray):
        img = Image.fromarray((mask.astype(bool) * 255).astype(np.uint8)) if mask.ndim == 2 else None
        if img is None:
            raise ImageLoadError(f"mask array must be [H, W], got shape {mask.shape}")
    elif isinstance(mask, Image.Image):
        img = mask
    else:
        try:
            img = load_rgb(mask)
        except ImageLoadError as exc:
            raise ImageLoadError(f"mask {describe(mask)}: {exc}") from exc
    img = img.convert("L")
    if img.size != size:
        img = img.resize(size, Image.Resampling.NEAREST)
    return np.asarray(img) > 0


def pixel_scores(edited: ImageInput, reference: ImageInput, mask=None,
                 which: tuple[str, ...] = ("l1", "l2")) -> dict[str, Optional[float]]:
    """l1 / l2 (and l1_inside / l1_outside when a mask is given) of `edited` resized to
    `reference`'s size, on [0, 1] pixels. The mask is taken at the reference's size."""
    ref = load_rgb(reference)
    ed = resize_to(load_rgb(edited), ref)
    a, b = to_unit(ed), to_unit(ref)
    out: dict[str, Optional[float]] = {}
    if "l1" in which:
        out["l1"] = metrics.l1(a, b)
    if "l2" in which:
        out["l2"] = metrics.l2(a, b)
    if mask is not None:
        m = mask_array(mask, ref.size)
        out["l1_inside"] = metrics.masked_l1(a, b, m, inside=True)
        out["l1_outside"] = metrics.masked_l1(a, b, m, inside=False)
    return out
