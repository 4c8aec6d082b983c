"""What the Nexus-Gen generation and editing decoders share: FLUX latent packing and position ids,
the rectified-flow training loss, the seeded sampler (diffusers' FlowMatchEulerDiscreteScheduler,
true CFG + FLUX's embedded guidance), image <-> tensor conversion, the frozen FLUX parts (VAE,
pooled CLIP of the empty prompt, scheduler) and the decoder folder format.

Training follows the reference trainers (DiffSynth-Studio's `FlowMatchScheduler` with
`set_timesteps(1000, training=True)`): sigma is drawn **uniformly** from the 1000 values of
`linspace(1, 0.003/1.002, 1000)` shifted with shift 3.0 (`s' = 3s / (1 + 2s)`), `x_t = (1-s) x0 + s
noise`, target `noise - x0`, MSE weighted per sample by DiffSynth's training weight of that timestep
(a Gaussian bump over the timestep index, normalised to mean 1 over the 1000 values), embedded
guidance 3.5. Sampling defaults to the same schedule (the reference's: `linspace(1, 0.003/1.002,
steps)`, shift 3.0, passed to the diffusers scheduler as `sigmas` + `mu = ln 3`, which its
exponential time shift turns into exactly `3s / (1 + 2s)`); `shift=None` gives diffusers'
FluxPipeline schedule instead (`linspace(1, 1/steps, steps)`, resolution-dependent `mu`).

True CFG (cfg != 1): the reference's negative branch is the empty negative prompt encoded as any
FLUX prompt (DiffSynth's `FluxPrompter.encode_prompt("", positive=False, t5_sequence_length=512)`):
T5("") padded to 512 tokens (`</s>` + 511 `<pad>`, no attention mask), the pooled CLIP of "" (the
same as the positive branch's) and zero text ids [512, 3]. When the FLUX base has `text_encoder_2/`
+ `tokenizer_2/` (FLUX.1-dev's T5-XXL) that sequence is computed once at load, T5 is freed, and
the constant is cached on the decoder and saved in its folder (`negative_prompt.safetensors`), so
a saved decoder needs no T5. Without T5 the negative is the all-zero prompt sequence with the
positive branch's text ids. The decoder json records which: `negative: "t5-empty" | "zeros"`."""
from __future__ import annotations

import gc
import json
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

log = logging.getLogger(__name__)

NUM_TRAIN_TIMESTEPS = 1000
REFERENCE_SHIFT = 3.0
REFERENCE_SIGMA_MIN = 0.003 / 1.002
TRAIN_GUIDANCE = 3.5  # the reference trainers' embedded guidance
PAPER_FLUX = "black-forest-labs/FLUX.1-dev"
DECODER_CONFIG = "nexus_gen_decoder.json"
DECODER_WEIGHTS = "decoder.safetensors"
DIT_FOLDER = "dit"
DECODER_FORMAT = "nexus-gen-decoder"
T5_MAX_LENGTH = 512  # the reference's t5_sequence_length for the negative prompt
NEGATIVE_FILE = "negative_prompt.safetensors"
NEGATIVE_KEY = "prompt_embeds"
NEGATIVE_MODES = ("zeros", "t5-empty")


# ---- latents and ids --------------------------------------------------------------------------

def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C]: FLUX's 2x2 patches, channel-major within a patch."""
    if latents.ndim != 4 or latents.shape[2] % 2 or latents.shape[3] % 2:
        raise ValueError(f"latents must be [B, C, H, W] with even H and W, got {tuple(latents.shape)}")
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `pack_latents` for a latent of `height` x `width` (latent pixels)."""
    b, n, c4 = packed.shape
    if n != (height // 2) * (width // 2) or c4 % 4:
        raise ValueError(f"packed latents {tuple(packed.shape)} do not fit a {height}x{width} latent")
    x = packed.view(b, height // 2, width // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, height, width)


def latent_image_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """FLUX image position ids [(H/2)(W/2), 3] = (0, row, col) of each packed token."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def zero_text_ids(n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """FLUX text position ids of a prompt sequence: all zeros [n, 3] (as for T5 tokens)."""
    return torch.zeros(n, 3, device=device, dtype=dtype)


def token_grid(n_tokens: int, what: str) -> int:
    """The side of a square token grid of `n_tokens` (a ValueError naming `what` otherwise)."""
    side = int(round(math.sqrt(n_tokens)))
    if side * side != n_tokens or side == 0:
        raise ValueError(f"{what}: {n_tokens} tokens is not a square grid")
    return side


# ---- training ---------------------------------------------------------------------------------

def training_sigmas(num: int = NUM_TRAIN_TIMESTEPS, shift: float = REFERENCE_SHIFT,
                    sigma_min: float = REFERENCE_SIGMA_MIN) -> torch.Tensor:
    """The reference trainer's 1000 training sigmas: linspace(1, sigma_min, num), shifted."""
    s = torch.linspace(1.0, sigma_min, num, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).float()


