"""Tiny random-init CLIP, DINO and Chinese-CLIP models for the offline `tiny` profile.

Built once per cache (`nexus_gen.models.cache.build_once`) from small configs with fixed seeds,
saved as safetensors in the same layout as real weights (an open_clip `local-dir:` folder; a
transformers `save_pretrained` folder), and loaded back through the ordinary loading path."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from nexus_gen.models.cache import build_once

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SEED = 0

# A ViT-B-32-shaped CLIP, shrunk: same tokenizer (open_clip's shipped BPE, 49408 tokens, 77 ctx),
# QuickGELU like OpenAI's weights, OpenAI normalisation, bicubic shortest-side resize.
TINY_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                       "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2},
    },
    "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                       "interpolation": "bicubic", "resize_mode": "shortest"},
}

# A ViT-S/16-shaped DINO backbone, shrunk.
TINY_DINO_CONFIG = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=96, qkv_bias=True)


def _build_clip(out: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    (out / "open_clip_config.json").write_text(json.dumps(TINY_CLIP_CONFIG, indent=2) + "\n")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = open_clip.create_model(f"local-dir:{out}")  # config only here: random init
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))


def _build_dino(out: Path) -> None:
    from transformers import ViTConfig, ViTModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = ViTModel(ViTConfig(**TINY_DINO_CONFIG), add_pooling_layer=False)
    model.save_pretrained(str(out), safe_serialization=True)


def tiny_clip_dir() -> Path:
    """The tiny CLIP `local-dir:` folder, built on first use."""
    return build_once("clip-tiny", _build_clip)


def tiny_dino_dir() -> Path:
    """The tiny DINO `from_pretrained` folder, built on first use."""
    return build_once("dino-tiny", _build_dino)


# A Chinese-CLIP (BERT text tower + ViT), shrunk. Its tokenizer is a BERT WordPiece tokenizer
# over a small vocabulary written on the fly: the special tokens, printable ASCII and every CJK
# unified ideograph (BERT splits Chinese into single characters), so nothing is downloaded.
TINY_CHINESE_CLIP_CONFIG = dict(
    text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64),
    vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64),
    projection_dim=32)


def tiny_wordpiece_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ascii_ = [chr(c) for c in range(33, 127)]
    return specials + ascii_ + ["##" + c for c in ascii_] + [chr(c) for c in range(0x4E00, 0xA000)]


def _build_chinese_clip(out: Path) -> None:
    from transformers import (BertTokenizer, ChineseCLIPConfig, ChineseCLIPImageProcessor,
                              ChineseCLIPModel, ChineseCLIPProcessor)

    vocab = tiny_wordpiece_vocab()
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(out / "vocab.txt"), do_lower_case=True, tokenize_chinese_chars=True)
    size = TINY_CHINESE_CLIP_CONFIG["vision_config"]["image_size"]
    images = ChineseCLIPImageProcessor(size={"height": size, "width": size},
                                       crop_size={"height": size, "width": size},
                                       image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))
    cfg = dict(TINY_CHINESE_CLIP_CONFIG)
    cfg["text_config"] = dict(cfg["text_config"], vocab_size=len(vocab))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = ChineseCLIPModel(ChineseCLIPConfig(**cfg))
    model.save_pretrained(str(out), safe_serialization=True)
    ChineseCLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(out))


def tiny_chinese_clip_dir() -> Path:
    """The tiny Chinese-CLIP `from_pretrained` folder (model + processor), built on first use."""
    return build_once("chinese-clip-tiny", _build_chinese_clip)
