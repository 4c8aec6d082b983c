"""The decoders' module layouts and key names against the reference checkpoints' (paper sizes,
on the meta device: nothing allocated), and the tiny FLUX folder's FLUX facts."""
from __future__ import annotations

import json

import torch

from nexus_gen.models.edit_decoder import EmbeddingMerger, default_text_config
from nexus_gen.models.gen_decoder import build_adapter
from nexus_gen.models.tiny.flux_tiny import tiny_flux_dir

# generation_decoder.bin's adapter (Linear 3584->4096, LayerNorm, ReLU, Linear 4096->4096, LayerNorm).
PAPER_ADAPTER = {
    "0.weight": (4096, 3584), "0.bias": (4096,), "1.weight": (4096,), "1.bias": (4096,),
    "3.weight": (4096, 4096), "3.bias": (4096,), "4.weight": (4096,), "4.bias": (4096,),
}
# edit_decoder.bin's embedding_merger: one Qwen2.5-VL-7B text layer (28 heads of 128, 4 KV heads,
# MLP 18944) + projector RMSNorm(3584), Linear(3584, 16384), RMSNorm(16384), SiLU, Linear(16384,
# 4096), RMSNorm(4096).
PAPER_MERGER = {
    "layers.0.self_attn.q_proj.weight": (3584, 3584), "layers.0.self_attn.q_proj.bias": (3584,),
    "layers.0.self_attn.k_proj.weight": (512, 3584), "layers.0.self_attn.k_proj.bias": (512,),
    "layers.0.self_attn.v_proj.weight": (512, 3584), "layers.0.self_attn.v_proj.bias": (512,),
    "layers.0.self_attn.o_proj.weight": (3584, 3584),
    "layers.0.mlp.gate_proj.weight": (18944, 3584), "layers.0.mlp.up_proj.weight": (18944, 3584),
    "layers.0.mlp.down_proj.weight": (3584, 18944),
    "layers.0.input_layernorm.weight": (3584,), "layers.0.post_attention_layernorm.weight": (3584,),
    "projector.0.weight": (3584,), "projector.1.weight": (16384, 3584), "projector.1.bias": (16384,),
    "projector.2.weight": (16384,), "projector.4.weight": (4096, 16384), "projector.4.bias": (4096,),
    "projector.5.weight": (4096,),
}


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_paper_adapter_keys_and_shapes():
    with torch.device("meta"):
        adapter = build_adapter(3584, 4096)
    assert _shapes(adapter) == PAPER_ADAPTER
    assert [type(m).__name__ for m in adapter] == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm"]


def test_paper_merger_keys_and_shapes():
    with torch.device("meta"):
        merger = EmbeddingMerger(default_text_config(3584), joint_dim=4096)
    assert _shapes(merger) == PAPER_MERGER
    assert [type(m).__name__ for m in merger.projector] == [
        "Qwen2_5_VLRMSNorm", "Linear", "Qwen2_5_VLRMSNorm", "SiLU", "Linear", "Qwen2_5_VLRMSNorm"]
    assert type(merger.layers[0]).__name__ == "Qwen2_5_VLDecoderLayer"
    assert merger.projector[0].variance_epsilon == 1e-6  # Qwen2.5-VL-7B's rms_norm_eps


def test_tiny_flux_folder_has_flux_facts():
    d = tiny_flux_dir()
    vae = json.loads((d / "vae" / "config.json").read_text())
    dit = json.loads((d / "transformer" / "config.json").read_text())
    clip = json.loads((d / "text_encoder" / "config.json").read_text())
    sched = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    assert vae["latent_channels"] == 16 and vae["scaling_factor"] == 0.3611
    assert vae["shift_factor"] == 0.1159 and len(vae["block_out_channels"]) == 4  # 8x down
    assert dit["_class_name"] == "FluxTransformer2DModel" and dit["guidance_embeds"] is True
    assert dit["in_channels"] == 64  # 16 latent channels x 2x2 packing
    assert dit["pooled_projection_dim"] == clip["hidden_size"]  # FLUX pools CLIP's hidden state
    assert sched["_class_name"] == "FlowMatchEulerDiscreteScheduler" and sched["shift"] == 3.0
    assert sched["use_dynamic_shifting"] is True
    assert not (d / "model_index.json").exists()  # no T5: not a whole FluxPipeline
