"""Loading the published Nexus-Gen checkpoints (V2 `DiffSynth-Studio/Nexus-GenV2`, its Hugging Face
mirror `modelscope/Nexus-GenV2`, V1 `DiffSynth-Studio/Nexus-Gen`) into this project's classes.

Facts (from the reference repository modelscope/Nexus-Gen and DiffSynth-Studio; see
`../shared/NEXUS_GEN.md`, "Released checkpoints"):

- AR model: a transformers-4.49 `qwen2_5_vl` folder: `config.json` (flat text fields, an `auto_map`
  to remote code that is ignored here: never `trust_remote_code`), safetensors shards listed by
  `model.safetensors.index.json` (or one `model.safetensors`), keys in the 4.49 layout
  (`visual.*`, `model.*`, `lm_head.weight`) plus `vision_head.weight` and, V2 only,
  `image_prefill_embeds.weight`. The config has no Nexus-Gen geometry: the paper constants
  (81 tokens at 252 px, 324 source tokens at 504 px) are set as `config.nexus_gen`.
- Current transformers maps the 4.49 names only for the stock class name; a subclass needs the
  mapping passed explicitly (`AR_KEY_MAPPING`, given to `from_pretrained(key_mapping=...)`).
- V1 has no `image_prefill_embeds`: V1 was trained with the reference's `USE_IMG_EMBED_AS_INPUT=false`
  (its `train/scripts/train_llm.sh`): at the target image positions the input stays the token
  embedding of `<|image_pad|>` (never the ground-truth ViT embedding), and its `generate` feeds the
  same `<|image_pad|>` token at each of the 81 steps. So V1 is prefilled autoregression with one
  shared prefill vector; the loader fills all N rows of `image_prefill_embeds` with
  `embed_tokens[<|image_pad|>]`, which gives the same inputs as the reference at every position.
- Decoders: `torch.save`d flat dicts (`weights_only=True`). `generation_decoder.bin`: `adapter.{0,1,3,4}.*`
  + `pipe.dit.*`; `edit_decoder.bin`: `embedding_merger.layers.0.*` + `embedding_merger.projector.*`
  + `pipe.dit.*`; V1 `decoder_81_512.bin`: adapter keys `0.*`..`4.*` unprefixed beside unprefixed DiT
  keys. The DiT is under DiffSynth 1.x FluxDiT names (`diffsynth_flux_keys`). V1 has no editing
  decoder (it edits with the generation decoder).
- The VAE, CLIP text encoder (pooled embedding of "") and scheduler come from the FLUX.1-dev base
  (`black-forest-labs/FLUX.1-dev`, gated on the Hugging Face hub), and so does T5-XXL
  (`text_encoder_2/`, `tokenizer_2/`): the reference's CFG negative is T5("") (512 tokens), computed
  once here for both decoders; a base folder without T5 gives the all-zero negative instead."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from nexus_gen.models.diffsynth_flux_keys import flux_transformer_config, fluxdit_to_diffusers
from nexus_gen.models.nexus_ar import AR_KEY_MAPPING

log = logging.getLogger(__name__)

PAPER_GEOMETRY = {"image_tokens": 81, "image_size": 252, "source_image_size": 504, "source_tokens": 324}
# id -> (hub, version). Without the modelscope package a ModelScope id is fetched from the Hugging
# Face hub: V2 from its known mirror, V1 under the same id (no mirror is documented for it).
PUBLISHED = {"DiffSynth-Studio/Nexus-GenV2": ("modelscope", "v2"),
             "modelscope/Nexus-GenV2": ("huggingface", "v2"),
             "DiffSynth-Studio/Nexus-Gen": ("modelscope", "v1")}
HF_MIRRORS = {"DiffSynth-Studio/Nexus-GenV2": "modelscope/Nexus-GenV2"}
FLUX_BASE = "black-forest-labs/FLUX.1-dev"
# what a download fetches: weights, configs, tokenizer files; never remote code (*.py)
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.jinja", "*.model"]
FLUX_BASE_PATTERNS = ["model_index.json", "scheduler/*", "vae/*", "text_encoder/*", "tokenizer/*",
                      "text_encoder_2/*", "tokenizer_2/*",  # T5: only for the CFG negative T5("")
                      "transformer/config.json"]  # the DiT weights come from the Nexus-Gen decoders
# transformers 4.49 -> current names (applied in order; the second skips already-current names)
AR_EXTRA_KEYS = ("vision_head.weight", "image_prefill_embeds.weight")
GEN_DECODER_FILES = {"v2": "generation_decoder.bin", "v1": "decoder_81_512.bin"}
EDIT_DECODER_FILE = "edit_decoder.bin"
V1_ADAPTER_KEYS = tuple(f"{i}.{p}" for i in (0, 1, 3, 4) for p in ("weight", "bias"))
IMAGE_PAD_ID = 151655


@dataclass(frozen=True)
class ReferenceCheckpoint:
    """A published checkpoint folder, checked: its version, AR weight files and decoder files."""

    folder: Path
    version: str  # "v1" | "v2"
    weight_files: tuple[Path, ...]
    weight_map: dict[str, str]  # 4.49 key -> file name
    generation_decoder: Path
    editing_decoder: Optional[Path]


def _download(repo_id: str, hub: str, patterns: list[str], cache_dir: Optional[str]) -> Path:
    if hub == "modelscope":
        try:
            from modelscope import snapshot_download as ms_download
        except ImportError:
            repo_id = HF_MIRRORS.get(repo_id, repo_id)
            log.info("modelscope is not installed: fetching %s from the Hugging Face hub", repo_id)
            hub = "huggingface"
        else:
            return Path(ms_download(repo_id, allow_file_pattern=patterns, cache_dir=cache_dir))
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, cache_dir=cache_dir))
    except Exception as err:  # offline, gated, missing: one clear error naming the repository
        raise ValueError(f"cannot fetch {repo_id} from the Hugging Face hub ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); pass a local "
                         "folder, or download it first") from err


def resolve_reference(source: str | Path, *, hub: Optional[str] = None,
                      cache_dir: Optional[str] = None) -> Path:
    """A local folder as is; a published id downloaded (weights and configs only) and its folder."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if str(source) not in PUBLISHED:
        raise ValueError(f"Nexus-Gen checkpoint {str(source)!r}: not a folder and not a published id "
                         f"({', '.join(PUBLISHED)})")
    chosen = hub or PUBLISHED[str(source)][0]
    if chosen not in ("huggingface", "modelscope"):
        raise ValueError(f"hub must be 'huggingface' or 'modelscope', got {hub!r}")
    return _download(str(source), chosen, CHECKPOINT_PATTERNS, cache_dir)


