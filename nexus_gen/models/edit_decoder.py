"""Nexus-Gen's editing decoder: the AR model's N predicted target embeddings and the M source-image
ViT embeddings [B, N|M, D] -> `embedding_merger` (one stock transformers `Qwen2_5_VLDecoderLayer`,
initialised from the AR model's text layer 0, over concat(target, source) with rescaled mRoPE
positions, bidirectional attention as the reference's, which applies no mask) -> projector
`RMSNorm(D) - Linear(D, H) - RMSNorm(H) - SiLU - Linear(H, J) - RMSNorm(J)` (keys
`embedding_merger.projector.0,1,2,4,5`; paper H = 16384, J = 4096) -> the N + M FLUX prompt tokens.

Positions, as the reference (`ImageEmbeddingMerger.get_position_ids` and the editing pipeline):
- merger mRoPE: a token grid of n x n merged tokens comes from g = 2n ViT patches per side
  (merge 2); its token (i, j) gets (t, h, w) = (0, i * B / g, j * B / g) with the constant base
  grid B = 72. Paper: target g = 18 -> rows 0, 4, ..., 32; source g = 36 -> 0, 2, ..., 34: both
  images span the same range. Target positions first, then source.
- FLUX text ids of the prompt tokens (not zeros here): target (0, i * Lh / g_t, j * Lw / g_t),
  source (1, i * Lh / g_s, j * Lw / g_s), with Lh x Lw the unpacked latent size (H/8 x W/8)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from nexus_gen.models.flow_matching import (REFERENCE_SHIFT, FluxDecoderBase, check_embeds,
                                            images_to_tensor, load_flux_parts, token_grid)
from nexus_gen.models.gen_decoder import profile_defaults

log = logging.getLogger(__name__)

MERGER_BASE_GRID = 72   # the reference's constant `base_grid = [1, 72, 72]`
MERGE_SIZE = 2          # Qwen2.5-VL's spatial_merge_size
EDIT_PROFILES: dict[str, dict[str, Any]] = {
    "tiny": dict(base="tiny", embed_dim=64, image_tokens=16, source_tokens=64, image_size=64,
                 steps=4, cfg=1.0, guidance=3.5),
    "paper": dict(base="paper", embed_dim=3584, image_tokens=81, source_tokens=324, image_size=512,
                  steps=50, cfg=1.0, guidance=3.5),
}
# Qwen2.5-VL-7B-Instruct's text layer geometry (for `paper` without an AR folder).
PAPER_TEXT_CONFIG = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                         num_key_value_heads=4, rms_norm_eps=1e-6, hidden_act="silu",
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [16, 24, 24]})
INIT_SEED = 0


def default_text_config(embed_dim: int) -> Any:
    """A Qwen2.5-VL text config for the merger layer when no AR folder is given: the 7B geometry
    for D = 3584, else D / 16 heads of 16 (2 KV heads), MLP 2D, mRoPE sections [2, 3, 3]."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig

    if embed_dim == PAPER_TEXT_CONFIG["hidden_size"]:
        return Qwen2_5_VLTextConfig(**PAPER_TEXT_CONFIG)
    if embed_dim % 32:
        raise ValueError(f"embed_dim {embed_dim}: without an AR folder the merger needs a multiple of 32")
    return Qwen2_5_VLTextConfig(hidden_size=embed_dim, intermediate_size=2 * embed_dim,
                                num_attention_heads=embed_dim // 16, num_key_value_heads=2,
                                rms_norm_eps=1e-6, hidden_act="silu",
                                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                 "mrope_section": [2, 3, 3]})


