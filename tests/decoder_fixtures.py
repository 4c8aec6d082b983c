"""Scenes data for the decoder tests: unified generation/editing samples rendered at 64 px and an
embedding store written from a fixed random projection of the images (no AR model needed)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nexus_gen.scenes.edits import random_edit
from nexus_gen.train.embedding_store import write_embedding_shard

D = 64
N_TARGET, N_SOURCE = 16, 64


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def pooled_embedding(img: Image.Image, tokens: int, proj: torch.Tensor) -> torch.Tensor:
    """[tokens, D]: the image's mean colour per cell of a sqrt(tokens)^2 grid, projected to D."""
    side = int(round(tokens ** 0.5))
    small = img.convert("RGB").resize((side, side), Image.BOX)
    cells = torch.from_numpy(np.asarray(small, dtype=np.float32) / 127.5 - 1).reshape(tokens, 3)
    return torch.tanh(cells @ proj)


def scenes_samples(count: int, seed: int = 0, size: int = 64) -> list[dict[str, Any]]:
    """`count` generation and `count` editing samples in the unified sample format."""
    out = []
    for i in range(count):
        e = random_edit(seed + i, size=size)
        gen_msgs = [{"role": "user", "content": "Generate an image according to the following "
                     f"description: {e.target_caption}"},
                    {"role": "assistant", "content": "Here is an image based on the description: <image>"}]
        edit_msgs = [{"role": "user", "content": f"<image> {e.instruction}"},
                     {"role": "assistant", "content": "Here is the image: <image>"}]
        out.append({"id": f"gen-{i}", "source": "scenes", "task": "generation", "language": "en",
                    "messages": gen_msgs, "meta": {},
                    "images": [{"bytes": png(e.target), "path": f"gen-{i}.png"}]})
        out.append({"id": f"edit-{i}", "source": "scenes", "task": "editing", "language": "en",
                    "messages": edit_msgs, "meta": {},
                    "images": [{"bytes": png(e.source), "path": f"src-{i}.png"},
                               {"bytes": png(e.target), "path": f"tgt-{i}.png"}]})
    return out


def write_store(folder: Path, samples: list[dict[str, Any]], dim: int = D,
                n_target: int = N_TARGET, n_source: int = N_SOURCE, seed: int = 0) -> Path:
    """target embeddings for generation samples, predicted + source for editing samples."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(3, dim, generator=g)
    items: dict[str, dict[str, torch.Tensor]] = {}
    for s in samples:
        imgs = [Image.open(io.BytesIO(r["bytes"])) for r in s["images"]]
        if s["task"] == "generation":
            items[s["id"]] = {"target": pooled_embedding(imgs[-1], n_target, proj)}
        else:
            items[s["id"]] = {"predicted": pooled_embedding(imgs[-1], n_target, proj),
                              "source": pooled_embedding(imgs[0], n_source, proj)}
    write_embedding_shard(Path(folder) / "emb-00000.safetensors", items)
    return Path(folder)


def write_shards(folder: Path, samples: list[dict[str, Any]]) -> Path:
    """The samples as unified shards (train-NNNNN.parquet) in `folder`."""
    from nexus_gen.data.shards import ShardWriter

    with ShardWriter(folder, shard_bytes=20000, row_group_bytes=6000) as w:
        for s in samples:
            w.write(s)
    return Path(folder)
