"""A tiny random-init Grounding DINO (the `paper` detector class of the imagepulse backend,
`GroundingDinoForObjectDetection`) for the offline `tiny-grounding-dino` detector spec, saved like
a hub model with its processor (Grounding DINO image processor and a BERT WordPiece tokenizer over
the small vocabulary of the tiny Chinese-CLIP: ASCII characters and CJK ideographs), so it loads
through the ordinary `AutoProcessor` / `AutoModelForZeroShotObjectDetection.from_pretrained` path."""
from __future__ import annotations

from pathlib import Path

from nexus_gen.models.cache import build_once

TINY_GROUNDING_DINO_NAME = "grounding-dino-tiny"
_SEED = 0


def _build_grounding_dino(out: Path) -> None:
    import torch
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    from nexus_gen.models.tiny.encoders import tiny_wordpiece_vocab

    vocab = tiny_wordpiece_vocab()
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(out / "vocab.txt"), do_lower_case=True)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
                                   image_size=128, out_indices=[2, 3, 4]),
        text_config=BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=512),
        d_model=32, encoder_layers=1, decoder_layers=2,  # transformers ties box heads: 2 layers at least
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
        num_queries=16, encoder_n_points=2, decoder_n_points=2, max_text_len=256)
    torch.manual_seed(_SEED)
    GroundingDinoForObjectDetection(config).eval().save_pretrained(out, safe_serialization=True)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192}),
                           tokenizer=tokenizer).save_pretrained(out)


def tiny_grounding_dino_dir() -> Path:
    """The tiny Grounding DINO `from_pretrained` folder, built on first use."""
    return build_once(TINY_GROUNDING_DINO_NAME, _build_grounding_dino)
