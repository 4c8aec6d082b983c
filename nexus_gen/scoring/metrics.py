"""The scoring formulas, as pure functions of embeddings or pixel arrays (testable by hand).

Embedding metrics take `[D]` or `[N, D]` tensors/arrays (not necessarily normalised) and return
a float or an `[N]` float64 numpy array. Pixel metrics take float arrays in [0, 1] of one shape.
- clip_t:    cos(E_I(image), E_T(caption))                      (MagicBrush CLIP-T)
- clipscore: 2.5 * max(cos(E_I(image), E_T("A photo depicts " + caption)), 0)
- clip_i:    cos(E_I(a), E_I(b))
- clip_dir:  cos(E_I(target) - E_I(source), E_T(target caption) - E_T(source caption)) on
             L2-normalised embeddings                              (InstructPix2Pix / Emu Edit)
- dino:      cos(DINO CLS(a), DINO CLS(b))
- l1, l2:    mean |a - b|, mean (a - b)^2 on [0, 1] pixels (MagicBrush; "L2" is the MSE)
- masked_l1: mean |a - b| over the pixels inside (or outside) a boolean mask"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor, list]
Score = Union[float, np.ndarray]

CLIPSCORE_PREFIX = "A photo depicts "
CLIPSCORE_WEIGHT = 2.5


def _as_2d(x: ArrayLike) -> tuple[np.ndarray, bool]:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
    if a.ndim == 1:
        return a[None, :], True
    if a.ndim != 2:
        raise ValueError(f"expected an embedding [D] or a batch [N, D], got shape {a.shape}")
    return a, False


def _normalize(a: np.ndarray) -> np.ndarray:
    """Unit rows; a zero row (e.g. the text direction of two identical captions) becomes NaN, a
    score that is undefined and stored as null, without a runtime warning."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _out(v: np.ndarray, single: bool) -> Score:
    return float(v[0]) if single else v


def cosine(a: ArrayLike, b: ArrayLike) -> Score:
    """Row-wise cosine similarity of two embeddings (or batches of the same size)."""
    x, s1 = _as_2d(a)
    y, s2 = _as_2d(b)
    if x.shape != y.shape:
        raise ValueError(f"cosine: shapes differ: {x.shape} vs {y.shape}")
    return _out(np.sum(_normalize(x) * _normalize(y), axis=-1), s1 and s2)


def clip_t(image_emb: ArrayLike, text_emb: ArrayLike) -> Score:
    """CLIP-T: cosine of an image embedding and a caption embedding."""
    return cosine(image_emb, text_emb)


def clipscore(image_emb: ArrayLike, text_emb: ArrayLike, weight: float = CLIPSCORE_WEIGHT) -> Score:
    """CLIPScore: `2.5 * max(cos, 0)`; `text_emb` must embed `CLIPSCORE_PREFIX + caption`."""
    c = cosine(image_emb, text_emb)
    return weight * max(c, 0.0) if isinstance(c, float) else weight * np.maximum(c, 0.0)


def clip_i(image_emb_a: ArrayLike, image_emb_b: ArrayLike) -> Score:
    """CLIP-I: cosine of two image embeddings."""
    return cosine(image_emb_a, image_emb_b)


def clip_dir(source_img: ArrayLike, target_img: ArrayLike, source_txt: ArrayLike,
             target_txt: ArrayLike) -> Score:
    """Directional CLIP similarity: the image change against the caption change."""
    (si, s), (ti, _), (st, _), (tt, _) = (_as_2d(v) for v in (source_img, target_img,
                                                              source_txt, target_txt))
    d_img = _normalize(ti) - _normalize(si)
    d_txt = _normalize(tt) - _normalize(st)
    return _out(np.sum(_normalize(d_img) * _normalize(d_txt), axis=-1), s)


def dino(feat_a: ArrayLike, feat_b: ArrayLike) -> Score:
    """DINO similarity: cosine of two CLS features."""
    return cosine(feat_a, feat_b)


def _pixels(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"pixel arrays differ in shape: {x.shape} vs {y.shape}; "
                         "resize to the reference first (pixels.resize_to)")
    return x, y


def l1(a: ArrayLike, b: ArrayLike) -> float:
    """Mean absolute difference of two [0, 1] pixel arrays of one shape."""
    x, y = _pixels(a, b)
    return float(np.mean(np.abs(x - y)))


def l2(a: ArrayLike, b: ArrayLike) -> float:
    """Mean squared difference of two [0, 1] pixel arrays of one shape (MagicBrush's "L2")."""
    x, y = _pixels(a, b)
    return float(np.mean((x - y) ** 2))


def masked_l1(a: ArrayLike, b: ArrayLike, mask: ArrayLike, *, inside: bool = True) -> float:
    """Mean |a - b| over pixels where the [H, W] boolean `mask` is True (`inside`) or False.

    All channels of the selected pixels count. NaN if the region is empty."""
    x, y = _pixels(a, b)
    m = np.asarray(mask, dtype=bool)
    if m.shape != x.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match image shape {x.shape[:2]}")
    sel = m if inside else ~m
    if not sel.any():
        return float("nan")
    return float(np.mean(np.abs(x[sel] - y[sel])))
