"""The contract between the training loop and a training stage (AR model, generation decoder,
editing decoder): the stage owns its model, turns unified samples into examples and examples into
a loss; the loop owns everything else (data streaming, optimiser, schedule, checkpoints, resume,
DDP / FSDP, LoRA, metrics). Adding a stage touches no other stage and not the loop."""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar, Union

import torch

Example = dict[str, Any]
Batch = dict[str, Any]


class TrainStage(abc.ABC):
    """One trainable stage. Built from the `model:` and `data:` sections of a train config (plain
    dicts; the stage validates its own keys and raises `ValueError` naming the key and what is
    allowed), before any training work starts."""

    name: ClassVar[str]               # "ar" | "gen-decoder" | "edit-decoder"
    tasks: ClassVar[tuple[str, ...]]  # unified-sample tasks it learns from ("editing", ...)
    lora_targets: ClassVar[tuple[str, ...]] = ()  # default module names for LoRA (peft)
    # Modules trained in full beside the LoRA adapters: the parts the base model does not have
    # (new heads, adapters), which a low-rank update of nothing cannot learn.
    lora_full_modules: ClassVar[tuple[str, ...]] = ()
    # FSDP wrap units: class names of the model's blocks (each block all-gathered on its own)
    shard_units: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model_cfg: dict[str, Any], data_cfg: dict[str, Any]) -> None:
        self.model_cfg = dict(model_cfg)
        self.data_cfg = dict(data_cfg)

    @abc.abstractmethod
    def build_model(self, device: torch.device) -> torch.nn.Module:
        """The model to train, loaded through `from_pretrained` (a hub id, a folder, or `tiny`),
        with the reference's freezing applied (`requires_grad=False` on frozen parts), in float32
        on `device` (the loop autocasts). Raises `ValueError` on shapes that do not fit."""

    def check_data(self, sample: dict[str, Any]) -> None:
        """Optional: raise `ValueError` when a stage-wide requirement is missing (for example the
        embedding store a decoder stage needs); called once on the first usable sample."""

    @abc.abstractmethod
    def example(self, sample: dict[str, Any]) -> Union[Example, str]:
        """One unified sample (as `nexus_gen.data.shards.iter_samples` yields it) -> an example of
        tensors (CPU), or a string: the reason it cannot be used (the loop counts and logs it)."""

    @abc.abstractmethod
    def collate(self, examples: list[Example]) -> Batch:
        """Examples -> one batch; the batch carries `ids` (the sample ids, for error messages)."""

    @abc.abstractmethod
    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss of a batch (moved to the model's device by the stage) and its named
        parts for the metrics log (e.g. {"ce": .., "mse": .., "cos": ..})."""

    @abc.abstractmethod
    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        """The trained stage as a folder of safetensors + configs that the stage's
        `from_pretrained` (and `NexusGenPipeline`) loads back."""