def text_config_from_dict(d: dict[str, Any]) -> Any:
    """A Qwen2_5_VLTextConfig from its saved dict."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig

    return Qwen2_5_VLTextConfig.from_dict(d)


def merger_position_ids(n_tokens: int, what: str, merge: int = MERGE_SIZE,
                        base_grid: int = MERGER_BASE_GRID) -> torch.Tensor:
    """[3, n_tokens] float mRoPE positions (t, h, w) of a square token grid (module docstring)."""
    n = token_grid(n_tokens, what)
    scale = base_grid / (n * merge)
    rows = torch.arange(n, dtype=torch.float32).repeat_interleave(n) * scale
    cols = torch.arange(n, dtype=torch.float32).repeat(n) * scale
    return torch.stack([torch.zeros(n * n), rows, cols])


def edit_text_ids(n_target: int, n_source: int, latent_h: int, latent_w: int,
                  merge: int = MERGE_SIZE) -> torch.Tensor:
    """[N + M, 3] FLUX text ids of the merged prompt tokens (module docstring)."""
    out = []
    for first, count, what in ((0.0, n_target, "target embeddings"), (1.0, n_source, "source embeddings")):
        n = token_grid(count, what)
        g = n * merge
        ids = torch.zeros(n, n, 3)
        ids[..., 0] = first
        ids[..., 1] = torch.arange(n)[:, None] * (latent_h / g)
        ids[..., 2] = torch.arange(n)[None, :] * (latent_w / g)
        out.append(ids.reshape(-1, 3))
    return torch.cat(out)


def build_projector(embed_dim: int, hidden: int, joint_dim: int, eps: float) -> nn.Sequential:
    """The reference projector: RMSNorm(D), Linear(D, H), RMSNorm(H), SiLU, Linear(H, J), RMSNorm(J)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRMSNorm

    return nn.Sequential(Qwen2_5_VLRMSNorm(embed_dim, eps=eps), nn.Linear(embed_dim, hidden),
                         Qwen2_5_VLRMSNorm(hidden, eps=eps), nn.SiLU(), nn.Linear(hidden, joint_dim),
                         Qwen2_5_VLRMSNorm(joint_dim, eps=eps))


class EmbeddingMerger(nn.Module):
    """`layers` (one Qwen2.5-VL decoder layer) + `projector`, keys as the reference's."""

    def __init__(self, text_config: Any, joint_dim: int, hidden: Optional[int] = None,
                 base_grid: int = MERGER_BASE_GRID, merge: int = MERGE_SIZE) -> None:
        super().__init__()
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (Qwen2_5_VLDecoderLayer,
                                                                        Qwen2_5_VLRotaryEmbedding)

        text_config._attn_implementation = "sdpa"
        self.text_config = text_config
        self.base_grid, self.merge = int(base_grid), int(merge)
        d = int(text_config.hidden_size)
        self.layers = nn.ModuleList([Qwen2_5_VLDecoderLayer(text_config, 0)])
        self.projector = build_projector(d, int(hidden or 4 * joint_dim), int(joint_dim),
                                         float(text_config.rms_norm_eps))
        self.rotary_emb = Qwen2_5_VLRotaryEmbedding(text_config)

    def position_ids(self, n_target: int, n_source: int) -> torch.Tensor:
        """[3, N + M] positions: target grid then source grid, rescaled to the base grid."""
        return torch.cat([merger_position_ids(n_target, "target embeddings", self.merge, self.base_grid),
                          merger_position_ids(n_source, "source embeddings", self.merge, self.base_grid)],
                         dim=1)

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """[B, N, D], [B, M, D] -> [B, N + M, J]."""
        h = torch.cat([target, source], dim=1)
        pos = self.position_ids(target.shape[1], source.shape[1]).to(h.device)
        pos = pos[:, None, :].expand(3, h.shape[0], -1)
        pe = self.rotary_emb(h, pos)
        for layer in self.layers:
            h = layer(h, attention_mask=None, position_embeddings=pe, is_causal=False)
        return self.projector(h)


AR_ALIASES = {"paper": "Qwen/Qwen2.5-VL-7B-Instruct"}


def _ar_file_getter(ar: Union[str, Path]) -> Callable[[str], Optional[Path]]:
    """name -> a local path of that file of the AR model (None when it has no such file): `tiny`
    is the tiny AR folder, `paper` Qwen2.5-VL-7B-Instruct, a folder itself, else a hub id (only
    the files asked for are fetched)."""
    if str(ar) == "tiny":
        from nexus_gen.models.tiny.ar_tiny import tiny_ar_dir

        ar = tiny_ar_dir()
    ar = AR_ALIASES.get(str(ar), ar)
    folder = Path(ar)
    if folder.is_dir():
        return lambda name: (folder / name) if (folder / name).is_file() else None

    def hub(name: str) -> Optional[Path]:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return Path(hf_hub_download(str(ar), name))
        except EntryNotFoundError:
            return None
        except Exception as e:  # offline, unknown repo, no access
            raise ValueError(f"AR model {ar!r}: not a folder, and its {name} cannot be had from the "
                             f"Hugging Face hub or cache (offline?): {e}") from e
    return hub


