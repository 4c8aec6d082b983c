"""Planning: a recipe becomes deterministic work, grouped into shards (pure: no model, no image
decoded; photo files are read once to fingerprint them).

- Sources are fingerprinted (scene: its canonical description and size; photo and streamed
  dataset row: xxh3-128 of its bytes; generated image: of its prompt, seed, model id and
  settings) and exact duplicates are built once.
- Every source lands in exactly one split, so all its triplets (both directions, every edit)
  do too: no leakage between train and test.
- Work item id = f(recipe hash, source key, edit spec, seed); a shard holds the items of up to
  `shard_size` sources of one split and is the unit of work and of resume."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import xxhash

from nexus_gen.edit.backends import BACKENDS
from nexus_gen.edit.backends.base import EditSpec, SourceRef
from nexus_gen.edit.recipe import (DECODER_SUFFIXES, IMAGE_SUFFIXES, Recipe, recipe_hash, relative_to,
                                  resolve_paths, source_label)
from nexus_gen.edit.sources import dataset_sources, generated_sources
from nexus_gen.scenes.scene import random_scene


@dataclass(frozen=True)
class WorkItem:
    id: str
    source: SourceRef
    spec: EditSpec
    seed: int


@dataclass(frozen=True)
class DatasetPart:
    """Existing data read through a converter: the samples of one split of one dataset source."""

    source: str
    format: str
    inputs: tuple[str, ...]
    images_root: Optional[str]
    language: Optional[str]
    emit_rejects: bool  # the plan of a dataset's first split records its rejects (once)


@dataclass(frozen=True)
class ShardPlan:
    shard_id: str  # "<split>-NNNNN": also the shard files' names
    split: str
    sources: tuple[SourceRef, ...] = ()
    items: tuple[WorkItem, ...] = ()
    dataset: Optional[DatasetPart] = None


@dataclass(frozen=True)
class Plan:
    recipe_hash: str
    shards: tuple[ShardPlan, ...]
    splits: dict[str, str] = field(default_factory=dict)  # source key -> split (built sources)
    duplicates: int = 0  # sources dropped as exact duplicates of an earlier one

    @property
    def planned(self) -> int:
        return sum(len(s.items) for s in self.shards)


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any parts (stable across processes and Python versions)."""
    return xxhash.xxh3_64_intdigest(json.dumps(parts, sort_keys=True, default=str).encode()) & 0x7FFFFFFF


def item_id(rhash: str, source_key: str, spec: EditSpec, seed: int) -> str:
    return xxhash.xxh3_128_hexdigest(json.dumps([rhash, source_key, spec.to_json(), seed],
                                                sort_keys=True).encode())[:20]


def _scene_sources(recipe: Recipe, i: int, src) -> list[SourceRef]:
    name = source_label(src, i)
    out = []
    for k in range(src.count):
        scene = random_scene(derive_seed(recipe.seed, name, k), min_objects=src.min_objects,
                             max_objects=src.max_objects).to_dict()
        key = xxhash.xxh3_128_hexdigest(json.dumps({"scene": scene, "size": src.size},
                                                   sort_keys=True).encode())
        out.append(SourceRef("scene", key, name, src.size, scene=scene))
    return out


def _image_sources(recipe: Recipe, i: int, src, base: Path) -> list[SourceRef]:
    name = source_label(src, i)
    out = []
    for p in resolve_paths(src.paths, base, DECODER_SUFFIXES if src.recursive else IMAGE_SUFFIXES,
                           recursive=src.recursive):
        caption = src.captions.get(p.name)
        try:
            key = xxhash.xxh3_128_hexdigest(p.read_bytes())
            error = None
        except OSError as exc:  # missing or unreadable: every edit of it becomes a reject
            key = "unreadable-" + xxhash.xxh3_128_hexdigest(str(p).encode())
            error = f"source image {p}: {exc.strerror or exc}"
        out.append(SourceRef("image", key, name, src.size, path=str(p), caption=caption, error=error,
                             aspect=src.aspect))
    return out