def training_weights(sigmas: torch.Tensor) -> torch.Tensor:
    """DiffSynth's per-timestep training weight over the training sigmas (mean 1)."""
    n = sigmas.numel()
    x = sigmas.double() * NUM_TRAIN_TIMESTEPS
    y = torch.exp(-2 * ((x - n / 2) / n) ** 2)
    y = y - y.min()
    return (y * (n / y.sum())).float()


def sample_training_sigmas(batch: int, generator: Optional[torch.Generator] = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma [B], weight [B]): one uniform draw among the training sigmas per sample."""
    sig = training_sigmas()
    idx = torch.randint(0, sig.numel(), (batch,), generator=generator)
    return sig[idx], training_weights(sig)[idx]


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma) x0 + sigma noise, sigma [B] broadcast over the other dims."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def flow_matching_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                       weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mean_b weight_b * mean((pred_b - (noise_b - x0_b))^2), computed in float32."""
    err = (pred.float() - (noise.float() - x0.float())) ** 2
    per = err.reshape(err.shape[0], -1).mean(dim=1)
    if weight is not None:
        per = per * weight.to(per.device, per.dtype)
    return per.mean()


# ---- sampling ---------------------------------------------------------------------------------

def set_sampling_timesteps(scheduler: Any, steps: int, image_seq_len: int,
                           shift: Optional[float] = REFERENCE_SHIFT, device=None) -> None:
    """Prepare a FlowMatchEulerDiscreteScheduler for `steps` steps (see the module docstring)."""
    import numpy as np

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cfg = scheduler.config
    if shift is None:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        sigmas = np.linspace(1.0, 1 / steps, steps)
        mu = calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                             cfg.get("max_shift", 1.15))
    else:
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        sigmas = np.linspace(1.0, REFERENCE_SIGMA_MIN, steps)
        mu = math.log(shift)
    if cfg.use_dynamic_shifting:
        scheduler.set_timesteps(sigmas=sigmas, mu=mu, device=device)
    else:
        if shift is not None:
            scheduler.set_shift(shift)
        scheduler.set_timesteps(sigmas=sigmas, device=device)
    scheduler.set_begin_index(0)


def initial_noise(batch: int, channels: int, height: int, width: int, seed: int,
                  dtype=torch.float32) -> torch.Tensor:
    """Starting latents [B, C, H, W]: sample i from a CPU generator seeded `seed + i`, so a batch
    gives the same images as single calls with consecutive seeds."""
    out = []
    for i in range(batch):
        g = torch.Generator("cpu").manual_seed(int(seed) + i)
        out.append(torch.randn((1, channels, height, width), generator=g, dtype=torch.float32))
    return torch.cat(out).to(dtype)


# ---- images -----------------------------------------------------------------------------------

def images_to_tensor(images: Sequence[Any], height: int, width: int) -> torch.Tensor:
    """PIL images -> [B, 3, H, W] in [-1, 1], as the reference datasets: bilinear resize so the
    image covers H x W, then a centre crop."""
    import numpy as np
    from PIL import Image

    out = []
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise ValueError(f"images[{i}] is a {type(img).__name__}, not a PIL image")
        img = img.convert("RGB")
        w, h = img.size
        scale = max(width / w, height / h)
        nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
        img = img.resize((nw, nh), Image.BILINEAR)
        top, left = int(round((nh - height) / 2.0)), int(round((nw - width) / 2.0))
        img = img.crop((left, top, left + width, top + height))
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()) / 255.0
        out.append(arr.permute(2, 0, 1) * 2 - 1)
    return torch.stack(out)


