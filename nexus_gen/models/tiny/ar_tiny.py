"""A tiny random-init Nexus-Gen AR model (`NexusGenAR`) for the offline `tiny` profile.

Same classes and folder layout as the paper's AR model (a `save_pretrained` Qwen2.5-VL + the two
heads, a `Qwen2_5_VLProcessor` with Qwen's chat template), with D = 64, two layers, output images
at S = 112 px (N = 16 tokens) and source images at S2 = 224 px (M = 64 tokens). Its byte-level BPE
tokenizer keeps Qwen2.5-VL's special tokens at their real ids (as `tiny.vlm`) and is trained on
the text a scenes build holds: the conversation templates, scene captions (EN/ZH), scene QA, the
edit instructions and the vocabularies, so a training step sees few, meaningful tokens. Input
images take dynamic resolution between 56 x 56 and 224 x 224 px."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from nexus_gen.models.cache import build_once
from nexus_gen.models.tiny.vlm import CHAT_TEMPLATE, FIRST_SPECIAL_ID, QWEN_SPECIAL_TOKENS, VOCAB_SIZE, qwen_tokenizer

TINY_AR_NAME = "nexus_gen_ar-tiny"
SEED = 0
D = 64
IMAGE_SIZE, IMAGE_TOKENS = 112, 16
SOURCE_SIZE, SOURCE_TOKENS = 224, 64
MIN_PIXELS, MAX_PIXELS = 56 * 56, 224 * 224
BPE_VOCAB = 2048
SPEC = Path(__file__).resolve().parents[3] / "datasets_spec"


def tiny_ar_geometry() -> dict[str, int]:
    """The `nexus_gen` config entry of the tiny AR model."""
    return {"image_tokens": IMAGE_TOKENS, "image_size": IMAGE_SIZE, "source_image_size": SOURCE_SIZE,
            "source_tokens": SOURCE_TOKENS}


def corpus(n_scenes: int = 300) -> list[str]:
    """The tokenizer's training text: what a scenes build writes into conversations."""
    from nexus_gen.data import templates as T
    from nexus_gen.scenes.palette import COLORS
    from nexus_gen.scenes.qa import scene_qa
    from nexus_gen.scenes.scene import random_scene
    from nexus_gen.scenes.text import (STYLE_TEXT, add_instruction, caption, caption_zh,
                                       palette_swap_text, remove_instruction)

    out = [T.SYSTEM_PROMPT, T.EDIT_ASSISTANT["en"], T.EDIT_ASSISTANT["zh"]]
    for i in range(n_scenes):
        scene = random_scene(i)
        en, zh = caption(scene), caption_zh(scene)
        out += [T.GEN_USER["en"].format(prompt=en), T.GEN_ASSISTANT["en"],
                T.GEN_USER["zh"].format(prompt=zh), T.GEN_ASSISTANT["zh"]]
        for k, obj in enumerate(scene.objects):
            out += list(add_instruction(obj, k))
            try:
                out += list(remove_instruction(scene, k, k))
            except ValueError:
                pass
        if i < 100:
            out += [f"{q.question} {q.answer} {q.answer_text}" for q in scene_qa(scene, size=64, seed=i)]
    for texts in STYLE_TEXT.values():
        out += list(texts)
    for a in COLORS:
        for b in COLORS:
            if a != b:
                out += list(palette_swap_text(a, b, True)) + list(palette_swap_text(a, b, False))
    for tsv in sorted((SPEC / "vocab").glob("*.tsv")):
        out += [line for line in tsv.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    example = SPEC / "examples" / "nexus_gen_example" / "llm_dataset.jsonl"
    if example.is_file():
        for line in example.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out += [m["content"] for m in json.loads(line)["messages"]]
    return out


def _build_ar(out: Path) -> None:
    from transformers import (PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    from nexus_gen.models.nexus_ar import NexusGenAR

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=qwen_tokenizer(corpus(), BPE_VOCAB),
                                        eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.padding_side = "left"
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        video_processor=Qwen2VLVideoProcessor(), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=D, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         pad_token_id=FIRST_SPECIAL_ID),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=D, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1]),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
        vision_end_token_id=151653, tie_word_embeddings=True)
    config.nexus_gen = tiny_ar_geometry()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = NexusGenAR(config)
        # Ids between the trained vocabulary and the special tokens are unused: zero their (tied)
        # embedding rows so their logits are 0 and greedy decoding picks real tokens.
        with torch.no_grad():
            model.get_input_embeddings().weight[tokenizer.backend_tokenizer.get_vocab_size(
                with_added_tokens=False) - len(QWEN_SPECIAL_TOKENS):FIRST_SPECIAL_ID] = 0.0
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))


def tiny_ar_dir() -> Path:
    """The tiny Nexus-Gen AR `from_pretrained` folder (model + processor), built on first use."""
    return build_once(TINY_AR_NAME, _build_ar)
