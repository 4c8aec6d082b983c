"""Small recipes for build tests: a few scenes at 64 px, tiny models, several shards."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def small_recipe(**over: Any) -> dict[str, Any]:
    r = {
        "name": "small",
        "seed": 3,
        "sources": [{"kind": "scenes", "name": "scenes", "count": 10, "size": 64, "max_objects": 3}],
        "edits": {"add": 6, "remove": 6, "style": 6},
        "models": {"editor": "scenes", "detector": "scenes-pixel", "clip": "tiny", "dino": "tiny"},
        "scoring": {"metrics": ["clip_t", "clip_i", "clip_dir", "dino", "l1", "l1_masked"]},
        "shard_size": 3,
        "outputs": {"generation": True, "understanding": True, "understanding_per_source": 2},
        "languages": ["en", "zh"],
        "splits": {"train": 0.7, "test": 0.3},
    }
    r.update(over)
    return r


def write_recipe(folder: Path, recipe: dict[str, Any], name: str = "recipe.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return p
