"""Shared inputs of the AR and pre-compute tests: a small scenes build (editing, generation and
understanding samples at 64 px), built once per process, and the tiny AR model."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from build_fixtures import small_recipe, write_recipe


@functools.lru_cache(maxsize=None)
def scenes_run() -> Path:
    """A build run folder: 8 scenes, 4 edits of each type, both languages, all in `train`."""
    from nexus_gen.edit.build import build

    d = Path(tempfile.mkdtemp(prefix="ar-scenes-"))
    recipe = small_recipe(sources=[{"kind": "scenes", "name": "scenes", "count": 8, "size": 64,
                                    "max_objects": 3}],
                          edits={"add": 4, "remove": 4, "style": 4}, splits={"train": 1.0}, shard_size=16)
    build(write_recipe(d, recipe), d / "run")
    return d / "run"


@functools.lru_cache(maxsize=None)
def tiny_ar():
    """The tiny NexusGenAR (eval mode; callers must not change its weights)."""
    import torch

    from nexus_gen.models.nexus_ar import NexusGenAR
    from nexus_gen.models.tiny.ar_tiny import tiny_ar_dir

    torch.set_num_threads(1)
    return NexusGenAR.from_pretrained(tiny_ar_dir()).eval()
