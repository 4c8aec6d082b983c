"""A toy training stage for the loop's tests: an MLP maps the first image of an editing sample
(8x8 grey) to its edited image (the source mirrored left-right), so the loss falls fast on CPU.
Data options exercise the loop: `reject_every` (skip samples by id hash, with a reason) and
`nan_ids` (a batch holding one of these ids has a NaN loss)."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from nexus_gen.train.stage_api import TrainStage

MODEL_KEYS = {"size": 8, "hidden": 16}
DATA_KEYS = {"reject_every": 0, "nan_ids": []}


def _check(section: str, given: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    for k in given:
        if k not in allowed:
            raise ValueError(f"{section}.{k}: unknown key; allowed: {', '.join(allowed)}")
    return {**allowed, **given}


class ToyNet(torch.nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.fc2 = torch.nn.Linear(hidden, dim)
        self.checkpointing = False

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Any = None) -> None:
        self.checkpointing = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class ToyStage(TrainStage):
    name = "toy"
    tasks = ("editing",)
    lora_targets = ("fc1", "fc2")
    shard_units = ("Linear",)  # FSDP: fc1 and fc2 each a unit

    def __init__(self, model_cfg: dict[str, Any], data_cfg: dict[str, Any]) -> None:
        super().__init__(model_cfg, data_cfg)
        self.m = _check("model", model_cfg, MODEL_KEYS)
        self.d = _check("data", data_cfg, DATA_KEYS)
        if int(self.m["size"]) <= 0:
            raise ValueError(f"model.size: must be positive, got {self.m['size']}")

    def build_model(self, device: torch.device) -> torch.nn.Module:
        return ToyNet(self.m["size"] ** 2, self.m["hidden"]).to(device)

    def _pixels(self, image: dict[str, Any]) -> torch.Tensor:
        with Image.open(io.BytesIO(image["bytes"])) as im:
            g = im.convert("L").resize((self.m["size"], self.m["size"]), Image.BILINEAR)
        return torch.from_numpy(np.asarray(g, dtype=np.float32).reshape(-1) / 255.0)

    def example(self, sample: dict[str, Any]) -> Union[dict[str, Any], str]:
        k = int(self.d["reject_every"])
        if k and int(hashlib.md5(sample["id"].encode()).hexdigest(), 16) % k == 0:
            return "toy: rejected by id hash"
        if len(sample["images"]) < 2:
            return "toy: fewer than 2 images"
        return {"id": sample["id"], "x": self._pixels(sample["images"][0]),
                "y": self._pixels(sample["images"][-1])}

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return {"ids": [e["id"] for e in examples], "x": torch.stack([e["x"] for e in examples]),
                "y": torch.stack([e["y"] for e in examples])}

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        pred = model(batch["x"].to(device))
        err = pred - batch["y"].to(device)
        mse = (err ** 2).mean()
        if set(batch["ids"]) & set(self.d["nan_ids"]):
            mse = mse * float("nan")
        return mse, {"mse": float(mse.detach()), "l1": float(err.abs().mean().detach())}

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
        (out_dir / "config.json").write_text(json.dumps(self.m), encoding="utf-8")
