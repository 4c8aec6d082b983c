"""A tiny random-init SAM (the transformers segmenter class grounded edits use to turn a detected
box into an object mask) for the offline `tiny` profile, saved like a hub model with its
processor (`SamModel` / `SamProcessor.from_pretrained`)."""
from __future__ import annotations

from pathlib import Path

from nexus_gen.models.cache import build_once

TINY_SAM_NAME = "sam-tiny"
TINY_SAM_SIZE = 64  # the longest side the processor resizes to (and pads to a square)
_SEED = 0


def _build_sam(out: Path) -> None:
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=TINY_SAM_SIZE, patch_size=8, window_size=4, global_attn_indexes=[1],
                           num_pos_feats=8, mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=16, image_size=TINY_SAM_SIZE, patch_size=8,
                                   mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                 iou_head_hidden_dim=16))
    torch.manual_seed(_SEED)
    SamModel(config).eval().save_pretrained(out, safe_serialization=True)
    SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": TINY_SAM_SIZE}, pad_size={"height": TINY_SAM_SIZE, "width": TINY_SAM_SIZE},
        mask_size={"longest_edge": TINY_SAM_SIZE // 4}, mask_pad_size={"height": TINY_SAM_SIZE // 4,
                                                                       "width": TINY_SAM_SIZE // 4})
                 ).save_pretrained(out)


def tiny_sam_dir() -> Path:
    """The tiny SAM `from_pretrained` folder, built on first use."""
    return build_once(TINY_SAM_NAME, _build_sam)
