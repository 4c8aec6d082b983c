"""DiffSynth-Studio `FluxDiT` <-> diffusers `FluxTransformer2DModel` state-dict conversion.

The published Nexus-Gen decoders (`generation_decoder.bin`, `edit_decoder.bin`, V1
`decoder_81_512.bin`) store the fine-tuned FLUX transformer under DiffSynth 1.x `FluxDiT` names
(facts from DiffSynth-Studio `diffsynth/models/flux_dit.py`, commit 970403f7, the 1.x line the
Nexus-Gen reference installs):

- the same global modules under other names (`time_embedder.timestep_embedder.{0,2}`,
  `guidance_embedder...`, `pooled_text_embedder.{0,2}`, `final_norm_out.linear`, `final_proj_out`);
- double blocks `blocks.N` with fused `attn.a_to_qkv` (image stream q | k | v rows) and
  `attn.b_to_qkv` (text stream), `norm1_a` / `norm1_b`, `ff_a` / `ff_b`, `attn.norm_{q,k}_{a,b}`;
- single blocks `single_blocks.N` with one `to_qkv_mlp` whose rows are q | k | v | mlp;
- `final_norm_out.linear` rows in (scale, shift) order in DiffSynth 1.x, the same as diffusers'
  `norm_out.linear`. DiffSynth 2.x changed its module to (shift, scale) and swaps the halves of
  Nexus-Gen files when loading them (`diffsynth/utils/state_dict_converters/flux_dit.py`), which
  confirms the files hold (scale, shift). `final_norm_order="shift_scale"` converts to/from 2.x.

Both directions are strict: a key that no rule covers, or a fused tensor with a part missing,
raises a `ValueError` naming the keys. The real FLUX.1-dev transformer has 1160 diffusers tensors
and 780 FluxDiT tensors (19 x 32 -> 19 x 24 in double blocks, 38 x 14 -> 38 x 8 in single blocks,
20 global ones either way)."""
from __future__ import annotations

import re
from typing import Mapping

import torch

