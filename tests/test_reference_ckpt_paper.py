"""The published checkpoints at their real size, on the meta device (no weights): the 7B AR key
layout maps onto NexusGenAR, and full-size decoder dicts (788 and 799 tensors) split and load
strictly into the project's decoder modules and a FLUX.1-dev-shaped DiT."""
from __future__ import annotations

import json

import torch

from nexus_gen.models import reference_checkpoint as rc
from nexus_gen.models.diffsynth_flux_keys import diffusers_to_fluxdit
from reference_layout_fixtures import to_449_name

# Qwen2.5-VL-7B-Instruct's config as transformers 4.49 wrote it (flat text fields), + an auto_map
CONFIG_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "auto_map": {"AutoModelForCausalLM": "modeling_qwen2_5_vl.Qwen2_5_VLForConditionalGeneration"},
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
    "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
    "max_position_embeddings": 128000, "max_window_layers": 28, "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.49.0", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 152064,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}
# black-forest-labs/FLUX.1-dev transformer/config.json
FLUX_DEV = {"_class_name": "FluxTransformer2DModel", "attention_head_dim": 128, "guidance_embeds": True,
            "in_channels": 64, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
            "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768}


def _meta(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def _fluxdit_dev() -> dict[str, torch.Tensor]:
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(FLUX_DEV)
    return diffusers_to_fluxdit(model.state_dict())


def test_the_7b_ar_layout_maps_onto_nexus_gen_ar(tmp_path):
    from nexus_gen.models.nexus_ar import NexusGenAR

    (tmp_path / "config.json").write_text(json.dumps(CONFIG_7B))
    config = rc.reference_ar_config(tmp_path)
    with torch.device("meta"):
        model = NexusGenAR(config)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert state["vision_head.weight"] == (3584, 3584) and state["image_prefill_embeds.weight"] == (81, 3584)
    by_hand = {"visual.patch_embed.proj.weight": (1280, 3, 2, 14, 14), "visual.blocks.31.mlp.down_proj.weight":
               (1280, 3420), "visual.merger.mlp.2.weight": (3584, 5120), "model.embed_tokens.weight": (152064, 3584),
               "model.layers.27.self_attn.q_proj.bias": (3584,), "model.layers.27.self_attn.k_proj.weight": (512, 3584),
               "model.norm.weight": (3584,), "lm_head.weight": (152064, 3584)}
    for old, shape in by_hand.items():
        assert state[rc.ar_key_to_current(old)] == shape, old
    # every tensor of the model has exactly one 4.49 name and it maps back
    assert {rc.ar_key_to_current(to_449_name(k)) for k in state} == set(state)
    assert len({to_449_name(k) for k in state}) == len(state)


def test_full_size_generation_decoder_splits_into_the_modules():
    from diffusers import FluxTransformer2DModel

    from nexus_gen.models.gen_decoder import build_adapter

    adapter = _meta({"0.weight": (4096, 3584), "0.bias": (4096,), "1.weight": (4096,), "1.bias": (4096,),
                     "3.weight": (4096, 4096), "3.bias": (4096,), "4.weight": (4096,), "4.bias": (4096,)})
    dit = _fluxdit_dev()
    for flat in ({**{f"adapter.{k}": v for k, v in adapter.items()}, **{f"pipe.dit.{k}": v for k, v in dit.items()}},
                 {**adapter, **dit}):  # V2 generation_decoder.bin, V1 decoder_81_512.bin
        assert len(flat) == 788
        state = rc.split_generation_decoder(flat)
        assert len([k for k in state if k.startswith("dit.")]) == 1160
        with torch.device("meta"):
            module = build_adapter(3584, 4096)
            transformer = FluxTransformer2DModel.from_config(FLUX_DEV)
        module.load_state_dict(rc._take(state, "adapter."), strict=True, assign=True)
        transformer.load_state_dict(rc._take(state, "dit."), strict=True, assign=True)
        assert rc.dit_config_of(state)["num_single_layers"] == 38
        assert rc._build_dit(state, FLUX_DEV, "gen").config.joint_attention_dim == 4096


def test_full_size_editing_decoder_splits_into_the_merger():
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLDecoderLayer

    from nexus_gen.models.edit_decoder import PAPER_TEXT_CONFIG, EmbeddingMerger

    text = Qwen2_5_VLTextConfig(**PAPER_TEXT_CONFIG)
    with torch.device("meta"):
        layer = Qwen2_5_VLDecoderLayer(text, 0)
    flat = {f"embedding_merger.layers.0.{k}": v for k, v in layer.state_dict().items()}
    flat.update({f"embedding_merger.projector.{k}": v for k, v in _meta(
        {"0.weight": (3584,), "1.weight": (16384, 3584), "1.bias": (16384,), "2.weight": (16384,),
         "4.weight": (4096, 16384), "4.bias": (4096,), "5.weight": (4096,)}).items()})
    flat.update({f"pipe.dit.{k}": v for k, v in _fluxdit_dev().items()})
    assert len(flat) == 12 + 7 + 780
    state = rc.split_editing_decoder(flat)
    with torch.device("meta"):
        merger = EmbeddingMerger(text, 4096, 16384)
    merger.load_state_dict(rc._take(state, "embedding_merger."), strict=True, assign=True)
    assert rc._build_dit(state, FLUX_DEV, "edit").config.num_layers == 19