def resolve_flux_base(base: str | Path = FLUX_BASE, *, cache_dir: Optional[str] = None) -> Path:
    """The FLUX.1-dev base folder (diffusers layout: vae/, text_encoder/, tokenizer/, scheduler/)."""
    path = Path(base).expanduser()
    if path.is_dir():
        missing = [d for d in ("vae", "text_encoder", "tokenizer", "scheduler") if not (path / d).is_dir()]
        if missing:
            raise ValueError(f"FLUX base folder {path} lacks {missing} (a diffusers FLUX.1-dev layout is needed)")
        return path
    return _download(str(base), "huggingface", FLUX_BASE_PATTERNS, cache_dir)


def _ar_weight_map(folder: Path) -> dict[str, str]:
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as err:
            raise ValueError(f"{index}: not a safetensors index with a 'weight_map' ({err})") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: empty or malformed 'weight_map'")
        missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
        if missing:
            raise ValueError(f"{folder}: the index lists shard(s) that are absent: {missing}")
        return dict(weight_map)
    single = folder / "model.safetensors"
    if not single.is_file():
        raise ValueError(f"{folder}: no model.safetensors.index.json and no model.safetensors (not an AR checkpoint)")
    with safe_open(str(single), framework="pt") as f:
        return {k: single.name for k in f.keys()}


