"""Unified shards and configs for the training-loop tests: editing samples whose target is the
source mirrored (learnable by the toy stage), mixed with generation and understanding samples."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from nexus_gen.data.shards import ShardWriter

torch.set_num_threads(1)  # the training tests share two cores with other work

TOY_STAGE = "toy=train_toy_stage:ToyStage"
TESTS = Path(__file__).resolve().parent


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def toy_sample(i: int, task: str, rng: np.random.Generator) -> dict[str, Any]:
    src = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = {"bytes": _png(src), "path": None}
    if task == "editing":
        images = [img, {"bytes": _png(src[:, ::-1].copy()), "path": None}]
        messages = [{"role": "user", "content": "<image> mirror it"},
                    {"role": "assistant", "content": "Here is the image: <image>"}]
    elif task == "generation":
        images = [img]
        messages = [{"role": "user", "content": "Generate an image according to the following description: noise"},
                    {"role": "assistant", "content": "Here is an image based on the description: <image>"}]
    else:
        images = [img]
        messages = [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "noise"}]
    return {"id": f"{task}-{i:04d}", "source": "toy", "task": task, "language": "en",
            "messages": messages, "images": images, "meta": {}}


def write_toy_shards(folder: Path, editing: int = 48, other: int = 12, seed: int = 0,
                     tasks: tuple[str, ...] = ("editing", "generation", "understanding"),
                     prefix: str = "train", row_group_bytes: int = 3000, shard_bytes: int = 12000) -> Path:
    """Shards of `editing` mirror samples and `other` samples of each other task, several row
    groups and shards; returns the folder."""
    rng = np.random.default_rng(seed)
    samples = []
    for task in tasks:
        n = editing if task == "editing" else other
        samples += [toy_sample(i, task, rng) for i in range(n)]
    order = np.random.default_rng(seed + 1).permutation(len(samples))
    with ShardWriter(folder, shard_bytes=shard_bytes, row_group_bytes=row_group_bytes, prefix=prefix) as w:
        for i in order:
            w.write(samples[i])
    return folder


def toy_config(shards: Any, **sections: Any) -> dict[str, Any]:
    """A toy-stage config; keyword sections (train=, checkpoint=, ...) update the defaults."""
    cfg: dict[str, Any] = {
        "stage": "toy", "model": {"hidden": 16}, "data": {"shards": str(shards), "shuffle_window": 2},
        "train": {"seed": 0, "max_steps": 12, "batch_size": 4, "grad_accum": 1, "lr": 3e-2,
                  "warmup_steps": 2, "max_grad_norm": 1.0},
        "checkpoint": {"every_steps": 4, "keep_last": 2}, "log": {"every_steps": 1}}
    for k, v in sections.items():
        cfg[k] = {**cfg[k], **v} if isinstance(cfg.get(k), dict) and isinstance(v, dict) else v
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def register_toy(monkeypatch: Any) -> None:
    """Register the toy stage for this test (and subprocesses: PYTHONPATH gets tests/)."""
    monkeypatch.setenv("NEXUS_GEN_TRAIN_STAGES", TOY_STAGE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(TESTS.parent),
                                                      os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(autouse=True)
def toy_stage(monkeypatch: Any) -> None:
    """Autouse in the modules that import it: the toy stage is registered for each test."""
    register_toy(monkeypatch)
