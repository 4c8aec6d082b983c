"""A tiny random-init ControlNet and a tiny IP-Adapter matching the tiny Stable Diffusion UNet
(nexus_gen/models/tiny/stable_diffusion.py), for the offline `tiny` profile of the imagepulse
backend's InstantStyle stage (ControlNet canny + IP-Adapter style reference).

- ControlNet: `ControlNetModel` with the tiny UNet's blocks, saved with `save_pretrained`, loaded
  back by `ControlNetModel.from_pretrained`. A fresh ControlNet's output convolutions are zero
  (it starts as a no-op); here they are random too, so the control image really changes the
  output and a test can see the control path run.
- IP-Adapter: a folder laid out like `h94/IP-Adapter` (`ip-adapter.safetensors` with the
  `image_proj.*` and `ip_adapter.<n>.to_{k,v}_ip.weight` tensors, and an `image_encoder/`
  CLIPVisionModelWithProjection), loaded by diffusers' own `load_ip_adapter`."""
from __future__ import annotations

from pathlib import Path

from nexus_gen.models.cache import build_once

TINY_CONTROLNET_NAME = "tiny-controlnet-sd"
TINY_IP_ADAPTER_NAME = "tiny-ip-adapter-sd"
TINY_IP_ADAPTER_WEIGHT = "ip-adapter.safetensors"
_SEED = 0
_IMAGE_EMBED_DIM = 32
_CLIP_IMAGE_SIZE = 32


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    from nexus_gen.models.tiny.stable_diffusion import tiny_sd_dir

    return UNet2DConditionModel.from_pretrained(tiny_sd_dir(), subfolder="unet")


def _build_controlnet(out: Path) -> None:
    import torch
    from diffusers import ControlNetModel

    unet = _tiny_unet()
    c = unet.config
    torch.manual_seed(_SEED)
    net = ControlNetModel(
        in_channels=c.in_channels, down_block_types=tuple(c.down_block_types),
        block_out_channels=tuple(c.block_out_channels), layers_per_block=c.layers_per_block,
        norm_num_groups=c.norm_num_groups, cross_attention_dim=c.cross_attention_dim,
        attention_head_dim=c.attention_head_dim,
        # the control image is at pixel size, latents at 1/2 (the tiny VAE): one stride-2 step
        conditioning_embedding_out_channels=(8, 16))
    with torch.no_grad():
        zero_init = [*net.controlnet_down_blocks, net.controlnet_mid_block,
                     net.controlnet_cond_embedding.conv_out]
        for m in zero_init:
            torch.nn.init.normal_(m.weight, std=0.2)
            torch.nn.init.normal_(m.bias, std=0.2)
    net.eval().save_pretrained(out, safe_serialization=True)


def _build_ip_adapter(out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = _tiny_unet()
    cross = unet.config.cross_attention_dim
    torch.manual_seed(_SEED)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=_CLIP_IMAGE_SIZE, patch_size=8, projection_dim=_IMAGE_EMBED_DIM))
    encoder.eval().save_pretrained(out / "image_encoder", safe_serialization=True)
    g = torch.Generator().manual_seed(_SEED + 1)
    state = {"image_proj.proj.weight": torch.randn(4 * cross, _IMAGE_EMBED_DIM, generator=g) * 0.2,
             "image_proj.proj.bias": torch.zeros(4 * cross),
             "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    # diffusers numbers the cross-attention processors 1, 3, 5, ... in `attn_processors` order
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = _hidden_size(unet.config, name)
        for kv in ("k", "v"):
            state[f"ip_adapter.{key}.to_{kv}_ip.weight"] = torch.randn(hidden, cross, generator=g) * 0.2
        key += 2
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / TINY_IP_ADAPTER_WEIGHT))


def _hidden_size(config, name: str) -> int:
    if name.startswith("mid_block"):
        return config.block_out_channels[-1]
    block = int(name.split(".")[1])
    if name.startswith("up_blocks"):
        return list(reversed(config.block_out_channels))[block]
    return config.block_out_channels[block]


def tiny_controlnet_dir() -> Path:
    """The tiny ControlNet `from_pretrained` folder (for the tiny SD UNet), built on first use."""
    return build_once(TINY_CONTROLNET_NAME, _build_controlnet)


def tiny_ip_adapter_dir() -> Path:
    """The tiny IP-Adapter folder (`ip-adapter.safetensors` + `image_encoder/`), built on first use."""
    return build_once(TINY_IP_ADAPTER_NAME, _build_ip_adapter)