def inspect_reference(folder: str | Path) -> ReferenceCheckpoint:
    """Check a published-layout folder before any loading: config, AR weights, decoder files, version."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: no config.json (not a Nexus-Gen checkpoint folder)")
    weight_map = _ar_weight_map(folder)
    if "vision_head.weight" not in weight_map:
        raise ValueError(f"{folder}: the AR weights have no vision_head.weight (a plain Qwen2.5-VL, not Nexus-Gen)")
    gen_v2, gen_v1 = folder / GEN_DECODER_FILES["v2"], folder / GEN_DECODER_FILES["v1"]
    if gen_v2.is_file():
        version, gen, edit = "v2", gen_v2, folder / EDIT_DECODER_FILE
        if not edit.is_file():
            raise ValueError(f"{folder}: has {gen_v2.name} but no {EDIT_DECODER_FILE}")
        if "image_prefill_embeds.weight" not in weight_map:
            raise ValueError(f"{folder}: V2 decoders but no image_prefill_embeds.weight in the AR weights")
    elif gen_v1.is_file():
        version, gen, edit = "v1", gen_v1, None
    else:
        raise ValueError(f"{folder}: no decoder file ({GEN_DECODER_FILES['v2']} or {GEN_DECODER_FILES['v1']})")
    files = tuple(sorted({folder / f for f in weight_map.values()}))
    return ReferenceCheckpoint(folder, version, files, weight_map, gen, edit)


def ar_key_to_current(key: str) -> str:
    """A 4.49-layout AR key under current transformers names (the extra Nexus-Gen tensors unchanged)."""
    for pattern, replacement in AR_KEY_MAPPING.items():
        if re.search(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    return key


def reference_ar_config(folder: str | Path, geometry: Optional[Mapping[str, int]] = None):
    """The AR `Qwen2_5_VLConfig` of a published folder: `auto_map` dropped, `nexus_gen` = paper geometry."""
    from transformers import Qwen2_5_VLConfig

    path = Path(folder) / "config.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("model_type") != "qwen2_5_vl":
        raise ValueError(f"{path}: model_type {raw.get('model_type')!r}, expected 'qwen2_5_vl'")
    if "auto_map" in raw:
        log.info("%s: ignoring auto_map %s (remote code is never run; stock transformers classes are used)",
                 path, sorted(raw["auto_map"]))
        raw.pop("auto_map")
    config = Qwen2_5_VLConfig.from_dict(raw)
    config.nexus_gen = dict(raw.get("nexus_gen") or geometry or PAPER_GEOMETRY)
    return config


def _default_ar_class():
    from nexus_gen.models.nexus_ar import NexusGenAR

    return NexusGenAR


def check_ar_keys(ckpt: ReferenceCheckpoint, model_cls: Any, config: Any) -> None:
    """Compare the checkpoint's names and shapes with `model_cls(config)` built on the meta device."""
    from safetensors import safe_open

    with torch.device("meta"):
        model = model_cls(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name in AR_EXTRA_KEYS:
        if name not in expected:
            raise ValueError(f"{model_cls.__name__} has no {name.split('.')[0]} module: it cannot hold a Nexus-Gen AR")
    if getattr(config, "tie_word_embeddings", False):
        expected.pop("lm_head.weight", None)
    found: dict[str, tuple[int, ...]] = {}
    for file in ckpt.weight_files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                found[ar_key_to_current(key)] = tuple(f.get_slice(key).get_shape())
    optional = {"image_prefill_embeds.weight"} if ckpt.version == "v1" else set()
    missing = sorted(set(expected) - set(found) - optional)
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    if missing or unexpected or wrong:
        raise ValueError(f"{ckpt.folder}: AR weights do not fit its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape "
                         f"{[(k, found[k], expected[k]) for k in wrong[:5]]}")


def load_reference_ar(source: str | Path, *, model_cls: Any = None, dtype: Optional[torch.dtype] = None,
                      device: str = "cpu", geometry: Optional[Mapping[str, int]] = None) -> Any:
    """The AR model of a published checkpoint (folder or id); `dtype=None` keeps the file dtype."""
    ckpt = inspect_reference(resolve_reference(source))
    cls = model_cls or _default_ar_class()
    config = reference_ar_config(ckpt.folder, geometry)
    check_ar_keys(ckpt, cls, config)
    model, info = cls.from_pretrained(str(ckpt.folder), config=config, key_mapping=AR_KEY_MAPPING,
                                      dtype=dtype if dtype is not None else "auto", output_loading_info=True)
    allowed = {"image_prefill_embeds.weight"} if ckpt.version == "v1" else set()
    leftovers = (set(info["missing_keys"]) - allowed) | set(info["unexpected_keys"]) | set(info["mismatched_keys"])
    if leftovers:
        raise ValueError(f"{ckpt.folder}: loading left keys unmatched: {sorted(map(str, leftovers))[:8]}")
    if ckpt.version == "v1":
        pad = config.image_token_id if getattr(config, "image_token_id", None) is not None else IMAGE_PAD_ID
        with torch.no_grad():
            row = model.get_input_embeddings().weight[pad]
            model.image_prefill_embeds.weight.copy_(row.expand_as(model.image_prefill_embeds.weight))
        log.info("V1 checkpoint: image_prefill_embeds = the <|image_pad|> token embedding at all %d positions",
                 model.image_prefill_embeds.weight.shape[0])
    return model.to(device).eval()


def read_decoder_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A `torch.save`d flat {name: tensor} dict, loaded with `weights_only=True` on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"decoder file {path} does not exist")
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{path}: not a flat {{name: tensor}} state dict")
    return state


