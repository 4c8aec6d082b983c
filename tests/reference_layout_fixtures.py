"""Writing tiny checkpoints in the published Nexus-Gen layout (test helper).

The AR folder imitates what transformers 4.49 wrote for Nexus-GenV2: a flat `qwen2_5_vl` config
with an `auto_map` to remote code, bf16 safetensors shards in the 4.49 key layout (`visual.*`,
`model.*`, untied `lm_head.weight`) listed by `model.safetensors.index.json`, plus
`vision_head.weight` and (V2) `image_prefill_embeds.weight`. The decoders are `torch.save`d flat
dicts with the DiT under DiffSynth FluxDiT names. Every tensor is seeded random, so a loader that
puts a tensor in the wrong place is caught by value."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

D = 32  # AR text hidden size = embedding dim
J = 32  # FLUX joint_attention_dim
N_TOKENS = 4
GEOMETRY = {"image_tokens": N_TOKENS, "image_size": 56, "source_image_size": 112, "source_tokens": 16}
FLUX = dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=J, pooled_projection_dim=32, in_channels=64, axes_dims_rope=(4, 6, 6),
            guidance_embeds=True)
IDS = dict(vision_start_token_id=248, vision_end_token_id=249, vision_token_id=250, image_token_id=251,
           video_token_id=252, bos_token_id=253, eos_token_id=254)
CONFIG_449 = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "auto_map": {"AutoConfig": "configuration_qwen2_5_vl.Qwen2_5_VLConfig",
                 "AutoModelForCausalLM": "modeling_qwen2_5_vl.Qwen2_5_VLForConditionalGeneration"},
    "attention_dropout": 0.0, **IDS, "hidden_act": "silu", "hidden_size": D, "initializer_range": 0.02,
    "intermediate_size": 64, "max_position_embeddings": 1024, "max_window_layers": 28,
    "model_type": "qwen2_5_vl", "num_attention_heads": 2, "num_hidden_layers": 2, "num_key_value_heads": 1,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.49.0", "use_cache": True, "use_sliding_window": False,
    "vision_config": {"depth": 1, "hidden_act": "silu", "hidden_size": 32, "intermediate_size": 64,
                      "num_heads": 2, "in_chans": 3, "out_hidden_size": D, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 56,
                      "fullatt_block_indexes": [0], "tokens_per_second": 2, "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    "vocab_size": 256,
}


def ar_like_class():
    """A stand-in with the planned `NexusGenAR` extras (top-level `vision_head`, `image_prefill_embeds`)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    class ARLike(Qwen2_5_VLForConditionalGeneration):
        def __init__(self, config):
            super().__init__(config)
            dim = config.text_config.hidden_size
            tokens = (getattr(config, "nexus_gen", None) or {"image_tokens": 81})["image_tokens"]
            self.vision_head = torch.nn.Linear(dim, dim, bias=False)
            self.image_prefill_embeds = torch.nn.Embedding(tokens, dim)
            self.post_init()

    return ARLike


def _random_like(state: dict[str, torch.Tensor], seed: int, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen).to(dtype) for k, v in state.items()}


def current_ar_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """Seeded bf16 values for every AR tensor, under current transformers names."""
    from transformers import Qwen2_5_VLConfig

    config = Qwen2_5_VLConfig.from_dict({k: v for k, v in CONFIG_449.items() if k != "auto_map"})
    config.nexus_gen = dict(GEOMETRY)
    with torch.device("meta"):
        model = ar_like_class()(config)
    return _random_like(dict(model.state_dict()), seed)


def to_449_name(key: str) -> str:
    """Current -> 4.49 layout, written out by hand for the fixture."""
    if key.startswith("model.visual."):
        return "visual." + key[len("model.visual."):]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key


def write_ar(folder: Path, state: dict[str, torch.Tensor], *, v1: bool = False, shards: int = 2,
             config: dict | None = None) -> None:
    """Config + `shards` safetensors files + index, in the 4.49 layout."""
    folder.mkdir(parents=True, exist_ok=True)
    flat = {to_449_name(k): v for k, v in state.items() if not (v1 and k == "image_prefill_embeds.weight")}
    names = sorted(flat)
    weight_map, total = {}, 0
    for i in range(shards):
        part = names[i::shards]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: flat[k].contiguous() for k in part}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
        total += sum(flat[k].numel() * flat[k].element_size() for k in part)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(config or CONFIG_449, indent=2))