def tensor_to_images(x: torch.Tensor) -> list:
    """[B, 3, H, W] in [-1, 1] -> RGB PIL images (rounded to uint8)."""
    import numpy as np
    from PIL import Image

    arr = ((x.detach().float().cpu() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return [Image.fromarray(np.ascontiguousarray(a.permute(1, 2, 0).numpy()), "RGB") for a in arr]


# ---- the FLUX base and the decoder folders ----------------------------------------------------

def resolve_flux_base(base: str) -> str:
    """`tiny` -> the tiny FLUX folder, `tiny-t5` -> the same with a tiny T5, `paper` -> FLUX.1-dev's
    hub id, else as given."""
    if base == "tiny":
        from nexus_gen.models.tiny.flux_tiny import tiny_flux_dir

        return str(tiny_flux_dir())
    if base == "tiny-t5":
        from nexus_gen.models.tiny.flux_tiny import tiny_flux_t5_dir

        return str(tiny_flux_t5_dir())
    if base == "paper":
        return PAPER_FLUX
    return str(base)


def empty_prompt_pooled(base: str) -> torch.Tensor:
    """The pooled CLIP text embedding [1, P] of "" (padded to 77 tokens, as FLUX pipelines do)
    from `base`'s `text_encoder/` + `tokenizer/`, in float32."""
    from transformers import CLIPTextModel, CLIPTokenizer

    src = resolve_flux_base(base)
    try:
        tok = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer")
        enc = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the CLIP text encoder of FLUX base {base!r} ({src}): {e}") from e
    ids = tok([""], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        return enc(ids).pooler_output.detach().float()


def base_has_t5(base: str) -> bool:
    """Whether a FLUX base has `text_encoder_2/` + `tokenizer_2/`: a folder holding both; a hub id
    whose T5 files are in the Hugging Face cache, or any hub id when online (T5 is then fetched)."""
    src = resolve_flux_base(base)
    path = Path(src)
    if path.is_dir():
        return (path / "text_encoder_2").is_dir() and (path / "tokenizer_2").is_dir()
    from huggingface_hub import constants, try_to_load_from_cache

    cached = all(isinstance(try_to_load_from_cache(src, f), str)
                 for f in ("text_encoder_2/config.json", "tokenizer_2/tokenizer_config.json"))
    return cached or not constants.HF_HUB_OFFLINE


def empty_prompt_t5(base: str, dtype: torch.dtype = torch.float32,
                    max_length: int = T5_MAX_LENGTH) -> torch.Tensor:
    """T5("") [1, max_length, J] from `base`'s `text_encoder_2/` + `tokenizer_2/`, as the reference
    encodes its negative prompt: padded to `max_length`, no attention mask, last hidden state; run
    in `dtype` (on CUDA when there is one), returned in float32 on the CPU; T5 is freed after."""
    from transformers import T5EncoderModel, T5TokenizerFast

    src = resolve_flux_base(base)
    try:
        tok = T5TokenizerFast.from_pretrained(src, subfolder="tokenizer_2")
        enc = T5EncoderModel.from_pretrained(src, subfolder="text_encoder_2", dtype=dtype)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the T5 text encoder of FLUX base {base!r} ({src}): {e}") from e
    ids = tok([""], padding="max_length", max_length=max_length, truncation=True,
              return_tensors="pt").input_ids
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        with torch.no_grad():
            out = enc.to(device).eval()(input_ids=ids.to(device)).last_hidden_state.float().cpu()
    finally:
        del enc
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    log.info("negative prompt: T5(\"\") of %s, %d tokens, computed once (T5 freed)", base, out.shape[1])
    return out


def base_negative(base: str, dtype: torch.dtype = torch.float32) -> Optional[torch.Tensor]:
    """The CFG negative prompt sequence of a FLUX base: T5("") when it has T5, else None (zeros)."""
    if base_has_t5(base):
        return empty_prompt_t5(base, dtype)
    log.log(logging.INFO if str(base).startswith("tiny") else logging.WARNING,
            "FLUX base %s has no text_encoder_2/tokenizer_2 (T5): the CFG negative branch is the "
            "all-zero prompt sequence, not the reference's T5(\"\")", base)
    return None


def read_negative(folder: Union[str, Path]) -> torch.Tensor:
    """The cached T5("") sequence [1, L, J] of a saved decoder folder."""
    from safetensors.torch import load_file

    p = Path(folder) / NEGATIVE_FILE
    if not p.is_file():
        raise ValueError(f"{folder}: its json says negative 't5-empty' but {NEGATIVE_FILE} is missing")
    state = load_file(str(p))
    if set(state) != {NEGATIVE_KEY} or state[NEGATIVE_KEY].ndim != 3:
        raise ValueError(f"{p}: expected one tensor {NEGATIVE_KEY!r} [1, L, J], got "
                         f"{ {k: tuple(v.shape) for k, v in state.items()} }")
    return state[NEGATIVE_KEY]


def load_flux_parts(base: str, with_dit: bool, dtype=torch.float32,
                    negative: bool = True) -> dict[str, Any]:
    """VAE, scheduler, pooled "", the CFG negative (`base_negative`, when `negative`) and (when
    `with_dit`) the DiT of a FLUX base folder or hub id."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    src = resolve_flux_base(base)
    try:
        parts: dict[str, Any] = {
            "vae": AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=dtype),
            "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(src, subfolder="scheduler"),
        }
        if with_dit:
            parts["dit"] = FluxTransformer2DModel.from_pretrained(src, subfolder="transformer",
                                                                  torch_dtype=dtype)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load FLUX base {base!r} ({src}): not a diffusers FLUX folder "
                         f"and not in the Hugging Face cache (offline?): {e}") from e
    parts["pooled_empty"] = empty_prompt_pooled(base)
    if negative:
        parts["negative_prompt"] = base_negative(base, dtype)
    return parts


def read_decoder_config(folder: Union[str, Path], kind: str) -> dict[str, Any]:
    """The json config of a saved decoder folder, checked to be a `kind` decoder."""
    p = Path(folder) / DECODER_CONFIG
    if not p.is_file():
        raise ValueError(f"{folder} is not a saved Nexus-Gen decoder (no {DECODER_CONFIG})")
    cfg = json.loads(p.read_text(encoding="utf-8"))
    if cfg.get("format") != DECODER_FORMAT or cfg.get("kind") != kind:
        raise ValueError(f"{folder} holds a {cfg.get('kind')!r} decoder, not a {kind!r} one")
    return cfg


class FluxDecoderBase(nn.Module):
    """A FLUX DiT conditioned on a prompt sequence made from image embeddings: the frozen VAE,
    the pooled CLIP of "" (a buffer, recomputed from the base at load), the CFG negative prompt
    sequence (T5("") or None = zeros; a buffer, saved with the decoder), the scheduler, the
    flow-matching loss and the sampler. Subclasses add the module that makes the prompt."""

    kind = ""
    trained_prefixes: tuple[str, ...] = ()  # state-dict prefixes saved beside the DiT

    def __init__(self, config: dict[str, Any], dit: nn.Module, vae: nn.Module, scheduler: Any,
                 pooled_empty: torch.Tensor, negative_prompt: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.config = dict(config)
        self.dit = dit
        # The frozen VAE is kept out of the module tree: not in parameters() or state_dict() (so
        # not in training checkpoints, DDP or LoRA target matching); `_apply` still moves it.
        vae.requires_grad_(False)
        vae.eval()
        self._frozen = {"vae": vae}
        self.scheduler = scheduler
        pooled_dim = dit.config.pooled_projection_dim
        if pooled_empty.shape[-1] != pooled_dim:
            raise ValueError(f"the base's CLIP pooled size {pooled_empty.shape[-1]} does not match "
                             f"the DiT's pooled_projection_dim {pooled_dim}")
        self.register_buffer("pooled_empty", pooled_empty.reshape(1, -1), persistent=False)
        if negative_prompt is not None:
            if negative_prompt.ndim == 2:
                negative_prompt = negative_prompt.unsqueeze(0)
            if negative_prompt.ndim != 3 or negative_prompt.shape[0] != 1 \
                    or negative_prompt.shape[-1] != self.joint_dim:
                raise ValueError(f"negative prompt sequence of shape {tuple(negative_prompt.shape)}: "
                                 f"expected [1, L, {self.joint_dim}] (the DiT's joint_attention_dim; "
                                 "is the base's T5 the one of this DiT?)")
        self.register_buffer("negative_prompt", negative_prompt, persistent=False)
        self.config["negative"] = "zeros" if negative_prompt is None else "t5-empty"

    @property
    def vae(self) -> nn.Module:
        """The frozen FLUX VAE."""
        return self._frozen["vae"]

    def _apply(self, fn, recurse: bool = True):  # .to() / .float() / .cuda() move the VAE too
        super()._apply(fn, recurse)
        self.vae._apply(fn, recurse)
        return self

    # geometry
    @property
    def joint_dim(self) -> int:
        """J: the width of the DiT's prompt tokens (its joint_attention_dim)."""
        return int(self.dit.config.joint_attention_dim)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent pixel (8 for FLUX)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _latent_size(self, height: int, width: int) -> tuple[int, int]:
        step = self.vae_scale * 2
        if height <= 0 or width <= 0 or height % step or width % step:
            raise ValueError(f"height and width must be positive multiples of {step} "
                             f"(VAE x{self.vae_scale}, 2x2 packing), got {height}x{width}")
        return height // self.vae_scale, width // self.vae_scale

    # VAE
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> normalised latents (the posterior mean, as DiffSynth's
        encoder): (z - shift_factor) * scaling_factor."""
        vae = self.vae
        z = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()
        shift = vae.config.shift_factor or 0.0
        return (z - shift) * vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> list:
        """Normalised latents -> PIL images."""
        vae = self.vae
        z = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        return tensor_to_images(vae.decode(z, return_dict=False)[0])

    # the DiT
    def velocity(self, packed: torch.Tensor, sigma: torch.Tensor, prompt: torch.Tensor,
                 txt_ids: torch.Tensor, img_ids: torch.Tensor, guidance: float) -> torch.Tensor:
        """The DiT's prediction for packed latents at sigma [B] (diffusers' timestep = sigma)."""
        b = packed.shape[0]
        dtype = self.dit.dtype
        g = (torch.full((b,), float(guidance), device=packed.device, dtype=torch.float32)
             if self.dit.config.guidance_embeds else None)
        return self.dit(hidden_states=packed.to(dtype), timestep=sigma.to(packed.device, dtype),
                        guidance=g, pooled_projections=self.pooled_empty.to(dtype).expand(b, -1),
                        encoder_hidden_states=prompt.to(dtype), txt_ids=txt_ids, img_ids=img_ids,
                        return_dict=False)[0]

    def flow_loss(self, prompt: torch.Tensor, txt_ids: torch.Tensor, images: torch.Tensor,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The weighted rectified-flow loss of target images [B, 3, H, W] under a prompt sequence."""
        x0 = pack_latents(self.encode_images(images)).float()
        h, w = images.shape[-2] // self.vae_scale, images.shape[-1] // self.vae_scale
        sigma, weight = sample_training_sigmas(x0.shape[0], generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
        sigma = sigma.to(x0.device)
        xt = noisy_latents(x0, noise, sigma)
        img_ids = latent_image_ids(h, w, x0.device, self.dit.dtype)
        pred = self.velocity(xt, sigma, prompt, txt_ids.to(self.dit.dtype), img_ids, TRAIN_GUIDANCE)
        return flow_matching_loss(pred, x0, noise, weight)

    @torch.no_grad()
    def sample(self, prompt: torch.Tensor, txt_ids: torch.Tensor, height: int, width: int,
               steps: int, cfg: float, guidance: float, seed: int,
               shift: Optional[float] = REFERENCE_SHIFT) -> list:
        """Seeded sampling -> PIL images. With cfg != 1 the negative branch is the cached T5("")
        sequence with zero text ids (as the reference), or without T5 in the base the all-zero
        prompt sequence with the positive text ids (`config["negative"]` says which)."""
        lh, lw = self._latent_size(height, width)
        b = prompt.shape[0]
        device = prompt.device
        channels = self.dit.config.in_channels // 4
        latents = pack_latents(initial_noise(b, channels, lh, lw, seed)).to(device)
        img_ids = latent_image_ids(lh, lw, device, self.dit.dtype)
        txt_ids = txt_ids.to(device, self.dit.dtype)
        negative, neg_ids = self.negative_branch(prompt, txt_ids)
        set_sampling_timesteps(self.scheduler, int(steps), latents.shape[1], shift, device=device)
        for t in self.scheduler.timesteps:
            sigma = (t / NUM_TRAIN_TIMESTEPS).expand(b)
            v = self.velocity(latents, sigma, prompt, txt_ids, img_ids, guidance)
            if float(cfg) != 1.0:
                v_neg = self.velocity(latents, sigma, negative, neg_ids, img_ids, guidance)
                v = v_neg + float(cfg) * (v - v_neg)
            latents = self.scheduler.step(v.float(), t, latents.float(), return_dict=False)[0]
        return self.decode_latents(unpack_latents(latents, lh, lw))

    def negative_branch(self, prompt: torch.Tensor, txt_ids: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(negative prompt [B, L, J], its text ids [L, 3]) for a positive prompt [B, N, J]."""
        if self.negative_prompt is None:
            return torch.zeros_like(prompt), txt_ids
        neg = self.negative_prompt.to(prompt.device, prompt.dtype).expand(prompt.shape[0], -1, -1)
        return neg, zero_text_ids(neg.shape[1], prompt.device, txt_ids.dtype)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        """Recompute activations in backward: the DiT's blocks and any transformers
        `GradientCheckpointingLayer` (the editing merger's decoder layer)."""
        import functools

        from torch.utils.checkpoint import checkpoint
        from transformers.modeling_layers import GradientCheckpointingLayer

        fn = functools.partial(checkpoint, **(gradient_checkpointing_kwargs or {"use_reentrant": False}))
        self.dit.enable_gradient_checkpointing(fn)
        for module in self.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.gradient_checkpointing = True
                module._gradient_checkpointing_func = fn

    # folders
    def _trained_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if k.startswith(self.trained_prefixes)}

    def save_pretrained(self, folder: Union[str, Path]) -> Path:
        """`nexus_gen_decoder.json` + `decoder.safetensors` (reference key names) + `dit/` (the
        DiT in diffusers layout) + `negative_prompt.safetensors` (the cached T5(""), when the
        negative is `t5-empty`). The VAE, CLIP and scheduler come from `base` at load."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = dict(self.config, format=DECODER_FORMAT, kind=self.kind, joint_dim=self.joint_dim)
        save_file(self._trained_state(), str(folder / DECODER_WEIGHTS), metadata={"kind": self.kind})
        self.dit.save_pretrained(folder / DIT_FOLDER, safe_serialization=True)
        if self.negative_prompt is not None:
            save_file({NEGATIVE_KEY: self.negative_prompt.detach().float().cpu().contiguous()},
                      str(folder / NEGATIVE_FILE), metadata={"text": "", "encoder": "t5"})
        elif (folder / NEGATIVE_FILE).exists():
            (folder / NEGATIVE_FILE).unlink()
        (folder / DECODER_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
        return folder

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path], base: Optional[str] = None,
                        dtype: torch.dtype = torch.float32) -> "FluxDecoderBase":
        """A decoder saved by `save_pretrained`; `base` overrides the FLUX base recorded in it.
        The CFG negative is the saved one (`t5-empty`: read from the folder, no T5 is loaded)."""
        from diffusers import FluxTransformer2DModel
        from safetensors.torch import load_file

        cfg = read_decoder_config(folder, cls.kind)
        if base is not None:
            cfg["base"] = base
        mode = cfg.get("negative", "zeros")
        if mode not in NEGATIVE_MODES:
            raise ValueError(f"{folder}: negative {mode!r} is not one of {NEGATIVE_MODES}")
        negative = read_negative(folder) if mode == "t5-empty" else None
        parts = load_flux_parts(cfg["base"], with_dit=False, dtype=dtype, negative=False)
        parts["negative_prompt"] = negative
        parts["dit"] = FluxTransformer2DModel.from_pretrained(Path(folder) / DIT_FOLDER,
                                                              torch_dtype=dtype)
        if int(parts["dit"].config.joint_attention_dim) != int(cfg.get("joint_dim", -1)):
            raise ValueError(f"{folder}: the DiT's joint_attention_dim "
                             f"{parts['dit'].config.joint_attention_dim} != joint_dim {cfg.get('joint_dim')}")
        model = cls(cfg, **parts)
        model._load_trained(load_file(str(Path(folder) / DECODER_WEIGHTS)), str(folder))
        return model

    def _load_trained(self, state: dict[str, torch.Tensor], where: str) -> None:
        current = self.state_dict()
        own = {k for k in current if k.startswith(self.trained_prefixes)}
        missing, extra = sorted(own - set(state)), sorted(set(state) - own)
        if missing or extra:
            raise ValueError(f"{where}: decoder weights do not match the model (missing "
                             f"{missing[:5]}, unexpected {extra[:5]})")
        for k, v in state.items():
            want = current[k].shape
            if v.shape != want:
                raise ValueError(f"{where}: {k} has shape {tuple(v.shape)}, the model wants {tuple(want)}")
        self.load_state_dict(state, strict=False)


def check_embeds(x: torch.Tensor, what: str, dim: int, tokens: Optional[int] = None) -> torch.Tensor:
    """[N, D] or [B, N, D] embeddings as [B, N, D]; a ValueError naming `what` when D (or N) is off."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a tensor [B, N, {dim}], got {type(x).__name__}")
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ValueError(f"{what} has shape {tuple(x.shape)}: the decoder wants [B, N, {dim}] "
                         f"(embedding dim {dim})")
    if tokens is not None and x.shape[1] != tokens:
        raise ValueError(f"{what} has {x.shape[1]} tokens: the decoder wants {tokens}")
    return x
