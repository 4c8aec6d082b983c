"""Chinese-CLIP (transformers' `ChineseCLIPModel`) for text in Chinese: OpenAI's CLIP has an
English BPE vocabulary, so its score of a Chinese caption or prompt means nothing.

Specs: `tiny` (a small random-init model built locally, offline, with a tokenizer built from a
small vocabulary), `paper` = `OFA-Sys/chinese-clip-vit-base-patch16`, any hub id or a local
`save_pretrained` folder (model + processor). Images go through the model's own
`ChineseCLIPProcessor` (direct resize to the input size, bicubic, OpenAI mean/std); features are
`get_image_features` / `get_text_features`, L2-normalised. The encoder has the same API as the
open_clip `ClipEncoder` (batched cached images, `encode_texts`), so `EditScorer` takes either."""
from __future__ import annotations

import logging
import re
from typing import Optional, Union

import torch

from nexus_gen.scoring.embedding_cache import EmbeddingCache, default_cache
from nexus_gen.scoring.image_encoder import ImageEncoderBase
from nexus_gen.scoring.model_source import default_dtype, loading, resolve_source
from nexus_gen.scoring.text_encoder import TextEncoderBase

log = logging.getLogger(__name__)

PROFILES = {"paper": "OFA-Sys/chinese-clip-vit-base-patch16"}
DEFAULT = "paper"
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def is_chinese(text: Optional[str]) -> bool:
    """Whether `text` holds CJK characters (then it is scored with Chinese-CLIP)."""
    return bool(text) and bool(_CJK.search(text))


def _features(out) -> torch.Tensor:
    """`get_*_features` returns a tensor (transformers 4) or an output with `pooler_output` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ChineseClipEncoder(ImageEncoderBase, TextEncoderBase):
    """A loaded Chinese-CLIP: batched, cached image and text embeddings (L2-normalised, fp32 cpu)."""

    clipscore_prefix = ""  # CLIPScore's "A photo depicts " is English: Chinese text goes as it is

    def __init__(self, model: torch.nn.Module, processor, model_id: str, device: torch.device,
                 dtype: torch.dtype, cache: Optional[EmbeddingCache] = None) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.cache = cache if cache is not None else default_cache()
        self.embed_dim = int(model.config.projection_dim)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.images_forwarded = 0
        self.texts_forwarded = 0

    def preprocess(self, image) -> torch.Tensor:
        """The model's own image processor (numpy; runs in the decode workers)."""
        return self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=batch))

    def _text_features(self, texts: list[str], batch_size: int):
        for s in range(0, len(texts), batch_size):
            tok = self.processor.tokenizer(texts[s:s + batch_size], padding=True, truncation=True,
                                           max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                out = self.model.get_text_features(**{k: v.to(self.device) for k, v in tok.items()})
            yield list(range(s, min(s + batch_size, len(texts)))), _features(out)


def load_chinese_clip(spec: str = DEFAULT, *, device: Union[str, torch.device] = "cpu",
                      dtype: Optional[torch.dtype] = None,
                      cache: Optional[EmbeddingCache] = None) -> ChineseClipEncoder:
    """Load Chinese-CLIP: `tiny`, `paper`, a hub id or a local folder (offline, a hub id must
    already be cached, else `ModelUnavailableError` at once)."""
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    from nexus_gen.models.tiny import tiny_chinese_clip_dir

    source, model_id = resolve_source("Chinese-CLIP", spec, PROFILES, tiny_chinese_clip_dir,
                                      "chinese-clip-tiny")
    device = torch.device(device)
    dtype = dtype if dtype is not None else default_dtype(device)
    fix = ("pass --clip-zh tiny (offline, random weights) or a local save_pretrained folder, or "
           "run once online to fill the cache")
    with loading("Chinese-CLIP", spec, source, fix):
        model = ChineseCLIPModel.from_pretrained(str(source))
        processor = ChineseCLIPProcessor.from_pretrained(str(source))
    model.eval().requires_grad_(False)
    model.to(device=device, dtype=dtype)
    enc = ChineseClipEncoder(model, processor, str(model_id), device, dtype, cache)
    log.info("loaded Chinese-CLIP %s on %s (%s)", enc.model_id, device, dtype)
    return enc