def read_ar_merger_init(ar: Union[str, Path]) -> tuple[Any, dict[str, torch.Tensor], dict]:
    """(text config, text layer 0 weights with layer-local keys, the `nexus_gen` geometry dict)
    of an AR model (`tiny`, `paper`, a folder or a hub id; the current transformers layout
    `model.language_model.layers.0.*` or the published 4.49 layout `model.layers.0.*`); only the
    shards holding layer 0 are read."""
    from safetensors import safe_open
    from transformers import AutoConfig

    get = _ar_file_getter(ar)
    config_file = get("config.json")
    if config_file is None:
        raise ValueError(f"AR model {ar}: no config.json")
    try:
        cfg = AutoConfig.from_pretrained(str(config_file.parent))
    except (OSError, ValueError) as e:
        raise ValueError(f"AR model {ar}: cannot read its config ({e})") from e
    text_config = getattr(cfg, "text_config", None)
    if text_config is None:
        raise ValueError(f"AR model {ar}: not a Qwen2.5-VL config (no text_config)")
    index = get("model.safetensors.index.json")
    if index is not None:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    else:
        single = get("model.safetensors")
        if single is None:
            raise ValueError(f"AR model {ar}: no model.safetensors(.index.json)")
        with safe_open(str(single), framework="pt") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}
    state: dict[str, torch.Tensor] = {}
    for prefix in ("model.language_model.layers.0.", "model.layers.0."):
        for name in (k for k in weight_map if k.startswith(prefix)):
            with safe_open(str(get(weight_map[name])), framework="pt") as f:
                state[name[len(prefix):]] = f.get_tensor(name)
        if state:
            break
    if not state:
        raise ValueError(f"AR model {ar}: no text layer 0 weights (model.language_model.layers.0.* "
                         "or model.layers.0.*)")
    return text_config, state, dict(getattr(cfg, "nexus_gen", None) or {})


