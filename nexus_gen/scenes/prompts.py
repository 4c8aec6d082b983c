"""GenEval-style prompt set over the scenes world's shape classes, and a renderer that draws a
correct image for any such prompt (so a GenEval scorer can be checked against ground truth).

Rows follow GenEval's `evaluation_metadata.jsonl` schema exactly: `tag`, `include` clauses
(`class`, `count`, optional `color`, optional `position: [relation, include_group]`), optional
`exclude` clauses (`class`, `count`), `prompt`; the same six tags and phrasings."""
from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any, Optional, Union

from PIL import Image

from nexus_gen.detection import RELATIONS, relative_position
from nexus_gen.scenes.palette import COLORS
from nexus_gen.scenes.render import RenderResult, render
from nexus_gen.scenes.scene import Scene, SceneObject, place, random_background
from nexus_gen.scenes.shapes import PLURALS, SHAPES
from nexus_gen.scenes.text import EN_NUMBERS, article

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position",
                         "color_attr")
COUNTS: tuple[int, ...] = (2, 3, 4)
N_POSITION, N_COLOR_ATTR = 120, 120
SHIPPED = Path(__file__).resolve().parents[2] / "datasets_spec" / "geneval_scenes" / \
    "evaluation_metadata.jsonl"


def _a(cls: str, color: Optional[str] = None) -> str:
    words = f"{color} {cls}" if color else cls
    return f"{article(words)} {words}"


