"""DiffSynth FluxDiT <-> diffusers FluxTransformer2DModel key conversion: round trip, counts on the
real FLUX.1-dev shape, the names DiffSynth's own module declares, fused row orders, bad input."""
from __future__ import annotations

import pytest
import torch

from nexus_gen.models.diffsynth_flux_keys import (diffusers_to_fluxdit, flux_transformer_config,
                                                 fluxdit_to_diffusers)

TINY = dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, pooled_projection_dim=32, in_channels=64, axes_dims_rope=(4, 6, 6),
            guidance_embeds=True)

# The parameter names DiffSynth-Studio's FluxDiT declares, read from its source:
# modelscope/DiffSynth-Studio, commit 970403f7 (the 1.x line), diffsynth/models/flux_dit.py:
#   FluxJointAttention.__init__ lines 53-63 (a_to_qkv, b_to_qkv, norm_{q,k}_{a,b}, a_to_out, b_to_out),
#   FluxJointTransformerBlock.__init__ lines 112-129 (norm1_a, norm1_b, attn, ff_a.{0,2}, ff_b.{0,2};
#   AdaLayerNorm.linear from diffsynth/models/sd3_dit.py line 90),
#   AdaLayerNormSingle line 194 (linear), FluxSingleTransformerBlock.__init__ lines 213-218
#   (norm, to_qkv_mlp, norm_q_a, norm_k_a, proj_out), AdaLayerNormContinuous line 267 (linear),
#   FluxDiT.__init__ lines 282-292 (time_embedder, guidance_embedder, pooled_text_embedder,
#   context_embedder, x_embedder, blocks, single_blocks, final_norm_out, final_proj_out);
#   TimestepEmbeddings.timestep_embedder = Sequential(Linear, SiLU, Linear): sd3_dit.py lines 74-76.
EXPECTED_DOUBLE_0 = {
    "blocks.0.norm1_a.linear.weight", "blocks.0.norm1_a.linear.bias",
    "blocks.0.norm1_b.linear.weight", "blocks.0.norm1_b.linear.bias",
    "blocks.0.attn.a_to_qkv.weight", "blocks.0.attn.a_to_qkv.bias",
    "blocks.0.attn.b_to_qkv.weight", "blocks.0.attn.b_to_qkv.bias",
    "blocks.0.attn.norm_q_a.weight", "blocks.0.attn.norm_k_a.weight",
    "blocks.0.attn.norm_q_b.weight", "blocks.0.attn.norm_k_b.weight",
    "blocks.0.attn.a_to_out.weight", "blocks.0.attn.a_to_out.bias",
    "blocks.0.attn.b_to_out.weight", "blocks.0.attn.b_to_out.bias",
    "blocks.0.ff_a.0.weight", "blocks.0.ff_a.0.bias", "blocks.0.ff_a.2.weight", "blocks.0.ff_a.2.bias",
    "blocks.0.ff_b.0.weight", "blocks.0.ff_b.0.bias", "blocks.0.ff_b.2.weight", "blocks.0.ff_b.2.bias",
}
EXPECTED_SINGLE_0 = {
    "single_blocks.0.norm.linear.weight", "single_blocks.0.norm.linear.bias",
    "single_blocks.0.to_qkv_mlp.weight", "single_blocks.0.to_qkv_mlp.bias",
    "single_blocks.0.norm_q_a.weight", "single_blocks.0.norm_k_a.weight",
    "single_blocks.0.proj_out.weight", "single_blocks.0.proj_out.bias",
}
EXPECTED_GLOBAL = {
    f"{m}.{p}" for m in ("time_embedder.timestep_embedder.0", "time_embedder.timestep_embedder.2",
                         "guidance_embedder.timestep_embedder.0", "guidance_embedder.timestep_embedder.2",
                         "pooled_text_embedder.0", "pooled_text_embedder.2", "context_embedder",
                         "x_embedder", "final_norm_out.linear", "final_proj_out") for p in ("weight", "bias")
}


def _tiny_state() -> dict[str, torch.Tensor]:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**TINY)
    # distinct random values everywhere (norm weights start at 1, biases at 0)
    return {k: torch.randn_like(v) for k, v in model.state_dict().items()}


def test_round_trip_is_identical_and_every_key_is_covered():
    state = _tiny_state()
    fluxdit = diffusers_to_fluxdit(state)
    back = fluxdit_to_diffusers(fluxdit)
    assert set(back) == set(state)
    for key, tensor in state.items():
        assert torch.equal(back[key], tensor), key
    assert set(fluxdit) == EXPECTED_DOUBLE_0 | EXPECTED_SINGLE_0 | EXPECTED_GLOBAL
    assert len(state) == 32 + 14 + 20 and len(fluxdit) == 24 + 8 + 20


