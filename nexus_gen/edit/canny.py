"""Canny edges without OpenCV (numpy + scipy): the control image of ImagePulse's InstantStyle stage
(ControlNet canny on the source). Gaussian blur, Sobel gradients, non-maximum suppression along
the gradient direction quantised to 4 directions, then a double threshold with hysteresis (weak
edge pixels are kept only when 8-connected to a strong one). Pure arithmetic on the image's
bytes: the same image gives the same edges.

Thresholds are on the Sobel magnitude of 0..255 grey levels, as OpenCV's `Canny(img, 100, 200)`
(L2 gradient), so the values ImagePulse-style pipelines use carry over."""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

_EIGHT = np.ones((3, 3), bool)


def gradients(grey: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sobel gradients (gx along columns, gy along rows) of the grey image blurred by a Gaussian
    of `sigma` px (0: no blur), and their magnitude."""
    g = grey.astype(np.float64)
    if sigma > 0:
        g = ndimage.gaussian_filter(g, sigma, mode="nearest")
    gx = ndimage.sobel(g, axis=1, mode="nearest")
    gy = ndimage.sobel(g, axis=0, mode="nearest")
    return gx, gy, np.hypot(gx, gy)


def non_maximum_suppression(gx: np.ndarray, gy: np.ndarray, mag: np.ndarray) -> np.ndarray:
    """Magnitudes that are a local maximum across the edge (along the gradient, quantised to 0,
    45, 90 or 135 degrees), else 0. A plateau of two equal pixels keeps the first (lower row or
    column index), so a step edge gives a one-pixel line."""
    angle = np.rad2deg(np.arctan2(gy, gx)) % 180.0
    sector = (((angle + 22.5) // 45).astype(int)) % 4  # 0: gradient along x, 1: 45, 2: y, 3: 135
    # (row, col) step to the neighbour in the gradient direction for each sector
    steps = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    pad = np.pad(mag, 1, mode="constant")
    h, w = mag.shape
    out = np.zeros_like(mag)
    for s, (dr, dc) in steps.items():
        ahead = pad[1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
        behind = pad[1 - dr:1 - dr + h, 1 - dc:1 - dc + w]
        keep = (sector == s) & (mag >= ahead) & (mag > behind)
        out[keep] = mag[keep]
    return out


def hysteresis(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """The pixels of `weak` (a superset of `strong`) whose 8-connected component holds a strong one."""
    labels, n = ndimage.label(weak | strong, structure=_EIGHT)
    if n == 0:
        return np.zeros(weak.shape, bool)
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    return keep[labels]


def canny(image: Image.Image, low: float = 100.0, high: float = 200.0, sigma: float = 1.0) -> np.ndarray:
    """A boolean (height, width) edge map of `image` (converted to grey, ITU-R 601 luma)."""
    if not 0 <= low <= high:
        raise ValueError(f"canny thresholds must satisfy 0 <= low <= high, got low={low}, high={high}")
    grey = np.asarray(image.convert("L"))
    gx, gy, mag = gradients(grey, sigma)
    thin = non_maximum_suppression(gx, gy, mag)
    return hysteresis(thin >= low, thin >= high) & (thin > 0)


def canny_control_image(image: Image.Image, low: float = 100.0, high: float = 200.0,
                        sigma: float = 1.0) -> Image.Image:
    """The edges as a ControlNet canny input: white edges on black, RGB, the image's size."""
    edges = np.where(canny(image, low, high, sigma), 255, 0).astype(np.uint8)
    return Image.fromarray(np.repeat(edges[..., None], 3, axis=2), "RGB")
