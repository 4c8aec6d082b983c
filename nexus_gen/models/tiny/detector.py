"""A tiny random-init Mask2Former instance-segmentation model (GenEval's detector family) for the
offline `tiny` profile, saved like a hub model (`save_pretrained` folder plus image processor).

The label names are the caller's (GenEval passes its 80 COCO class names): the library does not
own a benchmark's class list. The cache is keyed by name, so a cached model with other labels is
an error rather than a silent mix-up."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Sequence

from nexus_gen.models.cache import build_once

TINY_MASK2FORMER_NAME = "geneval-mask2former-tiny"
_SEED = 0


def _build_mask2former(names: Sequence[str], target: Path) -> None:
    """A small random-init Mask2Former (seed 0) with `names` as labels, saved like a hub model."""
    import torch
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                              Mask2FormerImageProcessor, SwinConfig)

    names = list(names)
    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
                          image_size=64, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
        dim_feedforward=64, num_queries=20, num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )
    torch.manual_seed(_SEED)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    model.save_pretrained(target, safe_serialization=True)
    Mask2FormerImageProcessor(size={"shortest_edge": 128, "longest_edge": 256}).save_pretrained(target)


def tiny_mask2former_dir(names: Sequence[str]) -> Path:
    """The tiny Mask2Former `from_pretrained` folder with labels `names`, built on first use."""
    target = build_once(TINY_MASK2FORMER_NAME, partial(_build_mask2former, tuple(names)))
    id2label = json.loads((target / "config.json").read_text(encoding="utf-8"))["id2label"]
    cached = [id2label[str(i)] for i in range(len(id2label))]
    if cached != list(names):
        raise ValueError(f"the cached tiny detector {target} has other labels than asked "
                         f"({len(cached)} vs {len(names)} names); delete that folder to rebuild it")
    return target
