"""Understanding QA over scenes with exact answers: counting, colour, presence (POPE-style,
with random / popular / adversarial negatives) and relative position (GenEval's rule), each as
multiple choice (answer = option letter) and yes/no (answer = 'yes' / 'no')."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from nexus_gen.detection import RELATIONS, relative_position
from nexus_gen.scenes.palette import COLORS
from nexus_gen.scenes.render import Size, render
from nexus_gen.scenes.scene import Scene
from nexus_gen.scenes.shapes import PLURALS, SHAPES
from nexus_gen.scenes.text import article

POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
LETTERS = "ABCD"
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
YESNO_SUFFIX = "Please answer yes or no."
PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "above",
          "below": "below"}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@dataclass
class QAItem:
    """One question with its exact answer. `question` is the full prompt text (options and
    answer-format suffix included); `answer_text` is the answer in words."""

    kind: str  # counting | color | presence | position
    format: str  # mc | yesno
    question: str
    answer: str  # option letter (mc) or yes / no
    answer_text: str
    choices: Optional[list[str]] = None
    meta: dict[str, Any] = field(default_factory=dict)


def _mc(kind: str, stem: str, right: str, wrong: Sequence[str], rng: random.Random,
        **meta: Any) -> QAItem:
    """A 4-way (or fewer) multiple-choice item with the right option at a random letter."""
    options = [right] + rng.sample(list(wrong), min(3, len(wrong)))
    rng.shuffle(options)
    body = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return QAItem(kind, "mc", f"{stem}\n{body}\n{MC_SUFFIX}", LETTERS[options.index(right)],
                  right, options, meta)


def _yn(kind: str, stem: str, yes: bool, **meta: Any) -> QAItem:
    return QAItem(kind, "yesno", f"{stem} {YESNO_SUFFIX}", "yes" if yes else "no",
                  "yes" if yes else "no", None, meta)


def _name(color: Optional[str], shape: str, n: int = 1) -> str:
    noun = shape if n == 1 else PLURALS[shape]
    return f"{color} {noun}" if color else noun


def counting_questions(scene: Scene, rng: random.Random) -> list[QAItem]:
    """'How many red circles are there?' per colour-shape kind and per shape, MC and yes/no."""
    out = []
    kinds = Counter((o.color, o.shape) for o in scene.objects)
    shapes = Counter(o.shape for o in scene.objects)
    asks = [((c, s), n) for (c, s), n in kinds.items()] + [((None, s), n) for s, n in shapes.items()]
    for (color, shape), n in asks:
        stem = f"How many {_name(color, shape, 2)} are there in the image?"
        wrong = [str(k) for k in range(0, 7) if k != n]
        out.append(_mc("counting", stem, str(n), wrong, rng, color=color, shape=shape))
        ask = n if rng.random() < 0.5 else rng.choice([k for k in range(1, 7) if k != n])
        stem = (f"Is there exactly one {_name(color, shape)} in the image?" if ask == 1 else
                f"Are there exactly {ask} {_name(color, shape, 2)} in the image?")
        out.append(_yn("counting", stem, ask == n, color=color, shape=shape, count=n, asked=ask))
    return out


def color_questions(scene: Scene, rng: random.Random) -> list[QAItem]:
    """'What colour is the star?' for every shape that occurs exactly once, MC and yes/no."""
    out = []
    shapes = Counter(o.shape for o in scene.objects)
    for o in scene.objects:
        if shapes[o.shape] != 1:
            continue
        out.append(_mc("color", f"What colour is the {o.shape}?", o.color,
                       [c for c in COLORS if c != o.color], rng, shape=o.shape))
        ask = o.color if rng.random() < 0.5 else rng.choice([c for c in COLORS if c != o.color])
        out.append(_yn("color", f"Is the {o.shape} {ask}?", ask == o.color, shape=o.shape,
                       color=o.color, asked=ask))
    return out


def _absent(scene: Scene) -> list[tuple[str, str]]:
    present = {(o.color, o.shape) for o in scene.objects}
    return [(c, s) for s in SHAPES for c in COLORS if (c, s) not in present]


def negatives(scene: Scene, split: str, k: int, rng: random.Random,
              popularity: Optional[Counter] = None) -> list[tuple[str, str]]:
    """`k` absent (colour, shape) objects: `random` uniformly, `popular` the most frequent ones
    in `popularity` (e.g. counts over a dataset), `adversarial` those sharing a present object's
    shape or colour (same shape first: the near misses a model is most likely to hallucinate)."""
    if split not in POPE_SPLITS:
        raise ValueError(f"unknown POPE split {split!r}: expected one of {', '.join(POPE_SPLITS)}")
    pool = _absent(scene)
    if split == "random":
        return rng.sample(pool, min(k, len(pool)))
    if split == "popular":
        pop = popularity or Counter()
        order = sorted(pool, key=lambda cs: (-pop.get(cs, 0), rng.random()))
        return order[:k]
    shapes = Counter(o.shape for o in scene.objects)
    colors = Counter(o.color for o in scene.objects)
    order = sorted(pool, key=lambda cs: (-(2 * shapes[cs[1]] + colors[cs[0]]), rng.random()))
    return order[:k]


def presence_questions(scene: Scene, rng: random.Random, split: str = "random",
                       popularity: Optional[Counter] = None, k: int = 3) -> list[QAItem]:
    """POPE-style 'Is there a red circle in the image?': up to `k` present objects (yes) and as
    many absent ones (no) from the given negative `split`; plus one MC 'which is present'."""
    present = sorted({(o.color, o.shape) for o in scene.objects})
    yes = rng.sample(present, min(k, len(present)))
    no = negatives(scene, split, len(yes), rng, popularity)
    out = [_yn("presence", f"Is there {article(c)} {c} {s} in the image?", True, split=split, object=[c, s])
           for c, s in yes]
    out += [_yn("presence", f"Is there {article(c)} {c} {s} in the image?", False, split=split, object=[c, s])
            for c, s in no]
    if present:
        c, s = rng.choice(present)
        wrong = [f"{a} {b}" for a, b in negatives(scene, split, 3, rng, popularity)]
        out.append(_mc("presence", "Which of these objects is in the image?", f"{c} {s}", wrong,
                       rng, split=split))
    return out


def position_questions(scene: Scene, boxes: Sequence[tuple[float, float, float, float]],
                       rng: random.Random, max_pairs: int = 3) -> list[QAItem]:
    """'Where is the red circle relative to the blue star?' for pairs of uniquely named objects
    standing in exactly one GenEval relation (on their visible boxes), MC and yes/no."""
    kinds = Counter((o.color, o.shape) for o in scene.objects)
    unique = [i for i, o in enumerate(scene.objects) if kinds[(o.color, o.shape)] == 1]
    pairs = [(a, b) for a in unique for b in unique if a != b]
    rng.shuffle(pairs)
    out = []
    for a, b in pairs:
        rels = relative_position(boxes[a], boxes[b])
        if len(rels) != 1:
            continue
        rel = rels.pop()
        oa, ob = scene.objects[a], scene.objects[b]
        na, nb = f"the {oa.color} {oa.shape}", f"the {ob.color} {ob.shape}"
        out.append(_mc("position", f"Where is {na} relative to {nb}?", rel,
                       [r for r in RELATIONS if r != rel], rng, a=a, b=b))
        ask = rel if rng.random() < 0.5 else OPPOSITE[rel]
        out.append(_yn("position", f"Is {na} {PHRASE[ask]} {nb}?", ask == rel, a=a, b=b, relation=rel,
                       asked=ask))
        if len(out) >= 2 * max_pairs:
            break
    return out


def scene_qa(scene: Scene, size: Size = 256, seed: int = 0, split: str = "random",
             popularity: Optional[Counter] = None) -> list[QAItem]:
    """Every kind of question about one scene, the same for the same seed."""
    rng = random.Random(seed)
    boxes = render(scene, size).boxes
    return (counting_questions(scene, rng) + color_questions(scene, rng)
            + presence_questions(scene, rng, split, popularity)
            + position_questions(scene, boxes, rng))


def popularity_of(scenes: Sequence[Scene]) -> Counter:
    """How many scenes contain each (colour, shape): POPE's 'popular' ranking over a dataset."""
    return Counter(cs for s in scenes for cs in {(o.color, o.shape) for o in s.objects})
