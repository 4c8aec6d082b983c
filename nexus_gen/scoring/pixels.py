"""Pixel-space helpers for the l1 / l2 / masked-l1 metrics: images to [0, 1] arrays, resized to
a reference size the way MagicBrush does (bicubic, to the reference's width x height).
`PixelPairs` scores many pairs from the images a shared `ImageJob` decodes once."""
from __future__ import annotations

import threading
from typing import Any, Optional, Sequence, Union

import numpy as np
from PIL import Image

from nexus_gen.scoring import metrics
from nexus_gen.scoring.image_inputs import ImageInput, ImageLoadError, describe, load_rgb


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
    return rgb_pixel_scores(load_rgb(edited), ref, mask, which)


def rgb_pixel_scores(edited: Image.Image, reference: Image.Image, mask=None,
                     which: tuple[str, ...] = ("l1", "l2")) -> dict[str, Optional[float]]:
    """`pixel_scores` of images already decoded to RGB (neither is modified)."""
    ed = resize_to(edited, reference)
    a, b = to_unit(ed), to_unit(reference)
    out: dict[str, Optional[float]] = {}
    if "l1" in which:
        out["l1"] = metrics.l1(a, b)
    if "l2" in which:
        out["l2"] = metrics.l2(a, b)
    if mask is not None:
        m = mask_array(mask, reference.size)
        out["l1_inside"] = metrics.masked_l1(a, b, m, inside=True)
        out["l1_outside"] = metrics.masked_l1(a, b, m, inside=False)
    return out


def _error(exc: BaseException) -> str:
    return f"pixels: {exc}" if isinstance(exc, ImageLoadError) else \
        f"pixels: {type(exc).__name__}: {exc}"


MAX_HELD_IMAGES = 64  # decoded images `PixelPairs` keeps for later pairs (~200 MB at 1024 px)
_DROPPED = object()  # decoded, not kept (over `max_held`): decoded again for its next pair
_RELEASED = object()  # decoded, no pair needs it any more


class PixelPairs:
    """`pixel_scores` of many (edited, reference) pairs of `items`, fed by an `ImageJob` as its
    `DecodedSink`, so each distinct image is decoded once for the encoders and these metrics.

    A pair is scored (in the job's worker) as soon as both its images are in; an image is kept
    only while a later pair still needs it and at most `max_held` (default `MAX_HELD_IMAGES`) are
    kept at once (past that one is decoded again for its pair): memory stays bounded whatever the
    pair order, and pairs that sit near each other (both directions of an edit) share decodes."""

    def __init__(self, items: Sequence[ImageInput], edited: Sequence[int], reference: Sequence[int],
                 masks: Optional[Sequence[Any]] = None, which: tuple[str, ...] = ("l1", "l2"),
                 max_held: Optional[int] = None) -> None:
        if len(edited) != len(reference):
            raise ValueError(f"{len(edited)} edited images for {len(reference)} references")
        self._items = items
        self._pairs = list(zip(reference, edited))  # item indices, reference first (read first)
        self._masks = list(masks) if masks is not None else [None] * len(self._pairs)
        self._which = which
        self._max_held = MAX_HELD_IMAGES if max_held is None else max(0, max_held)
        self._lock = threading.Lock()
        self._keys: list[Optional[str]] = [None] * len(items)
        self._read_errors: list[Optional[BaseException]] = [None] * len(items)
        self._users: dict[str, list[int]] = {}
        self._refs: dict[str, int] = {}  # pairs not yet scored, per image
        self._state: dict[str, Union[Image.Image, BaseException, object]] = {}
        self._out: list[Optional[Union[dict, str]]] = [None] * len(self._pairs)
        self.held = self.peak_held = 0

    def start(self, keys: list[Optional[str]], read_errors: list[Optional[BaseException]]) -> None:
        """`DecodedSink.start`: pairs with an unreadable image wait for nothing."""
        self._keys, self._read_errors = keys, read_errors
        for p, (r, e) in enumerate(self._pairs):
            pk = {keys[r], keys[e]}
            if None in pk:
                continue
            for k in pk:
                self._users.setdefault(k, []).append(p)
                self._refs[k] = self._refs.get(k, 0) + 1

    def decoded(self, key: str, image: Optional[Image.Image], error: Optional[BaseException]) -> None:
        """`DecodedSink.decoded`: score the pairs this image completes, keep it if others need it."""
        with self._lock:
            ready = [p for p in self._users.get(key, ())
                     if all(k == key or k in self._state for k in self._pair_keys(p))]
            if error is not None:
                self._state[key] = error
            elif self._refs.get(key, 0) > len(ready) and self.held < self._max_held:
                self._state[key] = image
                self.held += 1
                self.peak_held = max(self.peak_held, self.held)
            else:
                self._state[key] = _DROPPED if self._refs.get(key, 0) > len(ready) else _RELEASED
            inputs = [[image if k == key else self._state[k] for k in self._pair_keys(p)]
                      for p in ready]
        for p, (ref, ed) in zip(ready, inputs):
            if not any(isinstance(x, BaseException) for x in (ref, ed)):  # else: error in results()
                self._out[p] = self._score(p, ref, ed)
        with self._lock:
            for p in ready:
                for k in set(self._pair_keys(p)):
                    self._refs[k] -= 1
                    if self._refs[k] == 0 and isinstance(self._state[k], Image.Image):
                        self._state[k] = _RELEASED
                        self.held -= 1

    def _pair_keys(self, p: int) -> tuple[Optional[str], Optional[str]]:
        """(reference key, edited key) of pair `p`."""
        r, e = self._pairs[p]
        return self._keys[r], self._keys[e]

    def _score(self, p: int, ref: Any, ed: Any) -> Union[dict, str]:
        try:
            r, e = self._pairs[p]
            ref = load_rgb(self._items[r]) if ref is _DROPPED else ref
            ed = load_rgb(self._items[e]) if ed is _DROPPED else ed
            return rgb_pixel_scores(ed, ref, self._masks[p], self._which)
        except Exception as exc:
            return _error(exc)

    def results(self) -> list[Union[dict, str]]:
        """Per pair: the scores, or `pixels: <why>` (the reference's problem first, as
        `pixel_scores` reads the reference first)."""
        out: list[Union[dict, str]] = []
        for p, (r, e) in enumerate(self._pairs):
            err = None
            for i in (r, e):
                exc = self._read_errors[i] or self._state.get(self._keys[i])  # type: ignore[arg-type]
                if isinstance(exc, BaseException):
                    err = _error(exc)
                    break
            done = self._out[p]
            out.append(err or (done if done is not None else "pixels: image not decoded"))
        return out
