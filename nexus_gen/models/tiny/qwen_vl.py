"""A tiny random-init Qwen2.5-VL (the VLM class that writes ImagePulse's captions and
instructions) for the offline `tiny` profile, saved like a hub model with its processor
(`AutoProcessor` / `Qwen2_5_VLForConditionalGeneration.from_pretrained`).

The tokenizer is a byte-level BPE made from open_clip's shipped table (no download) plus Qwen's
special tokens and a ChatML chat template; the model writes random tokens, which is the point:
the caller's validation must catch them and fall back."""
from __future__ import annotations

from pathlib import Path

from nexus_gen.models.cache import build_once

TINY_QWEN_VL_NAME = "qwen2.5-vl-tiny"
_SEED = 0
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
             "<|image_pad|>", "<|video_pad|>"]
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _build_qwen_vl(out: Path) -> None:
    import torch
    from transformers import (GPT2TokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    from nexus_gen.models.tiny.stable_diffusion import write_clip_tokenizer_files

    vocab_file, merges_file = write_clip_tokenizer_files(out / "_bpe")
    tok = GPT2TokenizerFast(vocab_file=str(vocab_file), merges_file=str(merges_file),
                            unk_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": _SPECIALS})
    ids = {t: tok.convert_tokens_to_ids(t) for t in _SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(_SEED)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out, safe_serialization=True)
    size = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}  # 4 to 16 merged image tokens
    Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(size=size), tokenizer=tok,
                        video_processor=Qwen2VLVideoProcessor(size=size),
                        chat_template=_CHAT_TEMPLATE).save_pretrained(out)
    for f in (vocab_file, merges_file):
        f.unlink()
    (out / "_bpe").rmdir()


def tiny_qwen_vl_dir() -> Path:
    """The tiny Qwen2.5-VL `from_pretrained` folder, built on first use."""
    return build_once(TINY_QWEN_VL_NAME, _build_qwen_vl)
