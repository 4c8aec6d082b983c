"""GenEval's official verdict rules, as pure functions over detections (no model, no image).

Keeping detections: score strictly above `threshold` (`counting_threshold` for counting prompts),
at most `max_objects` per class by score, then greedy per-class NMS at `nms_threshold` (1.0 = off).
An `include` clause takes the top `count` kept objects of its class (fail if fewer), checks their
colour (fail if fewer than `count` have it) and their position against every object of the
referenced include group; an `exclude` clause fails if its class has `count` or more kept objects.
Includes combine with AND, excludes with OR. Facts from NEXUS_GEN.md and the official scorer.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from nexus_gen.detection import (POSITION_THRESHOLD, RELATIONS, Detection, Detections,
                                 relative_position)

COLORS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
)
TAGS: tuple[str, ...] = (
    "single_object", "two_object", "counting", "colors", "position", "color_attr",
)

# (class name, that class's objects lacking a colour) -> one colour name per object, in order.
ColorFn = Callable[[str, list[Detection]], list[str]]

# The official `--options` key for NMS is `max_overlap`; we accept it as an alias.
_ALIASES = {"max_overlap": "nms_threshold"}
PAPER_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
# The names of the official detector, which also run it at the official test scale (a hub id
# given as is runs at its processor's own scale: not the official protocol).
PAPER_NAMES = ("paper", "default")


@dataclass(frozen=True)
class ScoringOptions:
    """The official scorer's options with their official defaults."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    nms_threshold: float = 1.0
    position_threshold: float = POSITION_THRESHOLD

    def __post_init__(self) -> None:
        for name in ("threshold", "counting_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ValueError(f"GenEval option {name}={v!r}: must be a number in [0, 1]")
        if isinstance(self.max_objects, bool) or not isinstance(self.max_objects, int) \
                or self.max_objects < 1:
            raise ValueError(f"GenEval option max_objects={self.max_objects!r}: must be an int >= 1")
        if not (isinstance(self.nms_threshold, (int, float)) and 0.0 < self.nms_threshold <= 1.0):
            raise ValueError(f"GenEval option nms_threshold={self.nms_threshold!r}: must be in (0, 1] "
                             "(1.0 turns NMS off, the official default)")
        if not (isinstance(self.position_threshold, (int, float)) and self.position_threshold >= 0):
            raise ValueError(f"GenEval option position_threshold={self.position_threshold!r}: "
                             "must be a number >= 0")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ScoringOptions":
        """Options from a dict whose values may be strings (the official `--options k=v` form);
        an unknown key is an error, `max_overlap` is accepted for `nms_threshold`."""
        known = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            name = _ALIASES.get(key, key)
            if name not in known:
                raise ValueError(f"unknown GenEval option {key!r}; known: {sorted(known)}")
            try:
                kwargs[name] = int(raw) if name == "max_objects" else float(raw)
            except (TypeError, ValueError) as e:
                raise ValueError(f"GenEval option {key}={raw!r}: not a number") from e
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """One image's result: the official `correct`, `reason` (newline-joined) and `details`."""

    correct: bool
    reason: str
    details: dict[str, list[list[float]]]


def validate_metadata(metadata: Mapping[str, Any]) -> None:
    """Raise ValueError naming the problem if a prompt line is not a valid GenEval record."""
    if not isinstance(metadata, Mapping):
        raise ValueError(f"GenEval prompt record must be a JSON object, got {type(metadata).__name__}")
    for key in ("tag", "prompt"):
        if not isinstance(metadata.get(key), str):
            raise ValueError(f"GenEval prompt record has no string {key!r}: {dict(metadata)}")
    for kind in ("include", "exclude"):
        clauses = metadata.get(kind, [])
        if not isinstance(clauses, list):
            raise ValueError(f"GenEval prompt {metadata['prompt']!r}: {kind!r} must be a list")
        for i, req in enumerate(clauses):
            where = f"GenEval prompt {metadata['prompt']!r}, {kind}[{i}]"
            if not isinstance(req, Mapping) or not isinstance(req.get("class"), str):
                raise ValueError(f"{where}: needs a string 'class'")
            count = req.get("count")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{where}: 'count' must be an int >= 1, got {count!r}")
            if kind == "exclude":
                continue
            if "color" in req and req["color"] not in COLORS:
                raise ValueError(f"{where}: colour {req['color']!r} is not one of {COLORS}")
            if "position" in req:
                pos = req["position"]
                if not (isinstance(pos, (list, tuple)) and len(pos) == 2 and pos[0] in RELATIONS
                        and isinstance(pos[1], int) and 0 <= pos[1] < i):
                    raise ValueError(f"{where}: 'position' must be [relation, earlier include index] "
                                     f"with relation in {RELATIONS}, got {pos!r}")


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two `[x1, y1, x2, y2]` boxes with the official inclusive-pixel (+1) areas."""
    def area(x1: float, y1: float, x2: float, y2: float) -> float:
        return max(x2 - x1 + 1, 0) * max(y2 - y1 + 1, 0)

    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a[:4]) + area(*b[:4]) - inter
    return inter / union if union else 0.0


def keep_detections(detections: Union[Detections, Iterable[Detection]], tag: str,
                    options: ScoringOptions = ScoringOptions()) -> Detections:
    """The kept objects per class, highest score first: threshold (strict), `max_objects`, NMS.
    Classes left with no object are absent from the result."""
    if isinstance(detections, Mapping):
        by_label: dict[str, list[Detection]] = {k: list(v) for k, v in detections.items()}
    else:
        by_label = {}
        for d in detections:
            by_label.setdefault(d.label, []).append(d)
    floor = options.counting_threshold if tag == "counting" else options.threshold
    kept: Detections = {}
    for label, dets in by_label.items():
        ranked = sorted((d for d in dets if d.score > floor), key=lambda d: -d.score)
        ranked = ranked[: options.max_objects]
        chosen: list[Detection] = []
        while ranked:
            best = ranked.pop(0)
            chosen.append(best)
            if options.nms_threshold < 1.0:
                ranked = [d for d in ranked if box_iou(best.box, d.box) < options.nms_threshold]
        if chosen:
            kept[label] = chosen
    return kept


def _colors_of(classname: str, objects: list[Detection], color_fn: Optional[ColorFn]) -> list[str]:
    """Each object's colour: its precomputed `color` if set, else the classifier's answer."""
    missing = [d for d in objects if d.color is None]
    found: list[str] = []
    if missing:
        if color_fn is None:
            raise ValueError(f"a colour clause on {classname!r} needs a colour classifier: "
                             f"{len(missing)} detection(s) have no 'color'")
        found = list(color_fn(classname, missing))
        if len(found) != len(missing):
            raise ValueError(f"colour classifier returned {len(found)} colours "
                             f"for {len(missing)} {classname!r} objects")
    it = iter(found)
    return [d.color if d.color is not None else next(it) for d in objects]


def evaluate(metadata: Mapping[str, Any], kept: Detections, color_fn: Optional[ColorFn] = None,
             options: ScoringOptions = ScoringOptions()) -> tuple[bool, str]:
    """Judge kept objects (output of `keep_detections`) against a prompt: (correct, reason)."""
    correct = True
    reasons: list[str] = []
    groups: list[Optional[list[Detection]]] = []
    for req in metadata.get("include", []):
        cls, count = req["class"], req["count"]
        found = kept.get(cls, [])[:count]
        matched = True
        if len(found) < count:
            matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                want = req["color"]
                colors = _colors_of(cls, found, color_fn)
                if colors.count(want) < count:
                    matched = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reasons.append(f"expected {want} {cls}>={count}, found "
                                   f"{colors.count(want)} {want}; and {seen}")
            if "position" in req and matched:
                rel, group = req["position"]
                targets = groups[group]
                if targets is None:
                    matched = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    matched = _check_position(cls, rel, found, targets, options, reasons)
        correct = correct and matched
        groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        cls, count = req["class"], req["count"]
        n = len(kept.get(cls, []))
        if n >= count:
            correct = False
            reasons.append(f"expected {cls}<{count}, found {n}")
    return correct, "\n".join(reasons)


def _check_position(cls: str, rel: str, found: list[Detection], targets: list[Detection],
                    options: ScoringOptions, reasons: list[str]) -> bool:
    """Every found object must stand in `rel` to every target; stop at the first failure."""
    for obj in found:
        for target in targets:
            rels = relative_position(obj.box, target.box, options.position_threshold)
            if rel not in rels:
                reasons.append(f"expected {cls} {rel} target, found "
                               f"{' and '.join(r for r in RELATIONS if r in rels)} target")
                return False
    return True


def details_of(kept: Detections) -> dict[str, list[list[float]]]:
    """The official `details`: per kept class, `[x1, y1, x2, y2, score]` of each kept object."""
    return {cls: [[float(v) for v in d.box] + [float(d.score)] for d in dets]
            for cls, dets in kept.items()}


def judge(metadata: Mapping[str, Any], detections: Union[Detections, Iterable[Detection]],
          color_fn: Optional[ColorFn] = None,
          options: ScoringOptions = ScoringOptions()) -> Verdict:
    """One image: validate the prompt, keep detections, evaluate; the official verdict."""
    validate_metadata(metadata)
    kept = keep_detections(detections, metadata["tag"], options)
    correct, reason = evaluate(metadata, kept, color_fn, options)
    return Verdict(correct=correct, reason=reason, details=details_of(kept))


def result_row(filename: str, metadata: Mapping[str, Any], verdict: Verdict) -> dict[str, Any]:
    """An official results.jsonl row; `metadata` and `details` are JSON strings, as official."""
    return {
        "filename": filename,
        "tag": metadata["tag"],
        "prompt": metadata["prompt"],
        "correct": bool(verdict.correct),
        "reason": verdict.reason,
        "metadata": json.dumps(dict(metadata)),
        "details": json.dumps(verdict.details),
    }