def test_fused_rows_follow_diffsynth_order():
    state = _tiny_state()
    fd = diffusers_to_fluxdit(state)
    t, s = "transformer_blocks.0.attn.", "single_transformer_blocks.0."
    for p in ("weight", "bias"):
        assert torch.equal(fd[f"blocks.0.attn.a_to_qkv.{p}"],
                           torch.cat([state[f"{t}to_q.{p}"], state[f"{t}to_k.{p}"], state[f"{t}to_v.{p}"]]))
        assert torch.equal(fd[f"blocks.0.attn.b_to_qkv.{p}"], torch.cat(
            [state[f"{t}add_q_proj.{p}"], state[f"{t}add_k_proj.{p}"], state[f"{t}add_v_proj.{p}"]]))
        assert torch.equal(fd[f"single_blocks.0.to_qkv_mlp.{p}"], torch.cat(
            [state[f"{s}attn.to_q.{p}"], state[f"{s}attn.to_k.{p}"], state[f"{s}attn.to_v.{p}"],
             state[f"{s}proj_mlp.{p}"]]))
    # 7 x dim rows (q, k, v: 32 each, mlp: 128), the shape DiffSynth declares: Linear(dim, dim * (3 + 4))
    assert fd["single_blocks.0.to_qkv_mlp.weight"].shape == (7 * 32, 32)
    # (scale, shift) kept as in diffusers for the 1.x files; the 2.x module order swaps the halves
    assert torch.equal(fd["final_norm_out.linear.weight"], state["norm_out.linear.weight"])
    fd2 = diffusers_to_fluxdit(state, final_norm_order="shift_scale")
    w = state["norm_out.linear.weight"]
    assert torch.equal(fd2["final_norm_out.linear.weight"], torch.cat([w[32:], w[:32]]))
    assert torch.equal(fluxdit_to_diffusers(fd2, final_norm_order="shift_scale")["norm_out.linear.weight"], w)


def test_fused_projection_computes_the_same_as_the_parts():
    state = _tiny_state()
    fd = diffusers_to_fluxdit(state)
    x = torch.randn(3, 32)
    fused = torch.nn.functional.linear(x, fd["single_blocks.0.to_qkv_mlp.weight"], fd["single_blocks.0.to_qkv_mlp.bias"])
    s = "single_transformer_blocks.0."
    k = torch.nn.functional.linear(x, state[f"{s}attn.to_k.weight"], state[f"{s}attn.to_k.bias"])
    mlp = torch.nn.functional.linear(x, state[f"{s}proj_mlp.weight"], state[f"{s}proj_mlp.bias"])
    assert torch.allclose(fused[:, 32:64], k, atol=1e-6) and torch.allclose(fused[:, 96:], mlp, atol=1e-6)


def test_real_flux_dev_shape_has_1160_diffusers_and_780_fluxdit_tensors():
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=19, num_single_layers=38, guidance_embeds=True)
    state = model.state_dict()
    fd = diffusers_to_fluxdit(state)
    assert len(state) == 1160 and len(fd) == 780  # 780: the count NEXUS_GEN.md gives for the files
    assert fd["single_blocks.37.to_qkv_mlp.weight"].shape == (3072 * 7, 3072)
    assert fd["blocks.18.attn.a_to_qkv.weight"].shape == (3072 * 3, 3072)
    back = fluxdit_to_diffusers(fd)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in state.items()}
    assert flux_transformer_config(state) == flux_transformer_config(fd) == dict(
        in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
        joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def test_config_from_fluxdit_builds_a_model_that_loads_strictly():
    from diffusers import FluxTransformer2DModel

    state = _tiny_state()
    config = flux_transformer_config(diffusers_to_fluxdit(state), axes_dims_rope=(4, 6, 6))
    assert config == TINY
    model = FluxTransformer2DModel(**config)
    model.load_state_dict(fluxdit_to_diffusers(diffusers_to_fluxdit(state)), strict=True)
    assert flux_transformer_config(state, axes_dims_rope=(4, 6, 6)) == TINY  # diffusers names too
    with pytest.raises(ValueError, match="axes_dims_rope"):
        flux_transformer_config(diffusers_to_fluxdit(state))


def test_bad_input_names_the_keys():
    state = _tiny_state()
    fd = diffusers_to_fluxdit(state)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.a_to_qkv\.weight.*to_k"):
        diffusers_to_fluxdit({k: v for k, v in state.items() if k != "transformer_blocks.0.attn.to_k.weight"})
    with pytest.raises(ValueError, match="adapter.0.weight"):
        fluxdit_to_diffusers({**fd, "adapter.0.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"52 key\(s\).*pipe\.dit\.blocks\.0\.attn\.a_to_out\.bias"):
        fluxdit_to_diffusers({"pipe.dit." + k: v for k, v in fd.items()})
    with pytest.raises(ValueError, match="blocks.0.attn.to_qx.weight"):
        diffusers_to_fluxdit({**state, "transformer_blocks.0.attn.to_qx.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="rows"):
        fluxdit_to_diffusers({**fd, "blocks.0.attn.a_to_qkv.bias": torch.zeros(95)})
    with pytest.raises(ValueError, match="final_norm_order"):
        diffusers_to_fluxdit(state, final_norm_order="shift-scale")
