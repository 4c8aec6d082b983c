"""The AR training stage: `NexusGenAR` learns understanding, generation and editing from unified
samples (NEXUS_GEN.md, "Training stages": LLM + vision_head + prefill embeddings trained, the ViT and
its merger frozen).

An example is the sample's conversation as token ids (`nexus_ar.encode_conversation`: user-turn
images are inputs at dynamic resolution, assistant-turn images outputs as the forced span of N
pads) plus pixels: input images for the ViT, output images made S x S (`square_pixels`, plain
resize as the reference's AR template). The target embeddings are the frozen ViT + merger of those
pixels, computed inside the model's forward under `no_grad` and detached: example() and collate()
run without the model (in data workers, before `build_model`), and the forward is where DDP and
LoRA wrappers see the batch. With `model.prefill: false` the stage trains the plain AR baseline by
teacher forcing (the targets are the inputs at the image positions)."""
from __future__ import annotations

import copy
import io
import logging
from pathlib import Path
from typing import Any, Optional, Union

import torch

from nexus_gen.train.stage_api import Batch, Example, TrainStage

log = logging.getLogger(__name__)

MODEL_KEYS = {"path": "tiny", "nexus_gen": None, "embed_dim": None, "prefill": True,
              "token_loss_weight": 3.0, "image_loss_weight": 3.0, "dtype": "float32", "train_vit": False}
DATA_KEYS = {"max_length": 4096, "target_fit": "resize"}


