"""A tiny random-init Qwen2.5-VL (image-text-to-text) model for the offline `tiny` profile.

Same classes and folder layout as the real Qwen2.5-VL-7B-Instruct (a `save_pretrained` model, a
`Qwen2_5_VLProcessor` with a Qwen-format chat template), shrunk to a few million parameters so it
answers in well under a second on CPU. Its byte-level BPE tokenizer is trained on the fly with
`tokenizers` on a small fixed corpus, and keeps Qwen2.5-VL's special tokens at their real ids
(151643 `<|endoftext|>` ... 151652 `<|vision_start|>`, 151653 `<|vision_end|>`, 151655
`<|image_pad|>`, 151656 `<|video_pad|>`): templates that hard-code them keep working. Its answers
are noise: it exercises the pipeline, not the scores."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from nexus_gen.models.cache import build_once

TINY_VLM_NAME = "qwen2_5_vl-tiny"
SEED = 0
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                       "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                       "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                       "<|image_pad|>", "<|video_pad|>")
FIRST_SPECIAL_ID = 151643
VOCAB_SIZE = FIRST_SPECIAL_ID + len(QWEN_SPECIAL_TOKENS)  # 151657: every special id is in range
IMAGE_PIXELS = 56 * 56  # min = max: every image becomes 4x4 patches of 14 px -> 4 merged tokens

# The Qwen chat format: system / user / assistant turns between <|im_start|> and <|im_end|>,
# each image as <|vision_start|><|image_pad|><|vision_end|> (the processor expands the pad).
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

_CORPUS = ["You are a helpful assistant.", "Please answer yes or no.", "yes no Yes No",
           "Answer with the option's letter from the given choices directly.",
           "How many red circles are there in the image? A. 1 B. 2 C. 3 D. 4",
           "What colour is the star? Is there a blue square in the image?",
           "Where is the green triangle relative to the purple diamond? left of right of above below"]


def qwen_tokenizer(corpus: Sequence[str] = tuple(_CORPUS), vocab_size: int = 512):
    """A byte-level BPE `tokenizers.Tokenizer` trained on `corpus`, with Qwen2.5-VL's special
    tokens at their real ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer)
    spec = json.loads(tok.to_str())
    # Added tokens take the model-vocab id of the same token: put them there, at Qwen's ids.
    for k, s in enumerate(QWEN_SPECIAL_TOKENS):
        spec["model"]["vocab"][s] = FIRST_SPECIAL_ID + k
    spec["added_tokens"] = [dict(id=FIRST_SPECIAL_ID + k, content=s, single_word=False, lstrip=False,
                                 rstrip=False, normalized=False, special=True)
                            for k, s in enumerate(QWEN_SPECIAL_TOKENS)]
    return Tokenizer.from_str(json.dumps(spec))


def _build_vlm(out: Path) -> None:
    from transformers import (PreTrainedTokenizerFast, Qwen2_5_VLConfig,
                              Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=qwen_tokenizer(), eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.padding_side = "left"
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=IMAGE_PIXELS, max_pixels=IMAGE_PIXELS),
        video_processor=Qwen2VLVideoProcessor(), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         initializer_range=1.0,  # large random weights: answers vary by input
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=32, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=56, fullatt_block_indexes=[0]),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
        vision_end_token_id=151653, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Qwen2_5_VLForConditionalGeneration(config)
        # Ids between the trained vocabulary and the special tokens are unused: zero their
        # (tied) embedding rows so their logits are 0 and greedy decoding picks real tokens.
        with torch.no_grad():
            model.get_input_embeddings().weight[tokenizer.backend_tokenizer.get_vocab_size(
                with_added_tokens=False) - len(QWEN_SPECIAL_TOKENS):FIRST_SPECIAL_ID] = 0.0
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))


def tiny_vlm_dir() -> Path:
    """The tiny Qwen2.5-VL `from_pretrained` folder (model + processor), built on first use."""
    return build_once(TINY_VLM_NAME, _build_vlm)
