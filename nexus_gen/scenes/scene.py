"""The scene model: objects (shape, colour, centre, size) on a background, in normalised units.

Positions are fractions of the image width / height and sizes fractions of its shorter side, so
one scene renders at any resolution. `random_scene` draws one from a seed, deterministically."""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional, Sequence

from nexus_gen.scenes.palette import BACKGROUND_RGB, COLORS
from nexus_gen.scenes.shapes import SHAPES, box_size, check_shape

BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "texture")
TEXTURES: tuple[str, ...] = ("speckled", "striped", "checkered")
MIN_GAP = 0.03  # free space kept between object boxes when overlap is not allowed


@dataclass(frozen=True)
class SceneObject:
    """One shape: class, colour, box centre (cx, cy in [0,1]) and larger box side `size`."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    def __post_init__(self) -> None:
        check_shape(self.shape)
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}: expected one of {', '.join(COLORS)}")
        if not (0 < self.size <= 1):
            raise ValueError(f"object size {self.size!r} must be in (0, 1] (fraction of short side)")
        if not (0 <= self.cx <= 1 and 0 <= self.cy <= 1):
            raise ValueError(f"object centre ({self.cx!r}, {self.cy!r}) must lie in [0, 1]^2")

    def box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Exact geometric box (x0, y0, w, h) in pixels for an image of this size."""
        w, h = box_size(self.shape, self.size * min(width, height))
        return self.cx * width - w / 2, self.cy * height - h / 2, w, h

    def norm_box(self, aspect: float = 1.0) -> tuple[float, float, float, float]:
        """Box (x1, y1, x2, y2) in normalised units for an image of width/height `aspect`."""
        w, h = box_size(self.shape, self.size)
        # sizes are fractions of the short side: convert to fractions of each axis
        sx = min(1.0, 1.0 / aspect)
        sy = min(1.0, aspect)
        return (self.cx - w * sx / 2, self.cy - h * sy / 2, self.cx + w * sx / 2,
                self.cy + h * sy / 2)


@dataclass(frozen=True)
class Background:
    """Background: `plain` (colour), `gradient` (colour -> colour2 along `angle` degrees) or
    `texture` (colour with a `texture` pattern drawn from `seed`)."""

    kind: str = "plain"
    color: str = "grey"
    color2: Optional[str] = None
    angle: float = 0.0
    texture: Optional[str] = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in BACKGROUND_KINDS:
            raise ValueError(f"unknown background kind {self.kind!r}: expected one of "
                             f"{', '.join(BACKGROUND_KINDS)}")
        for c in (self.color, self.color2):
            if c is not None and c not in BACKGROUND_RGB:
                raise ValueError(f"unknown background colour {c!r}: expected one of "
                                 f"{', '.join(BACKGROUND_RGB)}")
        if self.kind == "gradient" and self.color2 is None:
            raise ValueError("a gradient background needs color2")
        if self.kind == "texture" and self.texture not in TEXTURES:
            raise ValueError(f"texture background: texture {self.texture!r} must be one of "
                             f"{', '.join(TEXTURES)}")


