"""The train config (YAML): which stage, its `model:` and `data:` sections (validated by the stage
itself, whose constructor runs here, so a bad key fails before any work), the loop's `train:`,
`checkpoint:` and `log:` sections, and `output_dir`.

`data:` holds the loop's keys (`shards`, `split`, `shuffle_window`) beside the stage's own; the
stage receives `data:` without the loop's keys. Errors name the file, the dotted key and what is
allowed."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from nexus_gen.train.stage_api import TrainStage
from nexus_gen.train.train_data import resolve_shards
from nexus_gen.train.stages import StageError, stage_class, stage_names

LOOP_DATA_KEYS = ("shards", "split", "shuffle_window")


class TrainConfigError(ValueError):
    """A train config that cannot be used, with the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSection(_Strict):
    """LoRA through peft: only the adapters train (the stage's other trainable parts are frozen)."""
    r: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: Optional[list[str]] = None  # None: the stage's `lora_targets`


class TrainSection(_Strict):
    seed: int = 0
    max_steps: Optional[int] = Field(None, gt=0)  # optimizer steps; or `epochs`
    epochs: Optional[float] = Field(None, gt=0)   # over the samples of the stage's tasks
    batch_size: int = Field(1, gt=0)              # per process and micro step
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: Optional[int] = Field(None, ge=0)
    warmup_ratio: Optional[float] = Field(None, ge=0, le=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # the cosine's floor, a fraction of lr
    max_grad_norm: Optional[float] = Field(1.0, gt=0)  # None: no clipping
    precision: Literal["fp32", "bf16"] = "fp32"   # bf16 autocast on CUDA; on CPU: fp32 (logged)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gradient_checkpointing: bool = False
    lora: Optional[LoraSection] = None
    # ddp: every process holds the whole model; fsdp: parameters, gradients and optimizer states
    # sharded over the processes (FSDP2, per block; 1 process: unsharded, with a warning)
    strategy: Literal["ddp", "fsdp"] = "ddp"

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {list(v)}")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> "TrainSection":
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("give max_steps or epochs, not both")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("give warmup_steps or warmup_ratio, not both")
        if self.strategy == "fsdp" and self.lora is not None:
            raise ValueError("strategy fsdp with lora: not supported (LoRA keeps optimizer states small; "
                             "train it with strategy ddp)")
        return self

    def warmup_for(self, total_steps: int) -> int:
        """Warmup steps for a run of `total_steps` optimizer steps."""
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return int(round((self.warmup_ratio or 0.0) * total_steps))


class CheckpointSection(_Strict):
    every_steps: int = Field(500, gt=0)
    keep_last: int = Field(2, gt=0)


class LogSection(_Strict):
    every_steps: int = Field(10, gt=0)


class DataSection(BaseModel):
    """The loop's data keys; the stage's own keys pass through (and are validated by the stage)."""
    model_config = ConfigDict(extra="allow")
    shards: Union[str, list[str]]
    split: Optional[str] = "train"  # shard files of a build folder named `<split>-NNNNN.parquet`
    shuffle_window: int = Field(8, gt=0)  # row groups read and shuffled together

    def shard_list(self) -> list[str]:
        """The shard entries as a list."""
        return [self.shards] if isinstance(self.shards, str) else list(self.shards)

    def stage_keys(self) -> dict[str, Any]:
        """`data:` without the loop's keys: what the stage sees."""
        return {k: v for k, v in (self.model_extra or {}).items()}


class TrainConfig(_Strict):
    stage: str
    model: dict[str, Any] = Field(default_factory=dict)
    data: DataSection
    train: TrainSection = Field(default_factory=TrainSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    log: LogSection = Field(default_factory=LogSection)
    output_dir: Optional[str] = None
    _stage: Optional[TrainStage] = PrivateAttr(None)

    @field_validator("stage")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in stage_names():
            raise ValueError(f"unknown stage {v!r}; allowed: {', '.join(stage_names())}")
        return v

    def stage_obj(self) -> TrainStage:
        """The stage built from `model:` and `data:` (built once, during validation)."""
        if self._stage is None:
            self._stage = stage_class(self.stage)(dict(self.model), self.data.stage_keys())
        return self._stage

    def lora_targets(self) -> list[str]:
        """The LoRA target module names (the config's, else the stage's defaults)."""
        lora = self.train.lora
        if lora is None:
            return []
        return list(lora.targets) if lora.targets is not None else list(self.stage_obj().lora_targets)

    def hashed_fields(self, world_size: int) -> dict[str, Any]:
        """What a checkpoint must share with the config that resumes it: stage, model, data
        (shards and order), seed, batch geometry and LoRA; not lr, steps or logging."""
        t = self.train
        return {"stage": self.stage, "model": self.model,
                "data": self.data.model_dump(mode="json"),
                "seed": t.seed, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
                "world_size": world_size,
                "lora": None if t.lora is None else {**t.lora.model_dump(mode="json"),
                                                     "targets": self.lora_targets()}}

    def config_hash(self, world_size: int) -> str:
        """A short hash of `hashed_fields`."""
        text = json.dumps(self.hashed_fields(world_size), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _explain(exc: ValidationError, where: str) -> str:
    lines = []
    for e in exc.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        kind, msg = e["type"], e["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "literal_error":
            msg = f"{e['input']!r} is not allowed; expected {e['ctx']['expected']}"
        lines.append(f"{where}: {key}: {msg}")
    return "\n".join(lines)


def config_from_dict(data: Any, where: str = "<train config>") -> TrainConfig:
    """Validate a parsed config and build its stage (the stage checks `model:` and `data:`).
    Relative paths (shards, and the stage's own: models, embedding stores) are relative to the
    current folder. Raises `TrainConfigError`."""
    if not isinstance(data, dict):
        raise TrainConfigError(f"{where}: a train config must be a mapping, got {type(data).__name__}")
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise TrainConfigError(_explain(exc, where)) from None
    try:
        cfg.data.shards = [str(f.resolve()) for f in resolve_shards(cfg.data.shard_list(), cfg.data.split)]
    except FileNotFoundError as exc:
        raise TrainConfigError(f"{where}: data.shards: {exc}") from None
    try:
        stage = cfg.stage_obj()
    except StageError as exc:
        raise TrainConfigError(f"{where}: stage: {exc}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise TrainConfigError(f"{where}: stage {cfg.stage!r} rejects its model:/data: sections: {exc}") from None
    if cfg.train.lora is not None and not cfg.lora_targets():
        raise TrainConfigError(f"{where}: train.lora.targets: no target modules (the stage "
                               f"{stage.name!r} names none by default); list module names")
    return cfg


def load_train_config(path: Union[str, Path], overrides: Optional[dict[str, Any]] = None) -> TrainConfig:
    """Read and validate a train config YAML; `overrides` maps dotted keys to values
    (e.g. {"train.max_steps": 10}) applied before validation."""
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"{path}: no such train config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(data, dict):
        for dotted, value in (overrides or {}).items():
            node = data
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
            node[leaf] = value
            if dotted == "train.max_steps":
                data.get("train", {}).pop("epochs", None)  # --max-steps replaces epochs
    return config_from_dict(data, str(path))
