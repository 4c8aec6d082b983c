"""GenEval's relative-position rule, on boxes (x1, y1, x2, y2; y grows downward).

offset = centre_A - centre_B; rev = max(|offset| - 0.1 * (dim_A + dim_B), 0) * sign(offset) per
axis; no relation when every |rev| < 1e-3; else (dx, dy) = rev / ||offset|| and A is left of B
if dx < -0.5, right of if dx > 0.5, above if dy < -0.5, below if dy > 0.5 (several may hold)."""
from __future__ import annotations

import math

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
POSITION_MARGIN = 0.1

Box = tuple[float, float, float, float]


def relations(a: Box, b: Box, margin: float = POSITION_MARGIN) -> set[str]:
    """Every relation in which box `a` stands to box `b` under GenEval's rule."""
    ca = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2)
    cb = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    dims = ((a[2] - a[0]) + (b[2] - b[0]), (a[3] - a[1]) + (b[3] - b[1]))
    offset = (ca[0] - cb[0], ca[1] - cb[1])
    rev = [max(abs(o) - margin * d, 0.0) * math.copysign(1.0, o) for o, d in zip(offset, dims)]
    if all(abs(r) < 1e-3 for r in rev):
        return set()
    norm = math.hypot(*offset)
    dx, dy = rev[0] / norm, rev[1] / norm
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out
