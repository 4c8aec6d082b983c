"""GenEval's relative-position rule on boxes (x1, y1, x2, y2; y grows downward), shared by the
GenEval scorer and the scenes world that must draw images satisfying it.

offset = centre_A - centre_B; rev = max(|offset| - t * (dim_A + dim_B), 0) * sign(offset) per axis
(t = position_threshold, 0.1 officially); no relation when every |rev| < 1e-3; else (dx, dy) =
rev / ||offset||: left of if dx < -0.5, right of if dx > 0.5, above if dy < -0.5, below if dy > 0.5."""
from __future__ import annotations

import math

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
POSITION_THRESHOLD = 0.1


def relative_position(box_a: tuple[float, ...], box_b: tuple[float, ...],
                      position_threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of A to B (y grows downward): centre offset shrunk by `position_threshold`
    times the summed box sizes, per axis, then normalised by the raw offset's length."""
    ca = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    cb = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    dims = (abs(box_a[2] - box_a[0]) + abs(box_b[2] - box_b[0]),
            abs(box_a[3] - box_a[1]) + abs(box_b[3] - box_b[1]))
    offset = (ca[0] - cb[0], ca[1] - cb[1])
    rev = [max(abs(o) - position_threshold * d, 0.0) * _sign(o) for o, d in zip(offset, dims)]
    if all(abs(r) < 1e-3 for r in rev):
        return set()
    norm = math.hypot(*offset)
    dx, dy = rev[0] / norm, rev[1] / norm
    rels: set[str] = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def _sign(v: float) -> float:
    return (v > 0) - (v < 0)
