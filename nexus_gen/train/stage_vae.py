"""The VAE training stage: a FLUX-layout `AutoencoderKL` (nexus_gen.models.scenes_vae) learns to
reconstruct every image of the unified samples (all tasks), so the decoders' DiTs work in a latent
that means something (a random VAE's latents do not).

Loss: `l1_weight * L1 + mse_weight * MSE` between the image and the decoded posterior sample (in
[-1, 1], per pixel), `+ hard_weight *` the mean L1 of each image's worst `hard_fraction` of pixels
(online hard-pixel mining: small objects and outlines, which a plain mean lets the background
outvote), plus `kl_weight * KL` of the posterior to N(0, 1) **averaged over latent
elements** (not summed: LDM's kl_weight 1e-6 on sums is ~1e-10 on these means; 1e-4 here keeps
the latent's scale in check without blurring the shapes).

Latent normalisation (decided here): `scaling_factor` / `shift_factor` are measured from the data,
as FLUX's were: shift = the mean and scaling = 1 / the standard deviation of the posterior means
(the latents the decoders encode: `latent_dist.mode()`), over all elements (FLUX's are scalars).
They are running statistics of the training batches (a plain average over the first 100 batches,
then an exponential one with momentum 0.99, so they follow the last ~100 batches of a model that
is still changing), kept as persistent buffers: checkpoints carry them and a resumed run ends
with the same numbers. A number given in the config fixes the factor instead.

Config (`model:` / `data:` of a train config):

    model: {init: tiny | a VAE folder (or a folder holding vae/), size: px, latent_channels,
            block_out_channels: [..] (3 blocks: x4, 4 blocks: x8), layers_per_block,
            norm_num_groups, kl_weight, l1_weight, mse_weight, hard_weight, hard_fraction,
            scaling_factor: null (from data) | number, shift_factor: null | number}
    data:  {fit: crop (cover + centre crop) | resize (stretch),
            crop: null | px (train on a crop of this side, its place fixed by the sample id: the
                  network is convolutional, so it then encodes whole `size` images)}

save() writes `OUT/vae/` (AutoencoderKL.save_pretrained, safetensors, with the factors in its
config) and `OUT/vae_stats.json`."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import nn

from nexus_gen.train.stage_api import Batch, Example, TrainStage

log = logging.getLogger(__name__)

ARCH_KEYS = ("latent_channels", "block_out_channels", "layers_per_block", "norm_num_groups")
MODEL_KEYS: dict[str, Any] = {
    "init": "tiny", "size": 64, "latent_channels": 16, "block_out_channels": [16, 32, 64],
    "layers_per_block": 1, "norm_num_groups": 8, "kl_weight": 1e-4, "l1_weight": 1.0,
    "mse_weight": 0.0, "hard_weight": 0.0, "hard_fraction": 0.05, "scaling_factor": None, "shift_factor": None}
DATA_KEYS: dict[str, Any] = {"fit": "crop", "crop": None}
STATS_WARMUP = 100      # batches averaged plainly before the running statistics turn exponential
STATS_MOMENTUM = 0.99
STATS_FILE = "vae_stats.json"


def _positive_int(key: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"model.{key}: must be a positive integer, got {v!r}")
    return v


def _number(key: str, v: Any, minimum: float = 0.0, strict: bool = False) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) \
            or (v <= minimum if strict else v < minimum):
        raise ValueError(f"model.{key}: must be a finite number {'>' if strict else '>='} {minimum}, got {v!r}")
    return float(v)


def fit_images(images: Sequence[Any], size: int, fit: str = "crop") -> torch.Tensor:
    """PIL images -> [B, 3, size, size] in [-1, 1]: `crop` scales to cover and centre-crops
    (bicubic, antialiased), `resize` stretches."""
    from PIL import Image, ImageOps

    out = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = (ImageOps.fit(im, (size, size), Image.BICUBIC) if fit == "crop"
                  else im.resize((size, size), Image.BICUBIC))
        arr = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        out.append(arr.float() / 127.5 - 1.0)
    return torch.stack(out)


class VAETrainModel(nn.Module):
    """The AutoencoderKL being trained (`vae`) and the running statistics of its posterior means
    (persistent float64 buffers: mean, mean of squares, batches seen)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.register_buffer("latent_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("latent_sq", torch.zeros((), dtype=torch.float64))
        self.register_buffer("latent_batches", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def update_stats(self, z: torch.Tensor) -> None:
        """Fold one batch of posterior means into the running statistics."""
        z = z.detach().double()
        n = int(self.latent_batches) + 1
        w = 1.0 / n if n <= STATS_WARMUP else 1.0 - STATS_MOMENTUM
        self.latent_mean.mul_(1 - w).add_(w * z.mean())
        self.latent_sq.mul_(1 - w).add_(w * (z * z).mean())
        self.latent_batches.fill_(n)

    def latent_std(self) -> float:
        """The running standard deviation of the posterior means (over all elements)."""
        return float((self.latent_sq - self.latent_mean ** 2).clamp_min(1e-12).sqrt())

    def forward(self, images: torch.Tensor, weights: tuple[float, ...]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, parts) of a batch of images in [-1, 1]: reconstruction of a posterior sample.
        `weights`: (l1, mse, kl[, hard, hard_fraction])."""
        l1_w, mse_w, kl_w = weights[:3]
        hard_w, hard_frac = (weights[3], weights[4]) if len(weights) > 3 else (0.0, 0.0)
        post = self.vae.encode(images).latent_dist
        if self.training:
            self.update_stats(post.mean)
        rec = self.vae.decode(post.sample(), return_dict=False)[0]
        l1 = (rec - images).abs().mean()
        mse = ((rec - images) ** 2).mean()
        kl = 0.5 * (post.mean ** 2 + post.var - 1.0 - post.logvar).mean()
        loss = l1_w * l1 + mse_w * mse + kl_w * kl
        parts = {"l1": float(l1.detach()), "mse": float(mse.detach()), "kl": float(kl.detach())}
        if hard_w > 0:
            per_pixel = (rec - images).abs().mean(dim=1).flatten(1)  # [B, H*W]
            k = max(1, int(round(hard_frac * per_pixel.shape[1])))
            hard = per_pixel.topk(k, dim=1).values.mean()
            loss = loss + hard_w * hard
            parts["hard"] = float(hard.detach())
        parts["total"] = float(loss.detach())
        return loss, parts


class VAEStage(TrainStage):
    """Stage `vae`: a FLUX-layout AutoencoderKL on every image of the samples (L1 + MSE + KL)."""

    name = "vae"
    tasks = ("understanding", "generation", "editing")

    def __init__(self, model_cfg: dict[str, Any], data_cfg: dict[str, Any]) -> None:
        super().__init__(model_cfg, data_cfg)
        for section, given, allowed in (("model", self.model_cfg, MODEL_KEYS), ("data", self.data_cfg, DATA_KEYS)):
            for k in given:
                if k not in allowed:
                    raise ValueError(f"{section}.{k}: unknown key for stage vae; allowed: {', '.join(allowed)}")
        m = self.m = {**MODEL_KEYS, **self.model_cfg}
        d = {**DATA_KEYS, **self.data_cfg}
        self.fit, self.crop = d["fit"], d["crop"]
        if self.fit not in ("crop", "resize"):
            raise ValueError(f"data.fit: {self.fit!r} is not one of crop, resize")
        init = m["init"]
        if not isinstance(init, (str, Path)) or not str(init):
            raise ValueError(f"model.init: 'tiny' or a VAE folder, got {init!r}")
        if str(init) != "tiny":  # the architecture is the folder's; given keys must agree with it
            try:
                from nexus_gen.models.scenes_vae import read_vae_config

                folder_cfg = read_vae_config(init)
            except (ValueError, OSError) as e:
                raise ValueError(f"model.init: {e}") from None
            for k in ARCH_KEYS:
                theirs = folder_cfg[k]
                if k in self.model_cfg and json.dumps(self.model_cfg[k]) != json.dumps(theirs):
                    raise ValueError(f"model.{k} = {self.model_cfg[k]!r} differs from the init VAE's {theirs!r} "
                                     f"({init}); drop the key or use init: tiny")
                m[k] = theirs
        for k in ("size", "latent_channels", "layers_per_block", "norm_num_groups"):
            _positive_int(k, m[k])
        boc = m["block_out_channels"]
        if not isinstance(boc, (list, tuple)) or not boc:
            raise ValueError(f"model.block_out_channels: a non-empty list of channel counts, got {boc!r}")
        for c in boc:
            _positive_int("block_out_channels", c)
            if c % m["norm_num_groups"]:
                raise ValueError(f"model.block_out_channels: {c} is not a multiple of model.norm_num_groups "
                                 f"{m['norm_num_groups']} (group norm)")
        from nexus_gen.models.scenes_vae import vae_compression

        self.compression = vae_compression(boc)
        if m["size"] % self.compression:
            raise ValueError(f"model.size: {m['size']} is not a multiple of the compression factor "
                             f"{self.compression} (2 ** (len(block_out_channels) - 1))")
        for k in ("kl_weight", "l1_weight", "mse_weight", "hard_weight"):
            _number(k, m[k])
        if not 0 < _number("hard_fraction", m["hard_fraction"], strict=True) <= 1:
            raise ValueError(f"model.hard_fraction: must be in (0, 1], got {m['hard_fraction']!r}")
        if self.crop is not None:
            if isinstance(self.crop, bool) or not isinstance(self.crop, int) or not 0 < self.crop <= m["size"] \
                    or self.crop % self.compression:
                raise ValueError(f"data.crop: {self.crop!r} must be null or a side in px <= model.size "
                                 f"{m['size']} and a multiple of the compression factor {self.compression}")
        if m["l1_weight"] + m["mse_weight"] <= 0:
            raise ValueError("model.l1_weight / model.mse_weight: at least one must be > 0 (no reconstruction loss)")
        if m["scaling_factor"] is not None:
            _number("scaling_factor", m["scaling_factor"], strict=True)
        if m["shift_factor"] is not None:
            _number("shift_factor", m["shift_factor"], minimum=-np.inf)
        self.weights = (float(m["l1_weight"]), float(m["mse_weight"]), float(m["kl_weight"]),
                        float(m["hard_weight"]), float(m["hard_fraction"]))

    @property
    def latent_size(self) -> int:
        """The latent's side at the configured image size."""
        return self.m["size"] // self.compression

    def build_model(self, device: torch.device) -> torch.nn.Module:
        """The VAE (fresh seeded `tiny`, or the `init` folder's) inside a `VAETrainModel`."""
        from nexus_gen.models.scenes_vae import load_scenes_vae, new_scenes_vae

        m = self.m
        if str(m["init"]) == "tiny":
            vae = new_scenes_vae(m["size"], m["latent_channels"], m["block_out_channels"],
                                 m["layers_per_block"], m["norm_num_groups"])
        else:
            vae = load_scenes_vae(m["init"])
        vae.requires_grad_(True)
        return VAETrainModel(vae).to(device)

    def example(self, sample: dict[str, Any]) -> Union[Example, str]:
        from PIL import Image

        if not sample.get("images"):
            return "vae: the sample has no image"
        ims = []
        try:
            for im in sample["images"]:
                with Image.open(io.BytesIO(im["bytes"]) if im.get("bytes") is not None else im["path"]) as f:
                    ims.append(f.convert("RGB"))
        except (OSError, ValueError, TypeError) as e:
            return f"vae: unreadable image ({e})"
        images = fit_images(ims, self.m["size"], self.fit)
        if self.crop is not None and self.crop < self.m["size"]:
            import xxhash

            r = xxhash.xxh3_64_intdigest(str(sample["id"]).encode())
            span = self.m["size"] - self.crop + 1
            y, x = r % span, (r // span) % span
            images = images[:, :, y:y + self.crop, x:x + self.crop].contiguous()
        return {"id": sample["id"], "images": images}

    def collate(self, examples: list[Example]) -> Batch:
        return {"images": torch.cat([e["images"] for e in examples]), "ids": [e["id"] for e in examples]}

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        return model(batch["images"].to(device), self.weights)

    def factors(self, model: VAETrainModel) -> tuple[float, float]:
        """(scaling_factor, shift_factor): the config's, else from the running statistics."""
        m = self.m
        if (m["scaling_factor"] is None or m["shift_factor"] is None) and int(model.latent_batches) == 0:
            raise ValueError("the latent statistics are empty (no training batch seen): cannot measure "
                             "scaling_factor / shift_factor; train first or fix them in the config")
        scale = m["scaling_factor"] if m["scaling_factor"] is not None else 1.0 / model.latent_std()
        shift = m["shift_factor"] if m["shift_factor"] is not None else float(model.latent_mean)
        return round(float(scale), 6), round(float(shift), 6)

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        """OUT/vae/ (an AutoencoderKL folder with the measured factors) + OUT/vae_stats.json."""
        model = getattr(model, "module", model)
        out_dir = Path(out_dir)
        scale, shift = self.factors(model)
        vae = model.vae
        vae.register_to_config(scaling_factor=scale, shift_factor=shift)
        vae.save_pretrained(str(out_dir / "vae"), safe_serialization=True)
        stats = {"scaling_factor": scale, "shift_factor": shift, "latent_mean": float(model.latent_mean),
                 "latent_std": model.latent_std(), "stats_batches": int(model.latent_batches),
                 "factors_from": {"scaling_factor": "config" if self.m["scaling_factor"] is not None else "data",
                                  "shift_factor": "config" if self.m["shift_factor"] is not None else "data"},
                 "size": self.m["size"], "compression": self.compression,
                 "latent_shape": [int(self.m["latent_channels"]), self.latent_size, self.latent_size]}
        (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        log.info("VAE x%d saved to %s (scaling %.4f, shift %.4f)", self.compression, out_dir / "vae", scale, shift)