def assign_splits(keys: list[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Exact allocation: keys ordered by a seeded hash, the first round(f * n) to each split
    (every split with a fraction > 0 gets at least one key when there are enough keys)."""
    order = sorted(keys, key=lambda k: (derive_seed(seed, "split", k), k))
    n = len(order)
    names = list(fractions)
    counts = [math.floor(fractions[s] * n + 0.5) for s in names]
    if n >= len(names):
        for j in range(len(names)):
            while counts[j] == 0:
                big = max(range(len(names)), key=lambda i: counts[i])
                counts[big] -= 1
                counts[j] += 1
    counts[0] += n - sum(counts)  # rounding remainder goes to the first split
    out: dict[str, str] = {}
    pos = 0
    for s, c in zip(names, counts):
        for k in order[pos:pos + c]:
            out[k] = s
        pos += c
    return out


def make_plan(recipe: Recipe, base: Path) -> Plan:
    """The whole run's work (see module doc). `base` resolves relative paths of the recipe."""
    rhash = recipe_hash(recipe)
    backend = BACKENDS[recipe.models.editor].from_recipe(recipe, base, verify=False)
    pool: list[SourceRef] = []
    seen: set[str] = set()
    dups = 0
    for i, src in enumerate(recipe.sources):
        refs = (_scene_sources(recipe, i, src) if src.kind == "scenes"
                else _image_sources(recipe, i, src, base) if src.kind == "images"
                else dataset_sources(src, source_label(src, i), base) if src.kind == "hf_dataset"
                else generated_sources(recipe, src, source_label(src, i), base) if src.kind == "text2image"
                else [])
        for r in refs:
            if r.key in seen:
                dups += 1
                continue
            seen.add(r.key)
            pool.append(r)
    split_of = assign_splits([r.key for r in pool], recipe.splits, recipe.seed)
    items: dict[str, list[WorkItem]] = {r.key: [] for r in pool}
    for etype, count in recipe.edits.counts().items():
        eligible = [r for r in pool if backend.supports(r.kind, etype)
                    and (etype != "style" or backend.styles_for(r.kind))]
        if not eligible:
            continue
        order = sorted(range(len(eligible)), key=lambda j: derive_seed(recipe.seed, etype, "order", j))
        uses: dict[str, int] = {}
        for k in range(count):
            src = eligible[order[k % len(eligible)]]
            seed = derive_seed(recipe.seed, etype, k)
            style = None
            if etype == "style":
                styles = backend.styles_for(src.kind)
                j = uses.get(src.key, 0)
                uses[src.key] = j + 1
                style = styles[(derive_seed(recipe.seed, "style", src.key) + j) % len(styles)]
            spec = EditSpec(etype, style)
            items[src.key].append(WorkItem(item_id(rhash, src.key, spec, seed), src, spec, seed))
    shards: list[ShardPlan] = []
    for split in recipe.splits:
        mine = [r for r in pool if split_of[r.key] == split]
        idx = 0
        for j in range(0, len(mine), recipe.shard_size):
            group = tuple(mine[j:j + recipe.shard_size])
            work = tuple(w for r in group for w in items[r.key])
            shards.append(ShardPlan(f"{split}-{idx:05d}", split, group, work))
            idx += 1
        for i, src in enumerate(recipe.sources):
            if src.kind != "dataset":
                continue
            from nexus_gen.data.convert import default_images_root
            from nexus_gen.data.records import expand_inputs

            named = relative_to(base, src.inputs)
            inputs = tuple(str(p) for p in expand_inputs(named))
            root = str((base / src.images_root).resolve() if src.images_root else default_images_root(named))
            part = DatasetPart(source_label(src, i), src.format, inputs, root, src.language,
                               emit_rejects=split == next(iter(recipe.splits)))
            shards.append(ShardPlan(f"{split}-{idx:05d}", split, dataset=part))
            idx += 1
    return Plan(rhash, tuple(shards), split_of, dups)


def assign_split_by_hash(key: str, fractions: dict[str, float], seed: int) -> str:
    """The split of a key met while streaming (existing datasets): its seeded hash placed on the
    cumulative fractions. Stable for a key, so both directions of a pair share a split."""
    u = derive_seed(seed, "split", key) / 0x80000000
    acc = 0.0
    for name, f in fractions.items():
        acc += f
        if u < acc:
            return name
    return next(reversed(fractions))
