"""DINO ViT CLS features through transformers, for the MagicBrush `dino` metric.

Specs: `tiny` (small random-init ViT built locally, offline), `paper` (`facebook/dino-vits16`),
any hub id or a local `save_pretrained` directory. Preprocessing is DINO's evaluation transform as
MagicBrush applies it: resize the shorter side to 256/224 of the input size (bicubic), centre-crop
to the model's input size, ImageNet mean/std. Features are the final-layernorm CLS token,
returned L2-normalised (so the DINO score is a dot product)."""
from __future__ import annotations

import logging
from typing import Optional, Union

import torch

from nexus_gen.scoring.embedding_cache import EmbeddingCache, default_cache
from nexus_gen.scoring.image_encoder import ImageEncoderBase
from nexus_gen.scoring.model_source import default_dtype, loading, resolve_source

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


def load_dino(spec: str = "paper", *, device: Union[str, torch.device] = "cpu",
              dtype: Optional[torch.dtype] = None, cache: Optional[EmbeddingCache] = None) -> DinoEncoder:
    """Load a DINO encoder: `tiny`, `paper`, a hub id or a local directory (offline: the hub id
    must already be in the local cache, else `ModelUnavailableError`)."""
    from transformers import ViTModel

    from nexus_gen.models.tiny import tiny_dino_dir

    source, model_id = resolve_source("DINO", spec, PROFILES, tiny_dino_dir, "dino-tiny")
    device = torch.device(device)
    dtype = dtype if dtype is not None else default_dtype(device)
    fix = ("use the offline 'tiny' profile, pass a local folder saved with save_pretrained, or "
           "run once online to fill the cache")
    with loading("DINO", spec, source, fix):
        model = ViTModel.from_pretrained(str(source), add_pooling_layer=False)
    model.eval().requires_grad_(False)
    model.to(device=device, dtype=dtype)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    enc = DinoEncoder(model, str(model_id), device, dtype, cache)
    log.info("loaded DINO %s on %s (%s)", enc.model_id, device, dtype)
    return enc