class NexusGenEditingDecoder(FluxDecoderBase):
    """Embedding merger + projector + FLUX DiT (+ frozen VAE, pooled CLIP of "", scheduler)."""

    kind = "editing"
    trained_prefixes = ("embedding_merger.",)

    def __init__(self, config: dict[str, Any], dit: nn.Module, vae: nn.Module, scheduler: Any,
                 pooled_empty: torch.Tensor, negative_prompt: Optional[torch.Tensor] = None) -> None:
        super().__init__(config, dit, vae, scheduler, pooled_empty, negative_prompt)
        text_config = text_config_from_dict(config["merger_text_config"])
        self.embed_dim = int(text_config.hidden_size)
        if int(config["embed_dim"]) != self.embed_dim:
            raise ValueError(f"embed_dim {config['embed_dim']} != the merger layer's hidden size "
                             f"{self.embed_dim}")
        self.image_tokens, self.source_tokens = int(config["image_tokens"]), int(config["source_tokens"])
        token_grid(self.image_tokens, "image_tokens")
        token_grid(self.source_tokens, "source_tokens")
        hidden = int(config.get("projector_hidden") or 4 * self.joint_dim)
        self.config["projector_hidden"] = hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            self.embedding_merger = EmbeddingMerger(
                text_config, self.joint_dim, hidden, int(config.get("merger_base_grid", MERGER_BASE_GRID)),
                int(config.get("merge_size", MERGE_SIZE))).to(dit.device, dit.dtype)

    @classmethod
    def from_base(cls, profile: str = "tiny", base: Optional[str] = None,
                  ar: Optional[Union[str, Path]] = None, embed_dim: Optional[int] = None,
                  image_tokens: Optional[int] = None, source_tokens: Optional[int] = None,
                  image_size: Optional[int] = None, projector_hidden: Optional[int] = None,
                  dtype: torch.dtype = torch.float32) -> "NexusGenEditingDecoder":
        """A new decoder: the FLUX `base` DiT, the merger layer initialised from the AR model's
        text layer 0 when `ar` (an AR folder) is given (its config also gives D, N and M), else a
        seeded layer of the profile's geometry."""
        cfg = profile_defaults(EDIT_PROFILES, profile)
        layer0 = None
        if ar is not None:
            text_config, layer0, geo = read_ar_merger_init(ar)
            cfg.update(embed_dim=int(text_config.hidden_size),
                       image_tokens=int(geo.get("image_tokens", cfg["image_tokens"])),
                       source_tokens=int(geo.get("source_tokens", cfg["source_tokens"])),
                       ar=str(ar))
        cfg.update({k: v for k, v in dict(base=base, embed_dim=embed_dim, image_tokens=image_tokens,
                                          source_tokens=source_tokens, image_size=image_size,
                                          projector_hidden=projector_hidden).items() if v is not None})
        if ar is None:
            text_config = default_text_config(int(cfg["embed_dim"]))
        elif int(cfg["embed_dim"]) != int(text_config.hidden_size):
            raise ValueError(f"embed_dim {cfg['embed_dim']} does not match the AR model's hidden "
                             f"size {text_config.hidden_size} ({ar})")
        cfg["profile"] = profile
        cfg["merger_text_config"] = text_config.to_dict()
        parts = load_flux_parts(cfg["base"], with_dit=True, dtype=dtype)
        model = cls(cfg, **parts)
        if layer0 is not None:
            layer = model.embedding_merger.layers[0]
            missing, unexpected = layer.load_state_dict(layer0, strict=False)
            if missing or unexpected:
                raise ValueError(f"AR folder {ar}: layer 0 does not fit the merger layer (missing "
                                 f"{missing[:5]}, unexpected {unexpected[:5]})")
            log.info("merger layer initialised from %s text layer 0", ar)
        return model

    def prompt(self, predicted: torch.Tensor, source: torch.Tensor, height: int, width: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(merger(predicted, source) [B, N + M, J], text ids [N + M, 3]) for an H x W output."""
        predicted = check_embeds(predicted, "predicted", self.embed_dim, self.image_tokens)
        source = check_embeds(source, "source", self.embed_dim, self.source_tokens)
        if predicted.shape[0] != source.shape[0]:
            raise ValueError(f"{predicted.shape[0]} predicted but {source.shape[0]} source embeddings")
        lh, lw = self._latent_size(height, width)
        dtype = next(self.embedding_merger.parameters()).dtype
        p = self.embedding_merger(predicted.to(self.dit.device, dtype), source.to(self.dit.device, dtype))
        ids = edit_text_ids(self.image_tokens, self.source_tokens, lh, lw,
                            int(self.config.get("merge_size", MERGE_SIZE))).to(p.device, self.dit.dtype)
        return p, ids

    def training_loss(self, predicted: torch.Tensor, source: torch.Tensor,
                      target_images: Union[torch.Tensor, list],
                      generator: Optional[torch.Generator] = None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow-matching loss of the edited images (PIL list, or [B, 3, S, S] in [-1, 1])."""
        s = int(self.config["image_size"])
        x = target_images if isinstance(target_images, torch.Tensor) else images_to_tensor(target_images, s, s)
        prompt, txt_ids = self.prompt(predicted, source, x.shape[-2], x.shape[-1])
        if x.shape[0] != prompt.shape[0]:
            raise ValueError(f"{x.shape[0]} target images for {prompt.shape[0]} embeddings")
        loss = self.flow_loss(prompt, txt_ids, x.to(self.dit.device), generator)
        return loss, {"mse": float(loss.detach())}

    forward = training_loss  # so DDP / peft wrappers see the loss as the forward pass

    @torch.no_grad()
    def edit(self, predicted: torch.Tensor, source: torch.Tensor, height: Optional[int] = None,
             width: Optional[int] = None, steps: Optional[int] = None, cfg: Optional[float] = None,
             guidance: Optional[float] = None, seed: int = 0,
             shift: Optional[float] = REFERENCE_SHIFT) -> list:
        """Edited images from predicted [B, N, D] + source [B, M, D] embeddings (cfg 1.0 by
        default, as the reference's editing); image i uses seed + i."""
        c = self.config
        h, w = height or c["image_size"], width or c["image_size"]
        prompt, txt_ids = self.prompt(predicted, source, h, w)
        return self.sample(prompt, txt_ids, h, w, steps or c["steps"], c["cfg"] if cfg is None else cfg,
                           c["guidance"] if guidance is None else guidance, seed, shift)

    generate = edit
