"""Training checkpoints `RUN/ckpt-<step>/`: the trainable weights (safetensors), optimizer and
scheduler states, every rank's RNG states and data position, the config hash and the step. Under
FSDP the weights and optimizer states are `sharded/` (torch.distributed.checkpoint, written by
every rank; `train_sharding`) instead of `trainable.safetensors` + `optimizer.pt`; `state.json`
says which (`format`: full | sharded).
Written under a temporary name and renamed (a reader never sees half a checkpoint); the oldest
beyond `keep_last` are removed after a new one is complete."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

PREFIX = "ckpt-"
_NAME = re.compile(r"ckpt-(\d+)")
WEIGHTS = "trainable.safetensors"
STATE = "state.json"


class CheckpointMismatch(ValueError):
    """A checkpoint written under a config that differs in what matters (stage, model, data,
    seed, batch geometry, LoRA)."""


def checkpoints(run_dir: Union[str, Path]) -> list[tuple[int, Path]]:
    """Finished checkpoints of a run as (step, folder), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if p.is_dir() and (m := _NAME.fullmatch(p.name)) and (p / STATE).is_file()]
    return sorted(found)


def latest_checkpoint(run_dir: Union[str, Path]) -> Optional[Path]:
    """The newest finished checkpoint, or None."""
    found = checkpoints(run_dir)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, numpy, python) as plain, weights-only-loadable data."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (requires_grad) and the persistent buffers, by name, on CPU."""
    out = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    out.update({n: b for n, b in model.state_dict().items() if n not in params and torch.is_tensor(b)})
    seen: set[int] = set()
    result = {}
    for n, t in out.items():
        t = t.detach().to("cpu")
        key = t.untyped_storage().data_ptr() if t.numel() else -len(result) - 1
        result[n] = t.clone().contiguous() if key in seen else t.contiguous()  # safetensors refuses shared storage
        seen.add(key)
    return result


def tmp_dir(run_dir: Union[str, Path], step: int) -> Path:
    """Where `ckpt-<step>/` is written before it is renamed into place."""
    return Path(run_dir) / f".{PREFIX}{step}.tmp"


def fresh_tmp(run_dir: Union[str, Path], step: int) -> Path:
    """The (emptied) folder `ckpt-<step>/` is written in before it is renamed into place."""
    tmp = tmp_dir(run_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(run_dir: Union[str, Path], step: int, model_state: Optional[dict[str, torch.Tensor]],
                    optimizer: Optional[dict[str, Any]], scheduler: dict[str, Any], ranks: list[dict[str, Any]],
                    state: dict[str, Any], keep_last: int, tmp: Optional[Path] = None) -> Path:
    """Write `ckpt-<step>/` atomically; `ranks` holds each rank's {"rng": .., "data": ..};
    `state` is JSON (step, config hash, ...). Removes checkpoints older than the last `keep_last`.
    `model_state` / `optimizer` None: the sharded state was already written into `tmp`
    (`fresh_tmp`, then every rank's `train_sharding.save_sharded`)."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    final = run_dir / f"{PREFIX}{step}"
    if tmp is None:
        tmp = fresh_tmp(run_dir, step)
    if model_state is not None:
        save_file(model_state, str(tmp / WEIGHTS))
    if optimizer is not None:
        torch.save(optimizer, tmp / "optimizer.pt")
    torch.save(scheduler, tmp / "scheduler.pt")
    torch.save([r["rng"] for r in ranks], tmp / "rng.pt")
    fmt = "full" if model_state is not None else "sharded"
    (tmp / STATE).write_text(json.dumps({**state, "step": step, "format": fmt, "data": [r["data"] for r in ranks]},
                                        indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    if final.exists():  # the same step again (a resumed run that died before its next checkpoint)
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Everything `save_checkpoint` wrote: {"model", "optimizer", "scheduler", "rng" (per rank), "state"};
    "model" and "optimizer" are None in a sharded checkpoint (`train_sharding.load_sharded` reads those)."""
    from safetensors.torch import load_file

    path = Path(path)
    full = checkpoint_format(read_state(path)) == "full"
    return {"model": load_file(str(path / WEIGHTS), device=str(map_location)) if full else None,
            "optimizer": torch.load(path / "optimizer.pt", map_location=map_location, weights_only=True)
            if full else None,
            "scheduler": torch.load(path / "scheduler.pt", weights_only=True),
            "rng": torch.load(path / "rng.pt", weights_only=True),
            "state": json.loads((path / STATE).read_text(encoding="utf-8"))}


def read_state(path: Union[str, Path]) -> dict[str, Any]:
    """Only the JSON state of a checkpoint (cheap: for checking it before building anything)."""
    return json.loads((Path(path) / STATE).read_text(encoding="utf-8"))


def checkpoint_format(state: dict[str, Any]) -> str:
    """`full` (trainable.safetensors + optimizer.pt) or `sharded` (FSDP); checkpoints from before
    the field existed are full."""
    return str(state.get("format", "full"))


def check_compatible(state: dict[str, Any], config_hash: str, fields: dict[str, Any], path: Path) -> None:
    """Raise `CheckpointMismatch` naming the fields that differ when the checkpoint's config hash
    is not `config_hash`."""
    if state.get("config_hash") == config_hash:
        return
    theirs = state.get("hashed_fields", {})
    ours = json.loads(json.dumps(fields, default=str))
    differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    detail = "; ".join(f"{k}: checkpoint {json.dumps(theirs.get(k), sort_keys=True)[:200]} vs config "
                       f"{json.dumps(ours.get(k), sort_keys=True)[:200]}" for k in differ)
    raise CheckpointMismatch(f"{path} was written by another config (hash {state.get('config_hash')} vs "
                             f"{config_hash}); differing: {detail or 'unknown fields'}. Resume it with its "
                             f"own config, or train into another output folder")
