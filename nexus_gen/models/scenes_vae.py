"""A FLUX-layout VAE (diffusers `AutoencoderKL`, 16 latent channels, no quant convs, a scalar
`scaling_factor` / `shift_factor` as FLUX.1's) built small for the scenes world, and the FLUX
`base` folder the Nexus-Gen decoders load it from.

The compression factor is `2 ** (len(block_out_channels) - 1)` (diffusers' encoder downsamples
in every block but the last): 3 blocks -> 4x (64 px -> a 16 x 16 latent), 4 blocks -> 8x (8 x 8).
A decoder's `base` is a diffusers FLUX folder (`transformer/`, `vae/`, `text_encoder/`,
`tokenizer/`, `scheduler/`); `assemble_flux_base` copies one with its `vae/` replaced by a
trained one, so the decoders use the scenes VAE through their ordinary `base` argument."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

log = logging.getLogger(__name__)

FLUX_BASE_PARTS = ("transformer", "text_encoder", "tokenizer", "scheduler")
INIT_SEED = 0


def vae_compression(block_out_channels: Sequence[int]) -> int:
    """Pixels per latent pixel of an AutoencoderKL with these blocks."""
    return 2 ** (len(block_out_channels) - 1)


def new_scenes_vae(size: int, latent_channels: int, block_out_channels: Sequence[int],
                   layers_per_block: int, norm_num_groups: int, seed: int = INIT_SEED) -> Any:
    """A random-init (seeded, caller's RNG untouched) FLUX-layout AutoencoderKL."""
    from diffusers import AutoencoderKL

    # FLUX.1-dev's latent normalisation until the stage measures this VAE's own
    from nexus_gen.models.tiny.flux_tiny import FLUX_VAE_SCALING, FLUX_VAE_SHIFT

    n = len(block_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=int(latent_channels),
            layers_per_block=int(layers_per_block), block_out_channels=tuple(int(c) for c in block_out_channels),
            norm_num_groups=int(norm_num_groups), sample_size=int(size),
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            scaling_factor=FLUX_VAE_SCALING, shift_factor=FLUX_VAE_SHIFT,
            use_quant_conv=False, use_post_quant_conv=False)


def vae_folder(folder: Union[str, Path]) -> Path:
    """The AutoencoderKL folder of `folder`: itself, or its `vae/` (a trained stage's output or a
    FLUX base). ValueError when neither holds a config.json."""
    folder = Path(folder)
    for cand in (folder / "vae", folder):
        if (cand / "config.json").is_file():
            return cand
    raise ValueError(f"{folder} holds no AutoencoderKL (no config.json in it or in its vae/)")


def read_vae_config(folder: Union[str, Path]) -> dict[str, Any]:
    """The config.json of a VAE folder (see `vae_folder`), checked to be an AutoencoderKL."""
    path = vae_folder(folder) / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.get("_class_name") != "AutoencoderKL":
        raise ValueError(f"{path}: a {cfg.get('_class_name')!r}, not an AutoencoderKL")
    return cfg


def load_scenes_vae(folder: Union[str, Path], dtype: torch.dtype = torch.float32) -> Any:
    """AutoencoderKL.from_pretrained of a VAE folder (itself or its `vae/`), in eval mode."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(vae_folder(folder)), torch_dtype=dtype).eval()


@torch.no_grad()
def reconstruct(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> decode(posterior mean) clamped to [-1, 1]: what a decoder's
    perfect latent would give (the shift/scale normalisation cancels out)."""
    z = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()
    return vae.decode(z, return_dict=False)[0].clamp(-1, 1)


def _resolve_base(base: str) -> Path:
    from nexus_gen.models.flow_matching import resolve_flux_base

    p = Path(resolve_flux_base(base))  # `tiny` -> the tiny FLUX folder (built once)
    if not p.is_dir():
        raise ValueError(f"base {base!r}: not a local folder (download a hub FLUX first, or use 'tiny')")
    return p


DIT_SIZE_KEYS = ("num_layers", "num_single_layers", "num_attention_heads", "attention_head_dim", "axes_dims_rope")


def assemble_flux_base(vae: Union[str, Path], out: Union[str, Path], base: str = "tiny",
                       link: bool = False, dit: Optional[dict[str, Any]] = None) -> Path:
    """A FLUX `base` folder at `out`: everything of `base` but its vae/ (transformer/, text_encoder/,
    tokenizer/, scheduler/, T5's text_encoder_2/ + tokenizer_2/ when it has them; copied, or
    symlinked with `link`) and `vae` (a trained VAE folder or its parent) as vae/.
    `dit`: a fresh seeded DiT instead of the base's, its size keys (DIT_SIZE_KEYS) over the base
    DiT's config (its in / text / pooled dims kept) -- for a random-init base whose DiT is too
    small to learn; never for a pre-trained one, whose weights it would throw away.
    Checks the VAE fits the DiT (latent_channels x 4 = the DiT's in_channels, FLUX's 2x2
    packing) before writing. `out` must not exist or be empty."""
    src = _resolve_base(base)
    vae_dir = vae_folder(vae)
    vcfg = read_vae_config(vae_dir)
    missing = [p for p in FLUX_BASE_PARTS if not (src / p).is_dir()]
    if missing:
        raise ValueError(f"base {base!r} ({src}) is not a diffusers FLUX folder: no {', '.join(missing)}/")
    base_dit = json.loads((src / "transformer" / "config.json").read_text(encoding="utf-8"))
    if int(base_dit["in_channels"]) != 4 * int(vcfg["latent_channels"]):
        raise ValueError(f"vae {vae_dir}: latent_channels {vcfg['latent_channels']} does not fit the DiT of "
                         f"{src} (in_channels {base_dit['in_channels']} = 4 x latent channels, 2x2 packing)")
    if dit:
        bad = sorted(set(dit) - set(DIT_SIZE_KEYS))
        if bad:
            raise ValueError(f"dit: {', '.join(bad)} cannot be changed; allowed: {', '.join(DIT_SIZE_KEYS)}")
        head = int(dit.get("attention_head_dim", base_dit["attention_head_dim"]))
        rope = [int(v) for v in (dit.get("axes_dims_rope") or dit_rope(head))]
        if sum(rope) != head:
            raise ValueError(f"dit: axes_dims_rope {rope} must sum to attention_head_dim {head}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose a new folder for the base")
    out.mkdir(parents=True, exist_ok=True)
    if dit:
        _new_dit(src, out / "transformer", {**dit, "axes_dims_rope": rope})
    for item in sorted(src.iterdir()):  # every part but vae/ (also text_encoder_2/, tokenizer_2/ when there)
        if item.name == "vae" or item.name.startswith(".") or (dit and item.name == "transformer"):
            continue
        if link:
            (out / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
        elif item.is_dir():
            shutil.copytree(item, out / item.name)
        else:
            shutil.copy2(item, out / item.name)
    shutil.copytree(vae_dir, out / "vae")
    log.info("FLUX base %s: %s with the VAE of %s (x%d)", out, src, vae_dir,
             vae_compression(vcfg["block_out_channels"]))
    return out


def dit_rope(head_dim: int) -> list[int]:
    """FLUX's rotary split of a head (16, 56, 56 of 128) scaled to `head_dim`: (t, h, w), even sizes."""
    t = max(2, 2 * round(head_dim * 16 / 128 / 2))
    h = 2 * ((head_dim - t) // 4)
    return [t, h, head_dim - t - h]


def _new_dit(src: Path, out: Path, size: dict[str, Any]) -> None:
    """A FluxTransformer2DModel with `src`'s DiT config and `size` over it, seeded (INIT_SEED)."""
    from diffusers import FluxTransformer2DModel

    cfg = {k: v for k, v in json.loads((src / "transformer" / "config.json").read_text(encoding="utf-8")).items()
           if not k.startswith("_")}
    cfg.update(size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        FluxTransformer2DModel(**cfg).save_pretrained(str(out), safe_serialization=True)
