"""DINO ViT CLS features through transformers, for the MagicBrush `dino` metric.

Specs: `tiny` (small random-init ViT built locally, offline), `paper` (`facebook/dino-vits16`),
any hub id or a local `save_pretrained` directory. Preprocessing is DINO's evaluation transform as
MagicBrush applies it: resize the shorter side to 256/224 of the input size (bicubic), centre-crop
to the model's input size, ImageNet mean/std. Features are the final-layernorm CLS token,
returned L2-normalised (so the DINO score is a dot product)."""
from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Optional, Union

import torch

from nexus_gen.hashing import update_from_file
from nexus_gen.scoring.embedding_cache import EmbeddingCache, default_cache
from nexus_gen.scoring.hub import ModelUnavailableError, hub_files, quiet_progress
from nexus_gen.scoring.image_encoder import ImageEncoderBase

log = logging.getLogger(__name__)

PROFILES = {"paper": "facebook/dino-vits16"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dino_transform(image_size: int):
    """DINO's eval transform for a square input of `image_size` px (PIL RGB -> tensor)."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(round(image_size * 256 / 224), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class DinoEncoder(ImageEncoderBase):
    """A loaded DINO ViT: batched, cached, L2-normalised CLS features (float32 cpu)."""

    def __init__(self, model: torch.nn.Module, model_id: str, device: torch.device,
                 dtype: torch.dtype, cache: Optional[EmbeddingCache] = None) -> None:
        self.model = model
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.cache = cache if cache is not None else default_cache()
        self.embed_dim = int(model.config.hidden_size)
        self.preprocess = dino_transform(int(model.config.image_size))
        self.images_forwarded = 0

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=batch).last_hidden_state[:, 0]


def _weights_id(path: Path) -> str:
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    h = hashlib.sha256()
    for f in files:
        update_from_file(h, f)
    return h.hexdigest()[:16] if files else "no-weights"


def load_dino(spec: str = "paper", *, device: Union[str, torch.device] = "cpu",
              dtype: Optional[torch.dtype] = None, cache: Optional[EmbeddingCache] = None) -> DinoEncoder:
    """Load a DINO encoder: `tiny`, `paper`, a hub id or a local directory (offline: the hub id
    must already be in the local cache, else `ModelUnavailableError`)."""
    from transformers import ViTModel

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"DINO spec must be a non-empty string, got {spec!r}")
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if spec == "tiny":
        from nexus_gen.models.tiny import tiny_dino_dir

        source = tiny_dino_dir()
        model_id = f"dino-tiny@sha256:{_weights_id(source)}"
    elif Path(spec).expanduser().is_dir():
        source = Path(spec).expanduser().resolve()
        model_id = f"{source.name}@sha256:{_weights_id(source)}"
    else:
        source = model_id = PROFILES.get(spec, spec)
    fix = ("use the offline 'tiny' profile, pass a local folder saved with save_pretrained, or "
           "run once online to fill the cache")
    guard = hub_files(f"DINO {spec!r}", str(source), ["config.json"], fix) \
        if isinstance(source, str) else contextlib.nullcontext()
    try:
        with guard, quiet_progress():
            model = ViTModel.from_pretrained(str(source), add_pooling_layer=False)
    except (OSError, ValueError) as exc:
        why = " ".join(str(exc).split())
        raise ModelUnavailableError(f"cannot load DINO {spec!r} ({source}): {why}; {fix}") from exc
    model.eval().requires_grad_(False)
    model.to(device=device, dtype=dtype)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    enc = DinoEncoder(model, str(model_id), device, dtype, cache)
    log.info("loaded DINO %s on %s (%s)", enc.model_id, device, dtype)
    return enc
