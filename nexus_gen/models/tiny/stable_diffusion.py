"""Tiny random-init diffusers pipelines (Stable Diffusion text-to-image, inpainting and
InstructPix2Pix editing), built offline from small configs with fixed seeds.

They exercise the real `DiffusionPipeline.from_pretrained` path on CPU in seconds (64 px images),
so generation, layout and scoring code is tested against a genuine pipeline without any hub
download. The CLIP tokenizer is made from open_clip's shipped BPE table (the same table OpenAI's
CLIP uses), so no tokenizer files are fetched either."""
from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

from nexus_gen.models.cache import build_once

log = logging.getLogger(__name__)

TINY_SD_NAME = "tiny-stable-diffusion-v1"
TINY_IP2P_NAME = "tiny-instruct-pix2pix-v1"
TINY_SD_INPAINT_NAME = "tiny-stable-diffusion-inpainting-v1"
TINY_SD_SIZE = 64  # pixels: UNet sample_size 32 x VAE scale factor 2
_SEED = 0
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_N_MERGES = 49152 - 256 - 2  # OpenAI CLIP's vocabulary: 256 bytes x2, these merges, 2 specials


def _byte_symbols() -> list[str]:
    """The 256 stand-ins byte-level BPE uses for raw bytes, in CLIP's vocabulary order
    (printable bytes as themselves first, then the others mapped above U+0100)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def clip_bpe_path() -> Path:
    """open_clip's copy of OpenAI CLIP's BPE merges (`bpe_simple_vocab_16e6.txt.gz`)."""
    import open_clip

    p = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not p.is_file():
        raise FileNotFoundError(f"open_clip's BPE table is missing at {p}; reinstall open_clip_torch")
    return p


def write_clip_tokenizer_files(out_dir: Path) -> tuple[Path, Path]:
    """Write `vocab.json` and `merges.txt` of OpenAI CLIP's tokenizer (49408 tokens) into out_dir."""
    lines = gzip.open(clip_bpe_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1:1 + _N_MERGES]]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [_BOS, _EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{clip_bpe_path()}: duplicate tokens in the BPE table")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                           encoding="utf-8")
    return vocab_file, merges_file


def _components(out: Path, unet_in_channels: int) -> dict:
    """The seeded random components the tiny pipelines share (the UNet's input channels differ:
    4 latent channels for text-to-image, 8 = latent + source-image latent for InstructPix2Pix,
    9 = latent + mask + masked-image latent for inpainting)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_file, merges_file = write_clip_tokenizer_files(out / "_bpe")
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77)
    torch.manual_seed(_SEED)
    unet = UNet2DConditionModel(
        sample_size=TINY_SD_SIZE // 2, in_channels=unet_in_channels, out_channels=4,
        layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
    )
    torch.manual_seed(_SEED + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, sample_size=TINY_SD_SIZE,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    torch.manual_seed(_SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                scheduler=scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


def _save(pipe, out: Path, what: str) -> None:
    pipe.save_pretrained(out, safe_serialization=True)
    for f in ("vocab.json", "merges.txt"):
        (out / "_bpe" / f).unlink()
    (out / "_bpe").rmdir()
    log.info("built tiny %s pipeline into %s", what, out)


def _build_tiny_sd(out: Path) -> None:
    """Create a tiny random StableDiffusionPipeline and `save_pretrained` it into `out`."""
    from diffusers import StableDiffusionPipeline

    _save(StableDiffusionPipeline(**_components(out, 4)), out, "Stable Diffusion")


def _build_tiny_ip2p(out: Path) -> None:
    """Create a tiny random StableDiffusionInstructPix2PixPipeline and `save_pretrained` it."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    _save(StableDiffusionInstructPix2PixPipeline(**_components(out, 8)), out, "InstructPix2Pix")


def _build_tiny_sd_inpaint(out: Path) -> None:
    """Create a tiny random StableDiffusionInpaintPipeline and `save_pretrained` it."""
    from diffusers import StableDiffusionInpaintPipeline

    _save(StableDiffusionInpaintPipeline(**_components(out, 9)), out, "Stable Diffusion inpainting")


def tiny_sd_inpaint_dir() -> Path:
    """Directory of the tiny random Stable Diffusion inpainting pipeline (built on first use)."""
    return build_once(TINY_SD_INPAINT_NAME, _build_tiny_sd_inpaint)


def tiny_ip2p_dir() -> Path:
    """Directory of the tiny random InstructPix2Pix pipeline (an instruction editor: 64 px in and
    out, built on first use, then cached)."""
    return build_once(TINY_IP2P_NAME, _build_tiny_ip2p)


def tiny_sd_dir() -> Path:
    """Directory of the tiny random Stable Diffusion pipeline (built on first use, then cached)."""
    return build_once(TINY_SD_NAME, _build_tiny_sd)