def generate_prompts(seed: int = 0) -> list[dict[str, Any]]:
    """The prompt set (408 rows), the same for the same seed: every single shape, ordered shape
    pair, count (2-4) and shape-colour pair, plus 120 sampled position and colour-attribute
    prompts. Rows are grouped by tag in GenEval's order and shuffled within a tag."""
    rng = random.Random(seed)
    pairs = list(itertools.permutations(SHAPES, 2))
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in TAGS}
    for s in SHAPES:
        rows["single_object"].append({"tag": "single_object", "include": [{"class": s, "count": 1}],
                                      "prompt": f"a photo of {_a(s)}"})
    for a, b in pairs:
        rows["two_object"].append({
            "tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {_a(a)} and {_a(b)}"})
    for s, n in itertools.product(SHAPES, COUNTS):
        rows["counting"].append({
            "tag": "counting", "include": [{"class": s, "count": n}],
            "exclude": [{"class": s, "count": n + 1}],
            "prompt": f"a photo of {EN_NUMBERS[n]} {PLURALS[s]}"})
    for s, c in itertools.product(SHAPES, COLORS):
        rows["colors"].append({"tag": "colors", "include": [{"class": s, "count": 1, "color": c}],
                               "prompt": f"a photo of {_a(s, c)}"})
    for (a, b), rel in rng.sample(list(itertools.product(pairs, RELATIONS)), N_POSITION):
        rows["position"].append({
            "tag": "position",
            "include": [{"class": a, "count": 1},
                        {"class": b, "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of {_a(b)} {rel} {_a(a)}"})
    color_pairs = list(itertools.permutations(COLORS, 2))
    for (a, b), (ca, cb) in rng.sample(list(itertools.product(pairs, color_pairs)), N_COLOR_ATTR):
        rows["color_attr"].append({
            "tag": "color_attr",
            "include": [{"class": a, "count": 1, "color": ca},
                        {"class": b, "count": 1, "color": cb}],
            "prompt": f"a photo of {_a(a, ca)} and {_a(b, cb)}"})
    out: list[dict[str, Any]] = []
    for t in TAGS:
        rng.shuffle(rows[t])
        out.extend(rows[t])
    return out


def to_jsonl(rows: list[dict[str, Any]]) -> str:
    """GenEval's file form: one `json.dumps` object per line."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_prompts(path: Union[str, Path] = SHIPPED, seed: int = 0) -> Path:
    """Write the generated prompt set to `path` (default: the shipped file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_jsonl(generate_prompts(seed)), encoding="utf-8")
    return path


def _check(metadata: dict[str, Any]) -> None:
    """Raise ValueError naming the problem when `metadata` is not a valid scenes prompt."""
    def bad(msg: str) -> ValueError:
        return ValueError(f"prompt metadata {metadata.get('prompt', metadata)!r}: {msg}")

    if not isinstance(metadata, dict) or not isinstance(metadata.get("include"), list) \
            or not metadata["include"]:
        raise ValueError(f"prompt metadata {metadata!r}: needs a non-empty 'include' list")
    if metadata.get("tag") not in TAGS:
        raise bad(f"tag {metadata.get('tag')!r} is not one of {', '.join(TAGS)}")
    for i, c in enumerate(metadata["include"]):
        if c.get("class") not in SHAPES:
            raise bad(f"include[{i}] class {c.get('class')!r} is not a scenes shape ({', '.join(SHAPES)})")
        if not isinstance(c.get("count"), int) or not 1 <= c["count"] <= 8:
            raise bad(f"include[{i}] count {c.get('count')!r} must be an int in 1..8")
        if "color" in c and c["color"] not in COLORS:
            raise bad(f"include[{i}] color {c['color']!r} is not one of GenEval's colours")
        if "position" in c:
            pos = c["position"]
            if not (isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS
                    and isinstance(pos[1], int) and 0 <= pos[1] < i):
                raise bad(f"include[{i}] position {pos!r} must be [relation, earlier group index]")
    wanted: dict[str, int] = {}
    for c in metadata["include"]:
        wanted[c["class"]] = wanted.get(c["class"], 0) + c["count"]
    for c in metadata.get("exclude", []):
        if c.get("class") not in SHAPES:
            raise bad(f"exclude class {c.get('class')!r} is not a scenes shape")
        if wanted.get(c["class"], 0) >= c.get("count", 0):
            raise bad(f"exclude {c} contradicts the include clauses")


def _regions(rel: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(region of the positioned group, region of the reference group) for a relation."""
    left, right = (0.0, 0.15, 0.45, 0.85), (0.55, 0.15, 1.0, 0.85)
    top, bottom = (0.15, 0.0, 0.85, 0.45), (0.15, 0.55, 0.85, 1.0)
    return {"left of": (left, right), "right of": (right, left),
            "above": (top, bottom), "below": (bottom, top)}[rel]


def _satisfied(metadata: dict[str, Any], res: RenderResult, groups: list[list[int]]) -> bool:
    """True when every position clause holds on the rendered ground-truth boxes."""
    for i, c in enumerate(metadata["include"]):
        if "position" not in c:
            continue
        rel, j = c["position"]
        for a in groups[i]:
            for b in groups[j]:
                if rel not in relative_position(res.objects[a].box, res.objects[b].box):
                    return False
    return all(not o.occluded for o in res.objects)


def render_prompt_result(metadata: dict[str, Any], seed: int, size: int = 512,
                         tries: int = 50) -> RenderResult:
    """Ground-truth render for a prompt: exactly the included objects (counts, colours; others'
    colours random), position clauses satisfied under GenEval's rule, nothing excluded."""
    _check(metadata)
    rng = random.Random(f"{seed}:{json.dumps(metadata, sort_keys=True)}")
    n_total = sum(c["count"] for c in metadata["include"])
    hi = 0.28 if n_total <= 2 else 0.2
    for _ in range(tries):
        placed: list[SceneObject] = []
        groups: list[list[int]] = []
        region_of: dict[int, tuple[float, ...]] = {}
        for i, c in enumerate(metadata["include"]):
            if "position" in c:
                rel, j = c["position"]
                region_of[i], region_of[j] = _regions(rel)
        ok = True
        for i, c in enumerate(metadata["include"]):
            groups.append([])
            for _ in range(c["count"]):
                obj = place(rng, c["class"], c.get("color") or rng.choice(COLORS),
                            rng.uniform(0.12, hi), placed, region=region_of.get(i, (0, 0, 1, 1)))
                if obj is None:
                    ok = False
                    break
                groups[i].append(len(placed))
                placed.append(obj)
        if not ok:
            continue
        res = render(Scene(tuple(placed), random_background(rng)), size)
        if _satisfied(metadata, res, groups):
            return res
    raise ValueError(f"could not lay out prompt {metadata.get('prompt')!r} in {tries} tries")


def render_prompt(metadata: dict[str, Any], seed: int, size: int = 512) -> Image.Image:
    """A correct image (PIL RGB, `size` x `size`) for a GenEval-schema prompt over scene shapes."""
    return render_prompt_result(metadata, seed, size).image
