"""Detections and how their boxes stand to each other, shared by the scenes world (which draws
images that must satisfy GenEval's rules) and scoring (which judges them); neither owns it.

`Detection` is the one structure every detector returns and every checker (GenEval rules, edit
verification) reads. Boxes are pixel coordinates `[x1, y1, x2, y2]` (x right, y down).

`relative_position` is GenEval's relative-position rule: offset = centre_A - centre_B;
rev = max(|offset| - t * (dim_A + dim_B), 0) * sign(offset) per axis (t = position_threshold,
0.1 officially); no relation when every |rev| < 1e-3; else (dx, dy) = rev / ||offset||: left of
if dx < -0.5, right of if dx > 0.5, above if dy < -0.5, below if dy > 0.5."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class Detection:
    """One detected object instance."""

    label: str  # class name, e.g. "dog" or "circle"
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    score: float  # confidence in [0, 1]
    mask: Optional[np.ndarray] = field(default=None, repr=False)  # bool [H, W], None if unknown
    color: Optional[str] = None  # a colour name if the detector already knows it

    def to_json(self) -> dict[str, Any]:
        """The re-scoring file's form: box, score and (if known) colour; masks are not stored."""
        out: dict[str, Any] = {"box": [float(v) for v in self.box], "score": float(self.score)}
        if self.color is not None:
            out["color"] = self.color
        return out

    @classmethod
    def from_json(cls, label: str, obj: dict[str, Any]) -> "Detection":
        box = obj["box"]
        if not (isinstance(box, (list, tuple)) and len(box) == 4):
            raise ValueError(f"detection of {label!r}: 'box' must be [x1, y1, x2, y2], got {box!r}")
        return cls(label=label, box=tuple(float(v) for v in box), score=float(obj["score"]),
                   color=obj.get("color"))


Detections = dict[str, list[Detection]]  # class name -> instances (any order)


def group_by_label(dets: list[Detection]) -> Detections:
    """List of detections -> {label: [detections sorted by score, highest first]}."""
    out: Detections = {}
    for d in dets:
        out.setdefault(d.label, []).append(d)
    for v in out.values():
        v.sort(key=lambda d: -d.score)
    return out


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
