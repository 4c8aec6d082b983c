"""A tiny random-init FLUX in the diffusers folder layout, for the Nexus-Gen decoders' `tiny` profile.

`transformer/` (FluxTransformer2DModel with the guidance embedding, as FLUX.1-dev), `vae/`
(AutoencoderKL with FLUX's 16 latent channels, 8x downsampling and FLUX's scaling/shift factors,
no quant convs), `text_encoder/` + `tokenizer/` (a CLIP text model whose pooled output has the
DiT's `pooled_projection_dim`; the tokenizer is OpenAI CLIP's, from open_clip's shipped BPE
table) and `scheduler/` (FlowMatchEulerDiscreteScheduler with FLUX.1-dev's scheduler config).
There is no `text_encoder_2` (T5): Nexus-Gen's decoders replace the T5 prompt embedding, so the
folder is not a whole `FluxPipeline` and has no `model_index.json`; its decoders' CFG negative is
the all-zero prompt. `tiny_flux_t5_dir()` is the same folder plus a tiny `text_encoder_2/` (a
`T5EncoderModel`, T5 v1.1 gated-GELU like FLUX.1-dev's T5-XXL, d_model = the DiT's
joint_attention_dim) and `tokenizer_2/` (a tiny Unigram T5 tokenizer): the base on which the
decoders' negative is T5("") as in the reference.

A 64 px image is an 8x8x16 latent, packed 2x2 into 16 tokens of 64 channels: small enough to
train on a CPU in seconds."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from nexus_gen.models.cache import build_once
from nexus_gen.models.tiny.stable_diffusion import write_clip_tokenizer_files

log = logging.getLogger(__name__)

TINY_FLUX_NAME = "tiny-flux-v1"
TINY_FLUX_T5_NAME = "tiny-flux-t5-v1"
TINY_FLUX_SIZE = 64           # pixels; the VAE downsamples 8x, packing 2x2 more
TINY_FLUX_JOINT_DIM = 32      # J: the DiT's joint_attention_dim (FLUX.1-dev: 4096)
TINY_FLUX_POOLED_DIM = 32     # the CLIP text hidden size = the DiT's pooled_projection_dim (768)
# FLUX.1-dev's VAE latent normalisation (vae/config.json of black-forest-labs/FLUX.1-dev).
FLUX_VAE_SCALING = 0.3611
FLUX_VAE_SHIFT = 0.1159
# FLUX.1-dev's scheduler/scheduler_config.json.
FLUX_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                             base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                             max_image_seq_len=4096)
_SEED = 0


def _build_tiny_flux(out: Path) -> None:
    """Create the tiny FLUX components with fixed seeds and save each in its subfolder."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_file, merges_file = write_clip_tokenizer_files(out / "_bpe")
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77)
    torch.manual_seed(_SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TINY_FLUX_JOINT_DIM,
        pooled_projection_dim=TINY_FLUX_POOLED_DIM, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    torch.manual_seed(_SEED + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, layers_per_block=1,
        block_out_channels=(8, 16, 16, 16), norm_num_groups=4, sample_size=TINY_FLUX_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=FLUX_VAE_SCALING, shift_factor=FLUX_VAE_SHIFT,
        use_quant_conv=False, use_post_quant_conv=False)
    torch.manual_seed(_SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_FLUX_POOLED_DIM, intermediate_size=37,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        projection_dim=TINY_FLUX_POOLED_DIM, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)
    transformer.save_pretrained(out / "transformer", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    scheduler.save_pretrained(out / "scheduler")
    shutil.rmtree(out / "_bpe")
    log.info("built tiny FLUX into %s", out)


def tiny_flux_dir() -> Path:
    """Directory of the tiny random FLUX (diffusers layout), built on first use, then cached."""
    return build_once(TINY_FLUX_NAME, _build_tiny_flux)


# The tiny T5 tokenizer's pieces: T5's special ids (<pad> 0, </s> 1, <unk> 2), then whole words
# (SentencePiece's word-start marker U+2581) and single letters as the fallback.
_T5_WORDS = ("a an the of on in and with left right above below red green blue yellow black white "
             "cat dog car cup ball box tree house person").split()


def write_tiny_t5(out: Path, d_model: int = TINY_FLUX_JOINT_DIM) -> None:
    """Write `text_encoder_2/` (a seeded tiny T5EncoderModel) and `tokenizer_2/` into `out`."""
    import torch
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -2.0 - 0.01 * i) for i, w in enumerate(_T5_WORDS)]
    vocab += [("\u2581", -6.0)] + [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)
    torch.manual_seed(_SEED + 3)
    encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    encoder.save_pretrained(out / "text_encoder_2", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer_2")


def _build_tiny_flux_t5(out: Path) -> None:
    shutil.copytree(tiny_flux_dir(), out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete"))
    write_tiny_t5(out)
    log.info("built tiny FLUX with a tiny T5 into %s", out)


def tiny_flux_t5_dir() -> Path:
    """The tiny FLUX folder plus a tiny T5 (`text_encoder_2/`, `tokenizer_2/`), built once."""
    return build_once(TINY_FLUX_T5_NAME, _build_tiny_flux_t5)
