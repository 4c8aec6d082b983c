"""The one detection structure every detector returns and every checker (GenEval rules,
edit verification) reads. Boxes are pixel coordinates `[x1, y1, x2, y2]` (x right, y down)."""
from __future__ import annotations

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