@dataclass(frozen=True)
class Scene:
    """Objects drawn in list order (later ones on top) over a background."""

    objects: tuple[SceneObject, ...] = ()
    background: Background = field(default_factory=Background)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lineage, datasets)."""
        return {"objects": [asdict(o) for o in self.objects], "background": asdict(self.background)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scene":
        """Inverse of `to_dict`."""
        try:
            return cls(objects=tuple(SceneObject(**o) for o in d["objects"]),
                       background=Background(**d["background"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"scene dict is malformed ({e}): expected keys objects, background") from e

    def without(self, index: int) -> "Scene":
        """The scene with object `index` removed."""
        if not 0 <= index < len(self.objects):
            raise IndexError(f"object index {index} out of range for {len(self.objects)} objects")
        return replace(self, objects=self.objects[:index] + self.objects[index + 1:])

    def with_object(self, obj: SceneObject, index: Optional[int] = None) -> "Scene":
        """The scene with `obj` inserted at `index` (default: on top)."""
        objs = list(self.objects)
        objs.insert(len(objs) if index is None else index, obj)
        return replace(self, objects=tuple(objs))


def random_background(rng: random.Random, kind: Optional[str] = None) -> Background:
    """A background of `kind` (random if None) drawn from `rng`."""
    kind = kind or rng.choice(BACKGROUND_KINDS)
    names = list(BACKGROUND_RGB)
    color = rng.choice(names)
    if kind == "plain":
        return Background("plain", color)
    if kind == "gradient":
        color2 = rng.choice([n for n in names if n != color])
        return Background("gradient", color, color2, angle=float(rng.randrange(0, 360, 15)))
    return Background("texture", color, texture=rng.choice(TEXTURES), seed=rng.randrange(2**31))


def boxes_clear(a: tuple[float, float, float, float], b: tuple[float, float, float, float],
                gap: float) -> bool:
    """True when normalised boxes a and b are at least `gap` apart on some axis."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def place(rng: random.Random, shape: str, color: str, size: float,
          others: Sequence[SceneObject], aspect: float = 1.0, allow_overlap: bool = False,
          region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
          tries: int = 200, margin: float = 0.02) -> Optional[SceneObject]:
    """An object at a random position inside `region` (normalised x1, y1, x2, y2) that stays in
    the image and keeps `MIN_GAP` from `others` unless overlap is allowed; None if no room."""
    probe = SceneObject(shape, color, 0.5, 0.5, size).norm_box(aspect)
    hw, hh = (probe[2] - probe[0]) / 2, (probe[3] - probe[1]) / 2
    lo_x, hi_x = max(region[0], 0) + hw + margin, min(region[2], 1) - hw - margin
    lo_y, hi_y = max(region[1], 0) + hh + margin, min(region[3], 1) - hh - margin
    if lo_x > hi_x or lo_y > hi_y:
        return None
    boxes = [o.norm_box(aspect) for o in others]
    for _ in range(tries):
        obj = SceneObject(shape, color, rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y), size)
        nb = obj.norm_box(aspect)
        if allow_overlap or all(boxes_clear(nb, b, MIN_GAP) for b in boxes):
            return obj
    return None


def random_scene(seed: int, n_objects: Optional[int] = None, min_objects: int = 1,
                 max_objects: int = 6, shapes: Sequence[str] = SHAPES,
                 colors: Sequence[str] = COLORS, size_range: tuple[float, float] = (0.12, 0.3),
                 allow_overlap: bool = False, background: Optional[str] = None,
                 aspect: float = 1.0) -> Scene:
    """A random scene, the same for the same arguments. Objects that find no room at their
    drawn size are shrunk (down to the smallest size) before giving up on them."""
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects ({min_objects}) <= max_objects ({max_objects})")
    if not 0 < size_range[0] <= size_range[1] <= 1:
        raise ValueError(f"size_range {size_range!r} must satisfy 0 < lo <= hi <= 1")
    if background is not None and background not in BACKGROUND_KINDS:
        raise ValueError(f"background {background!r}: expected one of {', '.join(BACKGROUND_KINDS)}")
    for s in shapes:
        check_shape(s)
    rng = random.Random(seed)
    n = n_objects if n_objects is not None else rng.randint(min_objects, max_objects)
    objs: list[SceneObject] = []
    for _ in range(n):
        shape, color = rng.choice(list(shapes)), rng.choice(list(colors))
        size = rng.uniform(*size_range)
        obj = None
        while obj is None:
            obj = place(rng, shape, color, size, objs, aspect, allow_overlap)
            if obj is None:
                if size <= size_range[0]:
                    break
                size = max(size_range[0], size * 0.8)
        if obj is not None:
            objs.append(obj)
    return Scene(tuple(objs), random_background(rng, background))


def region_name(obj: SceneObject) -> str:
    """Which ninth of the image holds the object's centre: 'top left' ... 'centre' ..."""
    col = "left" if obj.cx < 1 / 3 else "right" if obj.cx > 2 / 3 else ""
    row = "top" if obj.cy < 1 / 3 else "bottom" if obj.cy > 2 / 3 else ""
    return " ".join(p for p in (row, col) if p) or "centre"

