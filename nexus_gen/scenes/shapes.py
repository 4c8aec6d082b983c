"""Shape classes of the scenes world: geometry in a unit box and anti-aliased coverage rasters.

Every shape is defined inside its own bounding box, so a shape's box is exact by construction;
`ASPECT` is each shape's width / height. Coverage is rasterised with PIL at a supersampling
factor and box-averaged, which makes it deterministic and resolution-independent."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "hexagon", "heart", "diamond", "cross",
)

PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES} | {"cross": "crosses"}
ZH_SHAPES: dict[str, str] = {
    "circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形",
    "hexagon": "六边形", "heart": "心形", "diamond": "菱形", "cross": "十字形",
}

SUPERSAMPLE = 4


def _normalise(points: list[tuple[float, float]]) -> tuple[list[tuple[float, float]], float]:
    """Scale a polygon into the unit box [0,1]^2 and return it with its width/height ratio."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    w, h = x1 - x0, y1 - y0
    return [((x - x0) / w, (y - y0) / h) for x, y in points], w / h


def _star() -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        r = 1.0 if i % 2 == 0 else 0.45
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _heart() -> list[tuple[float, float]]:
    pts = []
    for i in range(96):
        t = 2 * math.pi * i / 96
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x, -y))
    return pts


def _hexagon() -> list[tuple[float, float]]:
    return [(math.cos(math.pi / 3 * i), math.sin(math.pi / 3 * i)) for i in range(6)]


def _cross() -> list[tuple[float, float]]:
    a, b = 1 / 3, 2 / 3
    return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b),
            (0, a), (a, a)]


_POLYGONS: dict[str, tuple[list[tuple[float, float]], float]] = {
    "square": ([(0, 0), (1, 0), (1, 1), (0, 1)], 1.0),
    "triangle": ([(0.5, 0), (1, 1), (0, 1)], 2 / math.sqrt(3)),
    "star": _normalise(_star()),
    "hexagon": _normalise(_hexagon()),
    "heart": _normalise(_heart()),
    "diamond": ([(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)], 0.75),
    "cross": (_cross(), 1.0),
}

ASPECT: dict[str, float] = {"circle": 1.0} | {k: v[1] for k, v in _POLYGONS.items()}


def check_shape(shape: str) -> str:
    """Return `shape` if it is a known class, else raise naming the valid ones."""
    if shape not in ASPECT:
        raise ValueError(f"unknown shape {shape!r}: expected one of {', '.join(SHAPES)}")
    return shape


def box_size(shape: str, size: float) -> tuple[float, float]:
    """(width, height) of a shape whose larger box side is `size`."""
    a = ASPECT[check_shape(shape)]
    return (size, size / a) if a >= 1 else (size * a, size)


def coverage(shape: str, x0: float, y0: float, w: float, h: float, width: int, height: int,
             outline: float = 0.0, ss: int = SUPERSAMPLE) -> np.ndarray:
    """Anti-aliased coverage in [0,1] of `shape` filling box (x0, y0, w, h) on a `width` x `height`
    pixel grid (float32 [height, width]); `outline` > 0 draws only a stroke that many px wide."""
    check_shape(shape)
    img = Image.new("L", (width * ss, height * ss), 0)
    draw = ImageDraw.Draw(img)
    stroke = max(1, int(round(outline * ss))) if outline > 0 else 0
    if shape == "circle":
        bbox = [x0 * ss, y0 * ss, (x0 + w) * ss - 1, (y0 + h) * ss - 1]
        if stroke:
            draw.ellipse(bbox, outline=255, width=stroke)
        else:
            draw.ellipse(bbox, fill=255)
    else:
        # Polygon vertices on the supersampled grid; pixel centres at +0.5 are covered.
        pts = [((x0 + u * w) * ss - 0.5, (y0 + v * h) * ss - 0.5) for u, v in _POLYGONS[shape][0]]
        if stroke:
            draw.polygon(pts, outline=255, width=stroke)
        else:
            draw.polygon(pts, fill=255)
    # PIL's reduce is an exact box average (rounded to 1/255): any touched pixel stays > 0.
    return np.asarray(img.reduce(ss), dtype=np.float32) / 255.0


@lru_cache(maxsize=2048)
def template(shape: str, w: int, h: int) -> np.ndarray:
    """Binary mask of `shape` stretched to exactly fill a `w` x `h` pixel box (detector use)."""
    return coverage(shape, 0.0, 0.0, float(w), float(h), w, h) >= 0.5