# diffusers module name -> FluxDiT module name (outside the blocks)
_GLOBAL = {
    "time_text_embed.timestep_embedder.linear_1": "time_embedder.timestep_embedder.0",
    "time_text_embed.timestep_embedder.linear_2": "time_embedder.timestep_embedder.2",
    "time_text_embed.guidance_embedder.linear_1": "guidance_embedder.timestep_embedder.0",
    "time_text_embed.guidance_embedder.linear_2": "guidance_embedder.timestep_embedder.2",
    "time_text_embed.text_embedder.linear_1": "pooled_text_embedder.0",
    "time_text_embed.text_embedder.linear_2": "pooled_text_embedder.2",
    "context_embedder": "context_embedder",
    "x_embedder": "x_embedder",
    "norm_out.linear": "final_norm_out.linear",
    "proj_out": "final_proj_out",
}
# inside a double block (diffusers `transformer_blocks.N` <-> FluxDiT `blocks.N`)
_DOUBLE = {
    "norm1.linear": "norm1_a.linear",
    "norm1_context.linear": "norm1_b.linear",
    "attn.to_out.0": "attn.a_to_out",
    "attn.to_add_out": "attn.b_to_out",
    "attn.norm_q": "attn.norm_q_a",
    "attn.norm_k": "attn.norm_k_a",
    "attn.norm_added_q": "attn.norm_q_b",
    "attn.norm_added_k": "attn.norm_k_b",
    "ff.net.0.proj": "ff_a.0",
    "ff.net.2": "ff_a.2",
    "ff_context.net.0.proj": "ff_b.0",
    "ff_context.net.2": "ff_b.2",
}
_DOUBLE_FUSED = {
    "attn.a_to_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "attn.b_to_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
# inside a single block (diffusers `single_transformer_blocks.N` <-> FluxDiT `single_blocks.N`)
_SINGLE = {
    "norm.linear": "norm.linear",
    "attn.norm_q": "norm_q_a",
    "attn.norm_k": "norm_k_a",
    "proj_out": "proj_out",
}
_SINGLE_FUSED = {"to_qkv_mlp": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}

_BLOCK_RE = re.compile(r"^(transformer_blocks|single_transformer_blocks|blocks|single_blocks)\.(\d+)\.(.+)$")
_DIFFUSERS_BLOCK = {"transformer_blocks": "blocks", "single_transformer_blocks": "single_blocks"}
_FINAL_NORM_ORDERS = ("scale_shift", "shift_scale")


def _split_param(key: str) -> tuple[str, str]:
    """'a.b.weight' -> ('a.b', 'weight')."""
    module, _, param = key.rpartition(".")
    return module, param


def _check_order(final_norm_order: str) -> None:
    if final_norm_order not in _FINAL_NORM_ORDERS:
        raise ValueError(f"final_norm_order must be one of {_FINAL_NORM_ORDERS}, got {final_norm_order!r}")


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    half = t.shape[0] // 2
    return torch.cat([t[half:], t[:half]], dim=0)


def _fail_unknown(unknown: list[str], direction: str) -> None:
    if unknown:
        raise ValueError(f"{direction}: {len(unknown)} key(s) match no FLUX transformer rule, e.g. "
                         f"{sorted(unknown)[:8]}")


def _parse(key: str, global_names: Mapping[str, str], block_kinds: Mapping[str, object],
           final_norm_order: str) -> tuple | None:
    """('global', renamed key, tensor-fix) or ('block', kind, index, inner module, param); None if no rule."""
    module, param = _split_param(key)
    if module in global_names:
        swap = final_norm_order == "shift_scale" and "norm_out.linear" in module
        return ("global", f"{global_names[module]}.{param}", swap)
    match = _BLOCK_RE.match(key)
    if match is None or match.group(1) not in block_kinds:
        return None
    kind, index = match.group(1), match.group(2)
    return ("block", kind, index, module[len(kind) + len(index) + 2:], param)


def diffusers_to_fluxdit(state_dict: Mapping[str, torch.Tensor], *,
                         final_norm_order: str = "scale_shift") -> dict[str, torch.Tensor]:
    """Rename and fuse a diffusers `FluxTransformer2DModel` state dict into DiffSynth `FluxDiT` names."""
    _check_order(final_norm_order)
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        parsed = _parse(key, _GLOBAL, _DIFFUSERS_BLOCK, final_norm_order)
        if parsed is None:
            unknown.append(key)
        elif parsed[0] == "global":
            out[parsed[1]] = _swap_halves(tensor) if parsed[2] else tensor
        else:
            _, kind, index, inner, param = parsed
            prefix = f"{_DIFFUSERS_BLOCK[kind]}.{index}."
            renames, fused = (_DOUBLE, _DOUBLE_FUSED) if kind == "transformer_blocks" else (_SINGLE, _SINGLE_FUSED)
            target = next((name for name, parts in fused.items() if inner in parts), None)
            if inner in renames:
                out[f"{prefix}{renames[inner]}.{param}"] = tensor
            elif target is None:
                unknown.append(key)
            else:
                groups.setdefault((prefix, target, param), {})[inner] = tensor
    _fail_unknown(unknown, "diffusers -> FluxDiT")
    for (prefix, target, param), parts in sorted(groups.items()):
        fused = _DOUBLE_FUSED if prefix.startswith("blocks.") else _SINGLE_FUSED
        missing = [p for p in fused[target] if p not in parts]
        if missing:
            raise ValueError(f"diffusers -> FluxDiT: {prefix}{target}.{param} needs "
                             f"{[f'{prefix}{m}.{param}' for m in missing]} (missing from the state dict)")
        out[f"{prefix}{target}.{param}"] = torch.cat([parts[p] for p in fused[target]], dim=0)
    return out


def _split_rows(key: str, tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    if sum(sizes) != tensor.shape[0] or min(sizes) <= 0:
        raise ValueError(f"FluxDiT -> diffusers: {key} has {tensor.shape[0]} rows, cannot split into {sizes}")
    return list(torch.split(tensor, sizes, dim=0))


def _block_dim(state_dict: Mapping[str, torch.Tensor], prefix: str, fused_name: str) -> int:
    """The model width of a block: input features of its fused projection's weight."""
    weight = state_dict.get(f"{prefix}{fused_name}.weight")
    if weight is None or weight.dim() != 2:
        raise ValueError(f"FluxDiT -> diffusers: {prefix}{fused_name}.weight (2-D) is needed to split "
                         f"{prefix}{fused_name}")
    return int(weight.shape[1])


def fluxdit_to_diffusers(state_dict: Mapping[str, torch.Tensor], *,
                         final_norm_order: str = "scale_shift") -> dict[str, torch.Tensor]:
    """Rename and split a DiffSynth `FluxDiT` state dict into diffusers `FluxTransformer2DModel` names."""
    _check_order(final_norm_order)
    inverse_global = {v: k for k, v in _GLOBAL.items()}
    inverse = {"blocks": {v: k for k, v in _DOUBLE.items()},
               "single_blocks": {v: k for k, v in _SINGLE.items()}}
    back = {v: k for k, v in _DIFFUSERS_BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        parsed = _parse(key, inverse_global, inverse, final_norm_order)
        if parsed is None:
            unknown.append(key)
            continue
        if parsed[0] == "global":
            out[parsed[1]] = _swap_halves(tensor) if parsed[2] else tensor
            continue
        _, kind, index, inner, param = parsed
        prefix, new_prefix = f"{kind}.{index}.", f"{back[kind]}.{index}."
        fused = _DOUBLE_FUSED if kind == "blocks" else _SINGLE_FUSED
        if inner in inverse[kind]:
            out[f"{new_prefix}{inverse[kind][inner]}.{param}"] = tensor
        elif inner not in fused:
            unknown.append(key)
        else:
            dim = _block_dim(state_dict, prefix, inner)
            parts = fused[inner]
            sizes = [dim] * 3 if len(parts) == 3 else [dim, dim, dim, tensor.shape[0] - 3 * dim]
            for name, piece in zip(parts, _split_rows(key, tensor, sizes)):
                out[f"{new_prefix}{name}.{param}"] = piece.clone()
    _fail_unknown(unknown, "FluxDiT -> diffusers")
    return out


# where each config field is read, under FluxDiT and under diffusers names
_CONFIG_KEYS = {
    "fluxdit": dict(head="blocks.0.attn.norm_q_a.weight", double="blocks.", single="single_blocks.",
                    pooled="pooled_text_embedder.0.weight",
                    guidance="guidance_embedder.timestep_embedder.0.weight"),
    "diffusers": dict(head="transformer_blocks.0.attn.norm_q.weight", double="transformer_blocks.",
                      single="single_transformer_blocks.", pooled="time_text_embed.text_embedder.linear_1.weight",
                      guidance="time_text_embed.guidance_embedder.linear_1.weight"),
}


def flux_transformer_config(state_dict: Mapping[str, torch.Tensor], *,
                            axes_dims_rope: tuple[int, int, int] | None = None) -> dict:
    """`FluxTransformer2DModel` config kwargs read off tensor shapes (FluxDiT or diffusers names). RoPE
    axes are not stored: pass them, else FLUX.1-dev's (16, 56, 56) is used when the head dim is 128."""
    names = _CONFIG_KEYS["fluxdit" if "blocks.0.attn.norm_q_a.weight" in state_dict else "diffusers"]
    try:
        head_dim = int(state_dict[names["head"]].shape[0])
        dim = int(state_dict["x_embedder.weight"].shape[0])
        config = dict(
            in_channels=int(state_dict["x_embedder.weight"].shape[1]),
            num_layers=len({k.split(".")[1] for k in state_dict if k.startswith(names["double"])}),
            num_single_layers=len({k.split(".")[1] for k in state_dict if k.startswith(names["single"])}),
            attention_head_dim=head_dim,
            num_attention_heads=dim // head_dim,
            joint_attention_dim=int(state_dict["context_embedder.weight"].shape[1]),
            pooled_projection_dim=int(state_dict[names["pooled"]].shape[1]),
            guidance_embeds=names["guidance"] in state_dict,
        )
    except KeyError as err:
        raise ValueError(f"not a FLUX transformer state dict: missing {err.args[0]}") from None
    if axes_dims_rope is None:
        if head_dim != 128:
            raise ValueError(f"axes_dims_rope is not stored in the weights; pass it (head dim {head_dim})")
        axes_dims_rope = (16, 56, 56)
    if sum(axes_dims_rope) != head_dim:
        raise ValueError(f"axes_dims_rope {tuple(axes_dims_rope)} must sum to the head dim {head_dim}")
    config["axes_dims_rope"] = tuple(axes_dims_rope)
    return config
