"""FSDP for the training loop (`train.strategy: fsdp`, or an `accelerate launch` with an FSDP
config): torch's FSDP2 `fully_shard` over the stage's blocks (`TrainStage.shard_units`, class
names), then over the whole model (the root unit holds the rest: embeddings, heads, adapters);
bf16 mixed precision on CUDA (`MixedPrecisionPolicy`: bf16 compute and all-gathers, fp32
gradient reduction, fp32 sharded master weights and Adam states).

Frozen parameters inside a unit are sharded with it (FSDP2 takes units that mix frozen and
trainable parameters; the frozen ones get no gradient). Frozen parameters outside every unit (the
AR model's ViT + merger, the decoders' VAE and CLIP) are not sharded: they stay whole on every
rank (`ignored_params`) and cost no collective. That is also what makes the AR stage work at all:
its ViT runs 0, 1 or 2 times per batch (input images, output-image targets) depending on the
samples, so per-block ViT units would all-gather a different number of times on each rank and the
collectives would not match. Parameters a rank does not use in a step (an AR batch without output
images) reduce-scatter a zero gradient (`set_reduce_scatter_unused_params`, as DDP's
`find_unused_parameters`), so every rank runs the same collectives.

Checkpoints are sharded (`torch.distributed.checkpoint`): each rank writes its shard of the
trainable weights and of the optimizer states into `ckpt-<step>/sharded/`; nothing is gathered,
so a 12B checkpoint costs each rank only its 1/world share. The final model is gathered once to
rank 0 (CPU) and saved by the stage in its usual layout."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch

log = logging.getLogger(__name__)

SHARDED_DIR = "sharded"
FSDP_ENV = "ACCELERATE_USE_FSDP"
DEEPSPEED_ENV = "ACCELERATE_USE_DEEPSPEED"


def _env_on(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in ("1", "true", "yes")


def resolve_strategy(configured: str, world: int) -> str:
    """The strategy this run uses: `fsdp` when the config asks for it or an accelerate FSDP launch
    set ACCELERATE_USE_FSDP; with one process FSDP has nothing to shard over and the run is a plain
    single-process one (`ddp`, logged as a warning). Raises ValueError under a DeepSpeed launch."""
    if _env_on(DEEPSPEED_ENV):
        raise ValueError(f"launched with an accelerate DeepSpeed config ({DEEPSPEED_ENV}): this loop shards with "
                         f"FSDP, not DeepSpeed; launch it with datasets_spec/train/accelerate_fsdp.yaml (or "
                         f"train.strategy: fsdp under torchrun), or train with ZeRO-3 through the reference "
                         f"trainers (README, 'Training')")
    strategy = configured
    if _env_on(FSDP_ENV) and configured != "fsdp":
        log.info("accelerate FSDP launch (%s): train.strategy %s -> fsdp", FSDP_ENV, configured)
        strategy = "fsdp"
    if strategy == "fsdp" and world == 1:
        log.warning("train.strategy fsdp with 1 process: nothing to shard over; training unsharded")
        return "ddp"
    return strategy


def mixed_precision(device: torch.device, precision: str) -> Optional[Any]:
    """FSDP2's policy: bf16 parameters for compute and all-gathers, fp32 gradient reduce-scatter,
    on CUDA with `precision: bf16`; None (fp32 throughout) otherwise."""
    if device.type != "cuda" or precision != "bf16":
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def shard_model(model: torch.nn.Module, units: tuple[str, ...], device: torch.device, precision: str,
                stage: str) -> dict[str, int]:
    """`fully_shard` every module whose class name is in `units` (innermost first), then the whole
    model, on a 1-D mesh of all processes; parameters move to `device` unit by unit; frozen
    parameters outside the units stay whole (moved to `device` with all FSDP does not manage).
    Returns the number of units per class name. Raises ValueError when `units` name no module."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    found = [(n, m) for n, m in model.named_modules() if n and type(m).__name__ in units]
    if units and not found:
        names = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError(f"train.strategy fsdp: the {stage} stage's shard units {list(units)} name no module of "
                         f"its model ({type(model).__name__}; its module classes include {names[:12]})")
    world = torch.distributed.get_world_size()
    mesh = init_device_mesh(device.type, (world,))
    kwargs: dict[str, Any] = {"mesh": mesh}
    policy = mixed_precision(device, precision)
    if policy is not None:
        kwargs["mp_policy"] = policy
    if not units:
        log.warning("stage %s names no shard units: FSDP shards the whole model as one unit (all-gathered "
                    "at once in forward and backward)", stage)
    counts: dict[str, int] = {}
    for _, module in reversed(found):  # innermost first: a unit inside another is sharded before it
        name = type(module).__name__  # (fully_shard changes the class to FSDP<name>)
        fully_shard(module, **kwargs)
        counts[name] = counts.get(name, 0) + 1
    inside = {id(p) for _, m in found for p in m.parameters()}
    whole = {p for p in model.parameters() if not p.requires_grad and id(p) not in inside}
    fully_shard(model, ignored_params=whole or None, **kwargs)
    # what FSDP does not manage: the parameters kept whole, and modules a model keeps out of its
    # registered children (the decoders' VAE, moved by their `_apply`); the shards are there already
    model.to(device)
    model.set_reduce_scatter_unused_params(True)
    log.info("FSDP over %d processes: %s units + the root%s; %d frozen parameters outside them kept whole",
             world, ", ".join(f"{v} {k}" for k, v in counts.items()) or "no", " (bf16 compute)" if policy else "",
             sum(p.numel() for p in whole))
    return counts


def grad_norm_value(norm: torch.Tensor) -> torch.Tensor:
    """`clip_grad_norm_`'s total norm as a plain tensor (under FSDP2 it is a replicated DTensor,
    already reduced over every shard)."""
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def _states(model: torch.nn.Module, optimizer: torch.optim.Optimizer, trainable: set[str]) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    model_sd = {k: v for k, v in get_model_state_dict(model).items() if k in trainable or k not in params}
    return {"model": model_sd, "optim": get_optimizer_state_dict(model, optimizer)}


def save_sharded(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 trainable: set[str]) -> None:
    """Every rank writes its shards of the trainable weights (and buffers) and of the optimizer
    states into `folder/sharded` (a collective; the folder must exist, on a filesystem all ranks share)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_states(model, optimizer, trainable), checkpoint_id=str(Path(folder) / SHARDED_DIR))


def load_sharded(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 trainable: set[str]) -> None:
    """Load what `save_sharded` wrote into the sharded model and its optimizer (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    path = Path(folder) / SHARDED_DIR
    if not (path / ".metadata").is_file():
        raise ValueError(f"{folder}: no sharded (FSDP) state in {SHARDED_DIR}/; it was written by an unsharded run")
    state = _states(model, optimizer, trainable)
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, state["optim"])


def gather_full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict gathered to rank 0 on CPU (empty on the other ranks; a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