def _cast(state: dict[str, torch.Tensor], dtype: Optional[torch.dtype]) -> dict[str, torch.Tensor]:
    return state if dtype is None else {k: v.to(dtype) for k, v in state.items()}


def _take(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def split_generation_decoder(state: Mapping[str, torch.Tensor], where: str = "generation decoder"
                             ) -> dict[str, torch.Tensor]:
    """A generation decoder's flat dict (V2 prefixed or V1 unprefixed) as {'adapter.*', 'dit.*' (diffusers names)}."""
    if any(k.startswith("pipe.dit.") for k in state):
        adapter, dit = _take(state, "adapter."), _take(state, "pipe.dit.")
        other = [k for k in state if not k.startswith(("adapter.", "pipe.dit."))]
    else:  # V1: the adapter's eight tensors beside the bare DiT keys
        adapter = {k: v for k, v in state.items() if k in V1_ADAPTER_KEYS}
        dit = {k: v for k, v in state.items() if k not in V1_ADAPTER_KEYS}
        other = []
    if other:
        raise ValueError(f"{where}: unexpected keys beside adapter.* and pipe.dit.*: {sorted(other)[:8]}")
    if sorted(adapter) != sorted(V1_ADAPTER_KEYS):
        raise ValueError(f"{where}: adapter tensors {sorted(adapter)}, expected {sorted(V1_ADAPTER_KEYS)}")
    out = {f"adapter.{k}": v for k, v in adapter.items()}
    out.update({f"dit.{k}": v for k, v in fluxdit_to_diffusers(dit).items()})
    return out


def split_editing_decoder(state: Mapping[str, torch.Tensor], where: str = "editing decoder"
                          ) -> dict[str, torch.Tensor]:
    """An editing decoder's flat dict as {'embedding_merger.layers.0.*', 'embedding_merger.projector.*', 'dit.*'}."""
    other = [k for k in state if not k.startswith(("embedding_merger.layers.0.", "embedding_merger.projector.",
                                                   "pipe.dit."))]
    if other:
        raise ValueError(f"{where}: unexpected keys (an editing decoder holds embedding_merger.layers.0.*, "
                         f"embedding_merger.projector.*, pipe.dit.*): {sorted(other)[:8]}")
    out = {k: v for k, v in state.items() if k.startswith("embedding_merger.")}
    if not any(k.startswith("embedding_merger.layers.0.") for k in out) or \
            not any(k.startswith("embedding_merger.projector.") for k in out):
        raise ValueError(f"{where}: no embedding_merger.layers.0.* or embedding_merger.projector.* tensors")
    out.update({f"dit.{k}": v for k, v in fluxdit_to_diffusers(_take(state, "pipe.dit.")).items()})
    return out


def generation_decoder_state(path: str | Path, *, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """`split_generation_decoder` of a `generation_decoder.bin` / `decoder_81_512.bin` file."""
    return _cast(split_generation_decoder(read_decoder_file(path), str(path)), dtype)


def editing_decoder_state(path: str | Path, *, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """`split_editing_decoder` of an `edit_decoder.bin` file."""
    return _cast(split_editing_decoder(read_decoder_file(path), str(path)), dtype)


def dit_config_of(state: Mapping[str, torch.Tensor], axes_dims_rope: Optional[tuple[int, int, int]] = None) -> dict:
    """`FluxTransformer2DModel` kwargs for the `dit.*` part of a decoder state (FLUX.1-dev RoPE by default)."""
    return flux_transformer_config(_take(state, "dit."), axes_dims_rope=axes_dims_rope)


def _build_dit(state: Mapping[str, torch.Tensor], base_config: dict, where: str) -> Any:
    """A diffusers `FluxTransformer2DModel` of the base's config holding the `dit.*` tensors of a
    decoder state (built on the meta device, the tensors assigned: no second copy in memory)."""
    from diffusers import FluxTransformer2DModel

    dit_state = _take(state, "dit.")
    found = flux_transformer_config(dit_state, axes_dims_rope=tuple(base_config.get("axes_dims_rope", (16, 56, 56))))
    differ = {k: (v, base_config.get(k)) for k, v in found.items()
              if k != "axes_dims_rope" and base_config.get(k) is not None and base_config.get(k) != v}
    if differ:
        raise ValueError(f"{where}: the DiT weights do not fit the FLUX base's transformer config "
                         f"(weights vs base): {differ}")
    with torch.device("meta"):
        dit = FluxTransformer2DModel.from_config(base_config)
    dit.load_state_dict(dit_state, strict=True, assign=True)
    return dit


def _flux_base_config(base: str | Path) -> tuple[Path, dict]:
    """(FLUX base folder, its transformer config) for `tiny`, `paper`, a folder or a hub id."""
    from nexus_gen.models.flow_matching import resolve_flux_base as named_flux_base

    base_dir = resolve_flux_base(named_flux_base(str(base)))
    transformer_config = base_dir / "transformer" / "config.json"
    if not transformer_config.is_file():
        raise ValueError(f"FLUX base {base}: no transformer/config.json (needed for the DiT's shape)")
    return base_dir, json.loads(transformer_config.read_text(encoding="utf-8"))


def load_reference_decoders(ckpt: ReferenceCheckpoint, text_config: Any, geometry: Mapping[str, int], *,
                            base: str | Path = FLUX_BASE, dtype: torch.dtype = torch.float32,
                            decoders: tuple = ("generation", "editing")) -> tuple[Any, Any]:
    """(generation decoder, editing decoder or None) of a checked published folder on the FLUX `base`,
    for an AR of `text_config` and `geometry`; the CFG negative is the base's T5("") (computed once
    for both) or zeros when the base has no T5."""
    from nexus_gen.models.edit_decoder import EDIT_PROFILES, NexusGenEditingDecoder
    from nexus_gen.models.flow_matching import base_negative, load_flux_parts
    from nexus_gen.models.gen_decoder import GEN_PROFILES, NexusGenGenerationDecoder

    base_dir, base_config = _flux_base_config(base)
    d = int(text_config.hidden_size)
    gen = edit = None
    wanted = ("generation" in decoders) or ("editing" in decoders and ckpt.editing_decoder is not None)
    negative = base_negative(str(base_dir), dtype) if wanted else None

    def flux_parts() -> dict:
        return dict(load_flux_parts(str(base_dir), with_dit=False, dtype=dtype, negative=False),
                    negative_prompt=negative)

    if "generation" in decoders:
        state = generation_decoder_state(ckpt.generation_decoder, dtype=dtype)
        cfg = dict(GEN_PROFILES["paper"], base=str(base_dir), embed_dim=d, profile="published")
        gen = NexusGenGenerationDecoder(cfg, dit=_build_dit(state, base_config, str(ckpt.generation_decoder)),
                                        **flux_parts())
        gen.adapter.load_state_dict(_take(state, "adapter."), strict=True)
    if "editing" in decoders and ckpt.editing_decoder is not None:
        state = editing_decoder_state(ckpt.editing_decoder, dtype=dtype)
        cfg = dict(EDIT_PROFILES["paper"], base=str(base_dir), embed_dim=d, profile="published",
                   image_tokens=geometry["image_tokens"], source_tokens=geometry["source_tokens"],
                   merger_text_config=text_config.to_dict(),
                   projector_hidden=int(state["embedding_merger.projector.1.weight"].shape[0]))
        edit = NexusGenEditingDecoder(cfg, dit=_build_dit(state, base_config, str(ckpt.editing_decoder)),
                                      **flux_parts())
        edit.embedding_merger.load_state_dict(_take(state, "embedding_merger."), strict=True)
    elif "editing" in decoders:
        log.info("%s is %s: it has no editing decoder; edits go through the generation decoder",
                 ckpt.folder, ckpt.version)
    return gen, edit


def load_reference_pipeline_parts(source: str | Path, *, base: str | Path = FLUX_BASE,
                                  dtype: torch.dtype = torch.float32, decoders: tuple = ("generation", "editing"),
                                  geometry: Optional[Mapping[str, int]] = None) -> tuple[Any, Any, Any, dict]:
    """(AR model with processor, generation decoder, editing decoder or None, info) of a published
    checkpoint, the decoders built on the FLUX `base` (`tiny`, `paper`, a folder or a hub id)."""
    ckpt = inspect_reference(resolve_reference(source))
    base_dir, _ = _flux_base_config(base)  # before the AR loads: a bad base fails first
    ar = load_reference_ar(ckpt.folder, dtype=dtype, geometry=geometry)
    if getattr(ar, "processor", None) is None:
        raise ValueError(f"{ckpt.folder}: no processor files (tokenizer / preprocessor config) beside the AR weights")
    gen, edit = load_reference_decoders(ckpt, ar.config.text_config, ar.geometry, base=base_dir, dtype=dtype,
                                        decoders=decoders)
    info = {"version": ckpt.version, "edit_decoder": "editing" if ckpt.editing_decoder else "generation"}
    return ar, gen, edit, info