def check_keys(section: str, given: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    """`given` over the defaults `allowed`; ValueError naming an unknown key."""
    for k in given:
        if k not in allowed:
            raise ValueError(f"{section}.{k}: unknown key; allowed: {', '.join(allowed)}")
    return {**allowed, **given}


def resolve_ar_path(path: str) -> str:
    """`tiny` -> the tiny AR folder; a folder or hub id as given."""
    if path == "tiny":
        from nexus_gen.models.tiny.ar_tiny import tiny_ar_dir

        return str(tiny_ar_dir())
    return str(path)


def ar_config(path: str, nexus_gen: Optional[dict[str, Any]] = None, embed_dim: Optional[int] = None,
              section: str = "model") -> Any:
    """The AR model's config (config.json only, no weights), with `nexus_gen` overrides applied and
    the geometry checked; ValueError names the key."""
    from transformers import Qwen2_5_VLConfig

    from nexus_gen.models.nexus_ar import nexus_geometry

    try:
        cfg = Qwen2_5_VLConfig.from_pretrained(resolve_ar_path(path))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{section}.path = {path!r}: not a Qwen2.5-VL / Nexus-Gen AR model ({first})") from None
    if cfg.model_type != "qwen2_5_vl":
        raise ValueError(f"{section}.path = {path!r}: model_type {cfg.model_type!r}, expected qwen2_5_vl")
    if nexus_gen:
        if not isinstance(nexus_gen, dict):
            raise ValueError(f"{section}.nexus_gen: a mapping of image_tokens, image_size, "
                             "source_image_size, source_tokens")
        cfg.nexus_gen = {**(getattr(cfg, "nexus_gen", None) or {}), **nexus_gen}
    try:
        nexus_geometry(cfg)
    except ValueError as e:
        raise ValueError(f"{section}.{e}") from None
    d = cfg.text_config.hidden_size
    if embed_dim is not None and int(embed_dim) != d:
        raise ValueError(f"{section}.embed_dim = {embed_dim} does not fit the AR model's hidden size "
                         f"{d} (text_config.hidden_size of {path})")
    return cfg


def open_image(image: dict[str, Any]) -> Any:
    """A unified sample's image struct {bytes, path} as an RGB PIL image."""
    from PIL import Image

    if image.get("bytes") is not None:
        with Image.open(io.BytesIO(image["bytes"])) as im:
            return im.convert("RGB")
    with Image.open(image["path"]) as im:
        return im.convert("RGB")


class ARStage(TrainStage):
    """Stage `ar`: multi-task training of `NexusGenAR` (CE on text + MSE/cos on output images)."""

    name = "ar"
    tasks = ("understanding", "generation", "editing")
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")  # the LLM's attention (the ViT's are qkv/proj)
    lora_full_modules = ("vision_head", "image_prefill_embeds")
    shard_units = ("Qwen2_5_VLDecoderLayer",)  # FSDP units; the frozen ViT stays whole (train_sharding)

    def __init__(self, model_cfg: dict[str, Any], data_cfg: dict[str, Any]) -> None:
        super().__init__(model_cfg, data_cfg)
        self.m = check_keys("model", self.model_cfg, MODEL_KEYS)
        self.d = check_keys("data", self.data_cfg, DATA_KEYS)
        if self.d["target_fit"] not in ("resize", "crop"):
            raise ValueError(f"data.target_fit = {self.d['target_fit']!r}: use resize or crop")
        if int(self.d["max_length"]) <= 0:
            raise ValueError(f"data.max_length must be positive, got {self.d['max_length']}")
        for k in ("token_loss_weight", "image_loss_weight"):
            if float(self.m[k]) < 0:
                raise ValueError(f"model.{k} must be >= 0, got {self.m[k]}")
        if not isinstance(self.m["train_vit"], bool):
            raise ValueError(f"model.train_vit must be true or false, got {self.m['train_vit']!r}")
        if self.m["dtype"] not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype = {self.m['dtype']!r}: use float32, bfloat16 or float16")
        self.config = ar_config(self.m["path"], self.m["nexus_gen"], self.m["embed_dim"])
        from nexus_gen.models.nexus_ar import nexus_geometry

        self.geometry = nexus_geometry(self.config)
        self._processor: Any = None

    @property
    def processor(self) -> Any:
        """The model folder's processor (loaded on first use)."""
        if self._processor is None:
            from transformers import AutoProcessor

            self._processor = AutoProcessor.from_pretrained(resolve_ar_path(self.m["path"]))
        return self._processor

    def build_model(self, device: torch.device) -> torch.nn.Module:
        """NexusGenAR from `model.path` with the ViT + merger frozen (the reference's pre-trained
        ViT), or trained with them when `model.train_vit` (a ViT that has never seen an image, as
        the tiny profile's random init: frozen, its features are fixed random projections)."""
        from nexus_gen.models.nexus_ar import NexusGenAR

        model = NexusGenAR.from_pretrained(resolve_ar_path(self.m["path"]), config=self.config,
                                           dtype=getattr(torch, self.m["dtype"]))
        model.processor = self.processor
        freeze_vit(model, frozen=not self.m["train_vit"])
        return model.to(device)

    def example(self, sample: dict[str, Any]) -> Union[Example, str]:
        from nexus_gen.models.nexus_ar import (IMAGE_TAG, _content_text, encode_conversation,
                                               input_pixels, square_pixels)

        if sample.get("task") not in self.tasks:
            return f"ar: task {sample.get('task')!r} is not one of {', '.join(self.tasks)}"
        msgs = sample["messages"]
        tags = [(m["role"], _content_text(m["content"]).count(IMAGE_TAG)) for m in msgs]
        n_tags = sum(n for _, n in tags)
        if n_tags != len(sample["images"]):
            return f"ar: {n_tags} <image> tags but {len(sample['images'])} images"
        try:
            images = [open_image(im) for im in sample["images"]]
        except (OSError, ValueError) as e:
            return f"ar: unreadable image ({e})"
        ins, outs, k = [], [], 0
        for role, n in tags:
            (outs if role == "assistant" else ins).extend(images[k:k + n])
            k += n
        proc = self.processor
        pv = grid = None
        grids: list[list[int]] = []
        if ins:
            pv, grid = input_pixels(proc.image_processor, ins)
            grids = grid.tolist()
        vc = self.config.vision_config
        s = self.geometry["image_size"] // vc.patch_size
        ids = {"vision_start": self.config.vision_start_token_id,
               "vision_end": self.config.vision_end_token_id, "image_pad": self.config.image_token_id}
        try:
            enc = encode_conversation(proc.tokenizer, msgs, grids, self.geometry["image_tokens"], (1, s, s),
                                      vc.spatial_merge_size, ids)
        except ValueError as e:
            return f"ar: {e}"
        if len(enc.input_ids) > int(self.d["max_length"]):
            return f"ar: {len(enc.input_ids)} tokens > data.max_length {self.d['max_length']}"
        ex: Example = {"id": sample["id"], "enc": enc, "pixel_values": pv, "image_grid_thw": grid,
                       "target_pixel_values": None, "target_grid_thw": None}
        if outs:
            ex["target_pixel_values"], ex["target_grid_thw"] = square_pixels(
                proc.image_processor, outs, self.geometry["image_size"], self.d["target_fit"])
        return ex

    def collate(self, examples: list[Example]) -> Batch:
        from nexus_gen.models.nexus_ar import pad_conversations

        batch = pad_conversations([e["enc"] for e in examples], self.config.text_config.pad_token_id or 0)
        for key, grid_key in (("pixel_values", "image_grid_thw"), ("target_pixel_values", "target_grid_thw")):
            parts = [e[key] for e in examples if e[key] is not None]
            batch[key] = torch.cat(parts) if parts else None
            grids = [e[grid_key] for e in examples if e[grid_key] is not None]
            batch[grid_key] = torch.cat(grids) if grids else None
        batch["ids"] = [e["id"] for e in examples]
        return batch

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = {k: v for k, v in batch.items() if k != "ids" and v is not None}
        out = model(**inputs, prefill=bool(self.m["prefill"]),
                    loss_weights=(float(self.m["token_loss_weight"]), float(self.m["image_loss_weight"])))
        return out.loss, {"ce": float(out.ce), "mse": float(out.mse), "cos": float(out.cos),
                          "total": float(out.loss.detach())}

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        """The model (LoRA merged into a copy) + processor: a `NexusGenAR.from_pretrained` folder."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if hasattr(model, "merge_and_unload"):
            model = copy.deepcopy(model).merge_and_unload()
        model = getattr(model, "module", model)
        model.save_pretrained(str(out_dir), safe_serialization=True)
        self.processor.save_pretrained(str(out_dir))


def freeze_vit(model: torch.nn.Module, frozen: bool = True) -> None:
    """The reference's freezing: ViT + merger frozen; LLM, lm_head, vision_head, prefill trained
    (`frozen=False`: everything trained)."""
    for p in model.parameters():
        p.requires_grad_(True)
    for p in model.model.visual.parameters():
        p.requires_grad_(not frozen)
