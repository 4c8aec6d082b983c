"""CLIP image/text encoder over open_clip, loaded by profile or spec.

Specs: `tiny` (a small random-init model built locally, offline), `small` (ViT-B-32-quickgelu,
openai), `paper` (ViT-L-14-quickgelu, openai: what GenEval and InstructPix2Pix use),
`NAME:TAG` (an open_clip pretrained tag), `NAME:/path/weights.safetensors`, `NAME:random`
(random init, fixed seed: same arithmetic, for benchmarks), `local-dir:/path`, `hf-hub:org/repo`.
OpenAI's CLIP weights were trained with QuickGELU, so a tag that says so always gets QuickGELU."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from nexus_gen.hashing import file_sha256
from nexus_gen.scoring.clip_profiles import expand_profile
from nexus_gen.scoring.embedding_cache import EmbeddingCache, default_cache
from nexus_gen.scoring.hub import ModelUnavailableError, hub_files
from nexus_gen.scoring.image_encoder import ImageEncoderBase
from nexus_gen.scoring.model_source import default_dtype
from nexus_gen.scoring.text_encoder import TextEncoderBase

__all__ = ["ClipEncoder", "ClipSpec", "ModelUnavailableError", "load_clip", "resolve_clip_spec"]

log = logging.getLogger(__name__)

RANDOM_SEED = 0


@dataclass(frozen=True)
class ClipSpec:
    """A resolved CLIP spec: what to hand to open_clip and the stable id to record."""

    kind: str  # "tag" | "file" | "random" | "local-dir" | "hf-hub"
    model_name: str  # open_clip model name, or "local-dir:..." / "hf-hub:..."
    pretrained: Optional[str]  # tag or weights path for kind tag/file
    force_quick_gelu: bool = False


def _short_sha(path: Path) -> str:
    return file_sha256(path)[:16]


def resolve_clip_spec(spec: str) -> ClipSpec:
    """Parse a CLIP spec string (see module doc); raises ValueError naming what is wrong."""
    import open_clip

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"CLIP spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec == "tiny":
        from nexus_gen.models.tiny import tiny_clip_dir

        return ClipSpec("local-dir", f"local-dir:{tiny_clip_dir()}", None)
    spec = expand_profile(spec)
    if spec.startswith("local-dir:"):
        path = Path(spec[len("local-dir:"):]).expanduser()
        if not (path / "open_clip_config.json").is_file():
            raise ValueError(f"CLIP spec {spec!r}: {path} has no open_clip_config.json")
        return ClipSpec("local-dir", f"local-dir:{path.resolve()}", None)
    if spec.startswith("hf-hub:"):
        return ClipSpec("hf-hub", spec, None)
    name, sep, weights = spec.partition(":")
    if not sep or not weights:
        raise ValueError(
            f"CLIP spec {spec!r} names no weights: use a profile (tiny, small, paper), "
            f"'{name}:TAG' (e.g. {name}:openai), '{name}:/path/weights.safetensors', "
            f"'{name}:random' or 'local-dir:/path'")
    if name not in open_clip.list_models():
        raise ValueError(f"CLIP spec {spec!r}: unknown open_clip model {name!r}")
    if weights == "random":
        return ClipSpec("random", name, None)
    if weights in open_clip.list_pretrained_tags_by_model(name):
        tag_cfg = open_clip.get_pretrained_cfg(name, weights)
        model_cfg = open_clip.get_model_config(name) or {}
        force = False
        if tag_cfg.get("quick_gelu", False) and not model_cfg.get("quick_gelu", False):
            if f"{name}-quickgelu" in open_clip.list_models():
                log.info("%s:%s was trained with QuickGELU: using %s-quickgelu", name, weights, name)
                name = f"{name}-quickgelu"
            else:
                force = True
        return ClipSpec("tag", name, weights, force_quick_gelu=force)
    path = Path(weights).expanduser()
    if path.is_file():
        return ClipSpec("file", name, str(path.resolve()))
    if "/" in weights or weights.endswith((".safetensors", ".bin", ".pt", ".pth")):
        raise ValueError(f"CLIP spec {spec!r}: weights file {path} does not exist")
    raise ValueError(f"CLIP spec {spec!r}: {weights!r} is neither a pretrained tag of {name} "
                     f"({', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'}) "
                     "nor an existing weights file")


def _model_id(spec: ClipSpec) -> str:
    if spec.kind == "tag":
        return f"{spec.model_name}:{spec.pretrained}"
    if spec.kind == "random":
        return f"{spec.model_name}:random(seed={RANDOM_SEED})"
    if spec.kind == "file":
        return f"{spec.model_name}@sha256:{_short_sha(Path(spec.pretrained))}"
    if spec.kind == "local-dir":
        import open_clip.factory as factory

        path = Path(spec.model_name[len("local-dir:"):])
        ckpt = factory._find_checkpoint_in_dir(path)
        suffix = f"@sha256:{_short_sha(Path(ckpt))}" if ckpt else ":no-weights"
        return f"{path.name}{suffix}"
    return spec.model_name


class ClipEncoder(ImageEncoderBase, TextEncoderBase):
    """A loaded CLIP model: batched, cached image and text embeddings (L2-normalised, fp32 cpu)."""

    def __init__(self, model: torch.nn.Module, preprocess, tokenizer, model_id: str,
                 device: torch.device, dtype: torch.dtype,
                 cache: Optional[EmbeddingCache] = None) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.cache = cache if cache is not None else default_cache()
        self.embed_dim = int(model.text_projection.shape[-1]) if _is_plain_clip(model) \
            else int(self._probe_dim())
        self.images_forwarded = 0
        self.texts_forwarded = 0

    def _probe_dim(self) -> int:
        with torch.inference_mode():
            return self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1]

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(batch)

    # -- texts
    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features; for causal-mask CLIP text towers only the tokens up to the longest
        end-of-text position run (positions after it cannot change the pooled feature)."""
        m = self.model
        if not _is_plain_clip(m) or m.attn_mask is None or m.text_pool_type not in ("argmax", "eos"):
            return m.encode_text(tokens)
        if m.text_pool_type == "argmax":
            idx = tokens.argmax(dim=-1)
        else:
            idx = (tokens == m.text_eos_id).int().argmax(dim=-1)
        n = int(idx.max()) + 1
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens[:, :n]).to(cast) + m.positional_embedding[:n].to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask[:n, :n])
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), idx]
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) \
                else x @ m.text_projection
        return x

    def _text_features(self, texts: list[str], batch_size: int):
        tokens = self.tokenizer(texts)
        # group texts of similar length so trimmed batches carry little padding
        order = sorted(range(len(texts)), key=lambda i: int((tokens[i] != 0).sum()))
        for s in range(0, len(order), batch_size):
            sel = order[s:s + batch_size]
            with torch.inference_mode():
                yield sel, self._encode_tokens(tokens[sel].to(self.device))