def diffusers_dit_state(seed: int) -> dict[str, torch.Tensor]:
    """Seeded values for a tiny diffusers FluxTransformer2DModel."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**FLUX)
    return _random_like(dict(model.state_dict()), seed)


def adapter_state(seed: int) -> dict[str, torch.Tensor]:
    """Linear(D,J) - LayerNorm(J) - ReLU - Linear(J,J) - LayerNorm(J): keys 0, 1, 3, 4."""
    shapes = {"0.weight": (J, D), "0.bias": (J,), "1.weight": (J,), "1.bias": (J,),
              "3.weight": (J, J), "3.bias": (J,), "4.weight": (J,), "4.bias": (J,)}
    return _random_like({k: torch.empty(s) for k, s in shapes.items()}, seed)


def merger_state(seed: int) -> dict[str, torch.Tensor]:
    """One Qwen2.5-VL decoder layer (`layers.0.*`) + projector RMSNorm-Linear-RMSNorm-SiLU-Linear-RMSNorm."""
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLDecoderLayer

    config = Qwen2_5_VLConfig.from_dict({k: v for k, v in CONFIG_449.items() if k != "auto_map"})
    with torch.device("meta"):
        layer = Qwen2_5_VLDecoderLayer(config.text_config, 0)
    shapes = {f"layers.0.{k}": tuple(v.shape) for k, v in layer.state_dict().items()}
    shapes.update({"projector.0.weight": (D,), "projector.1.weight": (4 * J, D), "projector.1.bias": (4 * J,),
                   "projector.2.weight": (4 * J,), "projector.4.weight": (J, 4 * J), "projector.4.bias": (J,),
                   "projector.5.weight": (J,)})
    return _random_like({k: torch.empty(s) for k, s in shapes.items()}, seed)


def write_decoders(folder: Path, *, v1: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """The decoder .bin files; returns the source tensors under the names they should load to."""
    from nexus_gen.models.diffsynth_flux_keys import diffusers_to_fluxdit

    gen_dit, adapter = diffusers_dit_state(11), adapter_state(12)
    expected = {"generation": {**{f"adapter.{k}": v for k, v in adapter.items()},
                               **{f"dit.{k}": v for k, v in gen_dit.items()}}}
    fd = diffusers_to_fluxdit(gen_dit)
    if v1:
        torch.save({**adapter, **fd}, folder / "decoder_81_512.bin")
        return expected
    torch.save({**{f"adapter.{k}": v for k, v in adapter.items()},
                **{f"pipe.dit.{k}": v for k, v in fd.items()}}, folder / "generation_decoder.bin")
    edit_dit, merger = diffusers_dit_state(13), merger_state(14)
    torch.save({**{f"embedding_merger.{k}": v for k, v in merger.items()},
                **{f"pipe.dit.{k}": v for k, v in diffusers_to_fluxdit(edit_dit).items()}},
               folder / "edit_decoder.bin")
    expected["editing"] = {**{f"embedding_merger.{k}": v for k, v in merger.items()},
                           **{f"dit.{k}": v for k, v in edit_dit.items()}}
    return expected


def write_published(folder: Path, *, v1: bool = False) -> dict:
    """A whole tiny published-layout checkpoint; returns {'ar': current-name AR state, 'generation', 'editing'}."""
    ar = current_ar_state()
    write_ar(folder, ar, v1=v1)
    return {"ar": ar, **write_decoders(folder, v1=v1)}


def flat_449_config(config) -> dict:
    """A transformers-4.49-style flat `qwen2_5_vl` config.json for a current Qwen2_5_VLConfig, with
    an `auto_map` to remote code and no `nexus_gen` key (as the published config)."""
    text, vision = config.text_config.to_dict(), config.vision_config.to_dict()
    rope = text.get("rope_parameters") or {}
    out = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "auto_map": CONFIG_449["auto_map"],
           "model_type": "qwen2_5_vl", "transformers_version": "4.49.0", "torch_dtype": "float32",
           "tie_word_embeddings": False, "rope_theta": rope.get("rope_theta", 1000000.0),
           "rope_scaling": {"type": "mrope", "mrope_section": list(rope["mrope_section"])}}
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "hidden_act",
                "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id", "sliding_window",
                "use_sliding_window", "max_window_layers", "initializer_range"):
        if text.get(key) is not None:
            out[key] = text[key]
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        out[key] = getattr(config, key)
    out["vision_config"] = {k: vision[k] for k in (
        "depth", "hidden_act", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size", "patch_size",
        "spatial_merge_size", "temporal_patch_size", "window_size", "fullatt_block_indexes", "tokens_per_second")}
    out["vision_config"]["in_chans"] = vision.get("in_channels", 3)
    return out


def write_published_from_pipeline(pipe, folder: Path, *, v1: bool = False) -> None:
    """A `NexusGenPipeline`'s weights written in the published layout (AR in 4.49 names with an
    untied lm_head copy, processor files, decoders as FluxDiT-named .bin files)."""
    from nexus_gen.models.diffsynth_flux_keys import diffusers_to_fluxdit

    folder.mkdir(parents=True, exist_ok=True)
    ar = pipe.ar
    state = {k: v.detach().clone() for k, v in ar.state_dict().items()}
    state["lm_head.weight"] = ar.get_output_embeddings().weight.detach().clone()
    write_ar(folder, state, v1=v1, config=flat_449_config(ar.config))
    ar.processor.save_pretrained(str(folder))
    ar.generation_config.save_pretrained(str(folder))

    def dit_part(dec) -> dict:
        return {f"pipe.dit.{k}": v for k, v in diffusers_to_fluxdit(
            {k: v.detach().clone() for k, v in dec.dit.state_dict().items()}).items()}

    gen = pipe.generation_decoder
    adapter = {f"{k}": v.detach().clone() for k, v in gen.adapter.state_dict().items()}
    if v1:
        torch.save({**adapter, **{k[len("pipe.dit."):]: v for k, v in dit_part(gen).items()}},
                   folder / "decoder_81_512.bin")
        return
    torch.save({**{f"adapter.{k}": v for k, v in adapter.items()}, **dit_part(gen)}, folder / "generation_decoder.bin")
    edit = pipe.editing_decoder
    merger = {f"embedding_merger.{k}": v.detach().clone() for k, v in edit.embedding_merger.state_dict().items()}
    torch.save({**merger, **dit_part(edit)}, folder / "edit_decoder.bin")
