"""A tiny random-init OWLv2 zero-shot detector (the transformers class ImagePulse-style grounded
edits use to find objects by name) for the offline `tiny` profile.

Saved like a hub model (`save_pretrained` folder with its processor: OWLv2 image processor and
OpenAI CLIP's tokenizer made from open_clip's BPE table), so it loads through the ordinary
`AutoProcessor` / `AutoModelForZeroShotObjectDetection.from_pretrained` path."""
from __future__ import annotations

from pathlib import Path

from nexus_gen.models.cache import build_once

TINY_OWLV2_NAME = "owlv2-tiny"
TINY_OWLV2_SIZE = 64  # the square the processor pads and resizes to: 4 x 4 patches -> 16 boxes
_SEED = 0


def _build_owlv2(out: Path) -> None:
    import torch
    from transformers import (CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection,
                              Owlv2ImageProcessor, Owlv2Processor)

    from nexus_gen.models.tiny.stable_diffusion import write_clip_tokenizer_files

    vocab_file, merges_file = write_clip_tokenizer_files(out / "_bpe")
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=16,
                              pad_token="!")
    config = Owlv2Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=TINY_OWLV2_SIZE, patch_size=16),
        projection_dim=32)
    torch.manual_seed(_SEED)
    model = Owlv2ForObjectDetection(config).eval()
    with torch.no_grad():  # boxes near OWLv2's grid prior (patch-sized, on the patch centres)
        model.box_head.dense2.weight.zero_()  # rather than random ones far off the image
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(out, safe_serialization=True)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(
        size={"height": TINY_OWLV2_SIZE, "width": TINY_OWLV2_SIZE}), tokenizer=tokenizer)
    processor.save_pretrained(out)
    for f in (vocab_file, merges_file):
        f.unlink()
    (out / "_bpe").rmdir()


def tiny_owlv2_dir() -> Path:
    """The tiny OWLv2 `from_pretrained` folder, built on first use."""
    return build_once(TINY_OWLV2_NAME, _build_owlv2)