def _is_plain_clip(model: torch.nn.Module) -> bool:
    import open_clip

    return type(model) is open_clip.model.CLIP


def _hub_guard(rs: ClipSpec, what: str, fix: str):
    """`hub.hub_files` for a spec whose weights come from the hub (a tag or `hf-hub:`), else a
    no-op: a fast, one-line failure instead of network retries when they cannot be had."""
    import contextlib

    import open_clip
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if rs.kind == "hf-hub":
        return hub_files(what, rs.model_name[len("hf-hub:"):], ["open_clip_config.json"], fix)
    if rs.kind == "tag":
        hub = open_clip.get_pretrained_cfg(rs.model_name, rs.pretrained).get("hf_hub")
        if hub:
            repo, fname = os.path.split(hub)
            fname = fname or HF_WEIGHTS_NAME
            names = [fname, HF_SAFE_WEIGHTS_NAME if fname == HF_WEIGHTS_NAME else
                     os.path.splitext(fname)[0] + ".safetensors"]
            return hub_files(what, repo, names, fix)
    return contextlib.nullcontext()


def load_clip(spec: str = "small", *, device: Union[str, torch.device] = "cpu",
              dtype: Optional[torch.dtype] = None, cache: Optional[EmbeddingCache] = None) -> ClipEncoder:
    """Load a CLIP encoder from a spec (see module doc). On CUDA the default dtype is bf16 and
    the vision tower runs channels-last; on CPU float32."""
    import open_clip

    device = torch.device(device)
    dtype = dtype if dtype is not None else default_dtype(device)
    rs = resolve_clip_spec(spec)
    kwargs = dict(pretrained=rs.pretrained, force_quick_gelu=rs.force_quick_gelu)
    fix = (f"use the offline 'tiny' profile, pass '{rs.model_name.split(':')[0]}:/path/weights.safetensors' "
           "or 'local-dir:/path', or run once online to fill the cache")
    try:
        with _hub_guard(rs, f"CLIP {spec!r}", fix):
            if rs.kind == "random":
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(RANDOM_SEED)
                    model, _, preprocess = open_clip.create_model_and_transforms(rs.model_name)
            else:
                model, _, preprocess = open_clip.create_model_and_transforms(rs.model_name, **kwargs)
    except (RuntimeError, OSError) as exc:
        if isinstance(exc, ModelUnavailableError):
            raise
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        why = " ".join(str(exc).split())
        raise ModelUnavailableError(
            f"cannot load CLIP {spec!r} ({rs.model_name}, weights {rs.pretrained or rs.kind})"
            f"{' with HF_HUB_OFFLINE=1' if offline else ''}: {why}; {fix}") from exc
    tokenizer = open_clip.get_tokenizer(rs.model_name)
    model.eval().requires_grad_(False)
    model.to(device=device, dtype=dtype)
    if device.type == "cuda":
        model.visual.to(memory_format=torch.channels_last)
    enc = ClipEncoder(model, preprocess, tokenizer, _model_id(rs), device, dtype, cache)
    log.info("loaded CLIP %s on %s (%s)", enc.model_id, device, dtype)
    return enc
