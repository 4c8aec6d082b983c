"""Nexus-Gen's generation decoder: image embeddings [B, N, D] from the AR model -> an adapter
`Linear(D, J) - LayerNorm(J) - ReLU - Linear(J, J) - LayerNorm(J)` (keys `adapter.0,1,3,4`, as the
reference's `generation_decoder.bin`) whose output **replaces the T5 prompt embedding** of a FLUX
DiT (diffusers `FluxTransformer2DModel`, `dit`), with the pooled CLIP embedding of "" and zero text
ids; trained with flow matching, VAE and CLIP frozen (`nexus_gen.models.flow_matching`)."""
from __future__ import annotations

import logging
from typing import Any, Optional, Union

import torch
from torch import nn

from nexus_gen.models.flow_matching import (REFERENCE_SHIFT, FluxDecoderBase, check_embeds,
                                            images_to_tensor, load_flux_parts, zero_text_ids)

log = logging.getLogger(__name__)

# Profiles: the FLUX base, D (the AR hidden size), the decoder resolution and sampling defaults.
GEN_PROFILES: dict[str, dict[str, Any]] = {
    "tiny": dict(base="tiny", embed_dim=64, image_size=64, steps=4, cfg=3.0, guidance=3.5),
    "paper": dict(base="paper", embed_dim=3584, image_size=512, steps=50, cfg=3.0, guidance=3.5),
}
INIT_SEED = 0


def profile_defaults(profiles: dict[str, dict[str, Any]], profile: str) -> dict[str, Any]:
    """The settings of a named profile (a ValueError listing the profiles otherwise)."""
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(profiles)}")
    return dict(profiles[profile])


def build_adapter(embed_dim: int, joint_dim: int) -> nn.Sequential:
    """The reference adapter: Linear(D, J), LayerNorm(J), ReLU, Linear(J, J), LayerNorm(J)."""
    return nn.Sequential(nn.Linear(embed_dim, joint_dim), nn.LayerNorm(joint_dim), nn.ReLU(),
                         nn.Linear(joint_dim, joint_dim), nn.LayerNorm(joint_dim))


class NexusGenGenerationDecoder(FluxDecoderBase):
    """Adapter + FLUX DiT (+ frozen VAE, pooled CLIP of "", scheduler)."""

    kind = "generation"
    trained_prefixes = ("adapter.",)

    def __init__(self, config: dict[str, Any], dit: nn.Module, vae: nn.Module, scheduler: Any,
                 pooled_empty: torch.Tensor, negative_prompt: Optional[torch.Tensor] = None) -> None:
        super().__init__(config, dit, vae, scheduler, pooled_empty, negative_prompt)
        self.embed_dim = int(config["embed_dim"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            self.adapter = build_adapter(self.embed_dim, self.joint_dim).to(dit.device, dit.dtype)

    @classmethod
    def from_base(cls, profile: str = "tiny", base: Optional[str] = None,
                  embed_dim: Optional[int] = None, image_size: Optional[int] = None,
                  dtype: torch.dtype = torch.float32) -> "NexusGenGenerationDecoder":
        """A new decoder: the DiT of the FLUX `base` (default: the profile's; `paper` =
        FLUX.1-dev) and a freshly initialised (seeded) adapter."""
        cfg = profile_defaults(GEN_PROFILES, profile)
        cfg.update({k: v for k, v in dict(base=base, embed_dim=embed_dim, image_size=image_size).items()
                    if v is not None})
        cfg["profile"] = profile
        parts = load_flux_parts(cfg["base"], with_dit=True, dtype=dtype)
        return cls(cfg, **parts)

    def prompt(self, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(adapter(embeds) [B, N, J], zero text ids [N, 3])."""
        embeds = check_embeds(embeds, "embeds", self.embed_dim)
        p = self.adapter(embeds.to(self.dit.device, next(self.adapter.parameters()).dtype))
        return p, zero_text_ids(p.shape[1], p.device, self.dit.dtype)

    def training_loss(self, embeds: torch.Tensor, images: Union[torch.Tensor, list],
                      generator: Optional[torch.Generator] = None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow-matching loss of target images (PIL list, or [B, 3, S, S] in [-1, 1] at the decoder
        resolution) given their embeddings [B, N, D]."""
        s = int(self.config["image_size"])
        x = images if isinstance(images, torch.Tensor) else images_to_tensor(images, s, s)
        prompt, txt_ids = self.prompt(embeds)
        if x.shape[0] != prompt.shape[0]:
            raise ValueError(f"{x.shape[0]} images for {prompt.shape[0]} embeddings")
        loss = self.flow_loss(prompt, txt_ids, x.to(self.dit.device), generator)
        return loss, {"mse": float(loss.detach())}

    forward = training_loss  # so DDP / peft wrappers see the loss as the forward pass

    @torch.no_grad()
    def generate(self, embeds: torch.Tensor, height: Optional[int] = None,
                 width: Optional[int] = None, steps: Optional[int] = None,
                 cfg: Optional[float] = None, guidance: Optional[float] = None, seed: int = 0,
                 shift: Optional[float] = REFERENCE_SHIFT) -> list:
        """Images from embeddings [B, N, D] (defaults from the profile: paper 512 px, 50 steps,
        cfg 3.0, embedded guidance 3.5); image i uses seed + i."""
        c = self.config
        prompt, txt_ids = self.prompt(embeds)
        return self.sample(prompt, txt_ids, height or c["image_size"], width or c["image_size"],
                           steps or c["steps"], c["cfg"] if cfg is None else cfg,
                           c["guidance"] if guidance is None else guidance, seed, shift)
