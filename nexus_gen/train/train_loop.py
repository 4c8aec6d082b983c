"""The training loop that drives any `TrainStage`: AdamW, linear warmup + cosine decay (a torch
LambdaLR), gradient accumulation and clipping, bf16 autocast on CUDA, optional gradient
checkpointing and LoRA (peft), metrics, checkpoints with exact resume, DDP and FSDP.

DDP: under `torchrun` / `accelerate launch` (RANK, WORLD_SIZE, LOCAL_RANK in the environment) the
loop joins the process group (gloo on CPU, nccl on CUDA) and wraps the stage's loss in
DistributedDataParallel; each rank reads its own slice of the data; only rank 0 writes
checkpoints, metrics and the run record. Precision: `bf16` autocasts on CUDA; on CPU it falls back
to fp32 with a warning (CPU bf16 autocast is slow and the tiny profile runs there), recorded in
`run.json` as the precision used.

FSDP (`train.strategy: fsdp`, or an `accelerate launch` with an FSDP config): the model is built
on CPU, sharded per block over the processes (`train_sharding`; parameters move to the device
unit by unit), gradients are reduce-scattered every micro step (no unsharded gradient buffer
survives a micro step) and clipped by the norm over all shards; checkpoints are sharded; the final
model is gathered to rank 0 and saved by the stage as in a DDP run."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from nexus_gen.train import train_checkpoint as ckpt
from nexus_gen.train import train_sharding as sharding
from nexus_gen.train.train_config import TrainConfig
from nexus_gen.train.train_data import ExampleStream, SampleStream, first_sample, scan_tasks
from nexus_gen.train.train_metrics import MetricsLog, plot_loss, read_run_record, write_run_record

log = logging.getLogger(__name__)

FINAL = "final"


class TrainError(ValueError):
    """A training run that cannot start as asked (output folder, resume, model set-up)."""


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite loss (or gradient norm): the run stops; the last good checkpoint stays."""


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started: bool = False  # this loop initialised the process group (and tears it down)

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun and accelerate set them (1 process without)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistEnv(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine", min_ratio: float = 0.0) -> float:
    """The lr multiplier of the update that follows `step` updates: (step+1)/warmup during warmup,
    then cosine from 1 to `min_ratio` over the remaining updates (or constant 1)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python's RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class _StageLoss(torch.nn.Module):
    """The stage's loss as a module, so DDP's forward (and its gradient hooks) wraps the whole
    stage computation whatever methods of the model the stage calls."""

    def __init__(self, stage: Any, model: torch.nn.Module) -> None:
        super().__init__()
        self.stage, self.model = stage, model

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.stage.loss(self.model, batch)


def _device(choice: str, env: DistEnv) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainError("train.device: cuda asked for, but no CUDA device is available")
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def _gather(env: DistEnv, obj: Any) -> list[Any]:
    if env.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def _sum_counts(counts: list[dict[str, Any]]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for c in counts:
        for r, n in c["skipped_by_reason"].items():
            reasons[r] = reasons.get(r, 0) + n
    return {"samples": sum(c["samples"] for c in counts), "skipped": sum(reasons.values()),
            "skipped_by_reason": dict(sorted(reasons.items()))}


def _apply_lora(cfg: TrainConfig, model: torch.nn.Module) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = cfg.train.lora
    targets = cfg.lora_targets()
    names = [n for n, _ in model.named_modules() if n]
    # peft's rule for a string target: the module's full name, or a dotted suffix of it
    # ("to_out.0" matches "transformer_blocks.0.attn.to_out.0").
    absent = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if absent:
        last = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise TrainError(f"train.lora.targets: {absent} name no module of the {cfg.stage} model "
                         f"(module names end in e.g. {last[:8]})")
    full = list(cfg.stage_obj().lora_full_modules) or None
    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=targets, modules_to_save=full))


def _enable_checkpointing(model: torch.nn.Module, stage: str) -> None:
    fn = getattr(model, "gradient_checkpointing_enable", None)
    if fn is None:
        raise TrainError(f"train.gradient_checkpointing: the {stage} model ({type(model).__name__}) has no "
                         f"gradient_checkpointing_enable(); set it to false")
    try:
        fn(gradient_checkpointing_kwargs={"use_reentrant": False})
    except TypeError:
        fn()


def _param_groups(params: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, norms' scales or other 1-D parameters)."""
    decay = [p for _, p in params if p.ndim >= 2]
    rest = [p for _, p in params if p.ndim < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": rest, "weight_decay": 0.0}) if g["params"]]


def total_steps(cfg: TrainConfig, samples_per_epoch: int, world: int) -> int:
    """`train.max_steps`, else the optimizer steps of `train.epochs` (default 1) over the samples of
    the stage's tasks (before the stage's own skips) at the global batch."""
    t = cfg.train
    if t.max_steps is not None:
        return t.max_steps
    global_batch = t.batch_size * t.grad_accum * world
    return max(1, math.ceil((t.epochs or 1.0) * samples_per_epoch / global_batch))


def _check_output(out: Path, resume: bool) -> Optional[Path]:
    """The checkpoint to resume from (None: a fresh run); errors for a folder that is not ours to use."""
    latest = ckpt.latest_checkpoint(out)
    if resume:
        if latest is None:
            raise TrainError(f"{out}: no checkpoint to resume from (ckpt-<step>/); run without --resume to start")
        return latest
    if latest is not None:
        raise TrainError(f"{out} already holds a training run (checkpoint {latest.name}); use --resume to "
                         f"go on from it, or choose another output folder")
    if out.exists() and any(out.iterdir()) and read_run_record(out).get("kind") != "train":
        raise TrainError(f"{out} is not empty and holds no training run; choose an empty or new folder")
    return None


@dataclass
class Preflight:
    """What is known before any training work: the output folder, the checkpoint to resume from
    (already checked against the config), the data index and the number of steps."""
    out: Path
    resume_from: Optional[Path]
    index: Any
    steps: int
    config_hash: str
    world: int
    strategy: str = "ddp"


def preflight(cfg: TrainConfig, output_dir: Union[str, Path, None] = None, resume: bool = False) -> Preflight:
    """Every check that needs no model: the output folder (a run there needs --resume), the
    checkpoint's config, the shards hold samples of the stage's tasks, the stage's `check_data`.
    Raises TrainError, CheckpointMismatch, NoStageSamples or the stage's ValueError."""
    if not str(output_dir or cfg.output_dir or ""):
        raise TrainError("no output folder: give -o DIR or output_dir in the config")
    out = Path(output_dir or cfg.output_dir or "")
    env = dist_env()
    try:
        strategy = sharding.resolve_strategy(cfg.train.strategy, env.world)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    stage = cfg.stage_obj()
    resume_from = _check_output(out, resume)
    config_hash = cfg.config_hash(env.world)
    if resume_from is not None:
        state = ckpt.read_state(resume_from)
        ckpt.check_compatible(state, config_hash, cfg.hashed_fields(env.world), resume_from)
        want = "sharded" if strategy == "fsdp" else "full"
        if ckpt.checkpoint_format(state) != want:
            raise TrainError(f"{resume_from} holds {ckpt.checkpoint_format(state)} weights and optimizer states "
                             f"({'an FSDP' if want == 'full' else 'a DDP / single-process'} run); resume it with "
                             f"train.strategy {'fsdp' if want == 'full' else 'ddp'}")
    index = scan_tasks([Path(f) for f in cfg.data.shard_list()], stage.tasks, stage.name)
    if index.total < env.world:
        raise TrainError(f"{index.total} samples of the stage's tasks cannot be split across {env.world} processes")
    stage.check_data(first_sample(index))
    return Preflight(out, resume_from, index, total_steps(cfg, index.total, env.world), config_hash, env.world,
                     strategy)


def train(cfg: TrainConfig, output_dir: Union[str, Path, None] = None, resume: bool = False,
          progress: bool = False, on_step: Optional[Callable[[int, dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Train `cfg`'s stage into `output_dir` (else the config's `output_dir`); returns the run
    record. Everything that can be checked is checked (`preflight`) before the model is built."""
    t0 = time.time()
    pre = preflight(cfg, output_dir, resume)
    out, resume_from, index, steps, config_hash = pre.out, pre.resume_from, pre.index, pre.steps, pre.config_hash
    env = dist_env()
    stage = cfg.stage_obj()
    t = cfg.train
    device = _device(t.device, env)
    precision = t.precision
    if precision == "bf16" and device.type != "cuda":
        log.warning("train.precision bf16: autocast is used on CUDA only; training in fp32 on %s", device)
        precision = "fp32"
    global_batch = t.batch_size * t.grad_accum * env.world
    record: dict[str, Any] = {
        "kind": "train", "status": "running", "stage": cfg.stage, "step": 0, "max_steps": steps,
        "seconds": 0.0, "last_error": None, "counts": _sum_counts([]),
        "final_loss": None, "config_hash": config_hash, "world_size": env.world, "global_batch": global_batch,
        "precision": precision, "device": device.type, "strategy": pre.strategy, "samples_per_epoch": index.total,
        "resumed_from": resume_from.name if resume_from else None, "output": str(out),
        # who is writing it: `nexus-gen runs` shows a run whose process is gone as unfinished
        "pid": os.getpid(), "host": socket.gethostname()}
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(cfg.model_dump_json(indent=2) + "\n", encoding="utf-8")
        write_run_record(out, record)
    log.info("stage %s: %d samples of tasks %s per epoch (all tasks: %s); %d steps, global batch %d = "
             "%d per process x %d processes x %d accumulation", cfg.stage, index.total, ",".join(stage.tasks),
             index.task_counts, steps, global_batch, t.batch_size, env.world, t.grad_accum)
    if env.world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            env.started = True
    loop = _Loop(cfg, stage, env, device, precision, out, steps, config_hash, on_step, pre.strategy)
    try:
        loop.setup(resume_from, index)
        loop.run(progress)
        loop.finish()
        record.update(status="complete")
    except BaseException as exc:
        record.update(status="failed", last_error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        record.update(step=loop.step, counts=loop.counts_all(), final_loss=loop.last_loss,
                      seconds=round(time.time() - t0, 3))
        if env.main:
            if (out / "metrics.jsonl").is_file():
                plot_loss(out, f"{cfg.stage}: loss")
            write_run_record(out, record)
        if env.started:
            import torch.distributed as dist

            dist.destroy_process_group()
    return record


class _Loop:
    """The state of one training run (model, optimiser, data stream, step)."""

    def __init__(self, cfg: TrainConfig, stage: Any, env: DistEnv, device: torch.device, precision: str,
                 out: Path, steps: int, config_hash: str,
                 on_step: Optional[Callable[[int, dict[str, Any]], None]], strategy: str = "ddp") -> None:
        self.cfg, self.stage, self.env, self.device, self.precision = cfg, stage, env, device, precision
        self.fsdp = strategy == "fsdp"
        self.out, self.steps, self.config_hash, self.on_step = out, steps, config_hash, on_step
        self.step = 0
        self.last_loss: Optional[float] = None
        self.examples: Optional[ExampleStream] = None
        self._counts_cache: Optional[dict[str, Any]] = None

    def counts_all(self) -> dict[str, Any]:
        """Sample counts summed over ranks (cached after the end, when collectives may be gone)."""
        if self._counts_cache is not None:
            return self._counts_cache
        if self.examples is None:
            return _sum_counts([])
        return _sum_counts([self.examples.counts])

    def setup(self, resume_from: Optional[Path], index: Any) -> None:
        cfg, t = self.cfg, self.cfg.train
        seed_everything(t.seed)  # the same on every rank: model and adapters start equal
        # under FSDP built on CPU: fully_shard moves each unit's shard to the device
        model = self.stage.build_model(torch.device("cpu") if self.fsdp else self.device)
        if t.gradient_checkpointing:
            _enable_checkpointing(model, cfg.stage)
        if t.lora is not None:
            model = _apply_lora(cfg, model)
        model.train()
        if self.fsdp:
            try:
                sharding.shard_model(model, tuple(self.stage.shard_units), self.device, self.precision, cfg.stage)
            except ValueError as exc:
                raise TrainError(str(exc)) from None
        self.model = model
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.params:
            raise TrainError(f"the {cfg.stage} model has no trainable parameter (all frozen)")
        n_train = sum(p.numel() for _, p in self.params)
        n_all = sum(p.numel() for p in model.parameters())
        log.info("trainable parameters: %d of %d (%.2f%%)", n_train, n_all, 100 * n_train / max(1, n_all))
        self.optimizer = torch.optim.AdamW(_param_groups(self.params, t.weight_decay), lr=t.lr, betas=t.betas,
                                           eps=t.eps)
        warmup = t.warmup_for(self.steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.steps, warmup, t.schedule, t.min_lr_ratio))
        data_state: dict[str, Any] = {}
        if resume_from is not None:
            state = ckpt.load_checkpoint(resume_from, self.device)
            if self.fsdp:
                sharding.load_sharded(resume_from, model, self.optimizer, {n for n, _ in self.params})
            else:
                missing = sorted(set(n for n, _ in self.params) - set(state["model"]))
                if missing:
                    raise TrainError(f"{resume_from}: the checkpoint lacks trainable weights {missing[:5]}")
                result = model.load_state_dict(state["model"], strict=False)
                if result.unexpected_keys:
                    raise TrainError(f"{resume_from}: weights the model does not have: "
                                     f"{result.unexpected_keys[:5]}")
                self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            ckpt.set_rng_state(state["rng"][self.env.rank])
            data_state = state["state"]["data"][self.env.rank]
            self.step = int(state["state"]["step"])
            self.last_loss = state["state"].get("loss")
            log.info("resumed from %s at step %d", resume_from, self.step)
        else:
            seed_everything(t.seed + self.env.rank)  # per-rank randomness (dropout) from here on
        samples = SampleStream(index, t.seed, self.env.rank, self.env.world, cfg.data.shuffle_window, data_state)
        self.examples = ExampleStream(samples, self.stage, data_state)
        self.loss_module: torch.nn.Module = _StageLoss(self.stage, model)
        if self.env.world > 1 and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel

            self.loss_module = DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.metrics = MetricsLog(self.out, self.step) if self.env.main else None
        self.last_ckpt: Optional[int] = self.step if resume_from is not None else None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _any(self, flag: bool) -> bool:
        """True when `flag` is true on any rank."""
        if self.env.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _mean(self, values: list[float]) -> list[float]:
        """Each value averaged over ranks."""
        if self.env.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.env.world).tolist()

    def _stop(self, what: str, ids: list[str]) -> None:
        everyone = [i for rank_ids in _gather(self.env, ids) for i in rank_ids]
        good = f"ckpt-{self.last_ckpt}" if self.last_ckpt else "none (no checkpoint written yet)"
        raise NonFiniteLoss(f"{what} at step {self.step + 1}; batch ids: {everyone}; the last good checkpoint "
                            f"is kept: {good}")

    def _micro(self, sync: bool) -> tuple[float, dict[str, float], list[str]]:
        t = self.cfg.train
        items = self.examples.take(t.batch_size)
        ids = [i for i, _ in items]
        batch = self.stage.collate([e for _, e in items])
        ctx = contextlib.nullcontext()
        if self.env.world > 1 and not sync and not self.fsdp:  # FSDP reduce-scatters every micro step
            ctx = self.loss_module.no_sync()
        with ctx:
            with self._autocast():
                loss, parts = self.loss_module(batch)
            if self._any(not bool(torch.isfinite(loss.detach()).all())):
                self._stop(f"non-finite loss ({loss.item()})", ids)
            (loss / t.grad_accum).backward()
        return float(loss.detach()), {k: float(v) for k, v in parts.items()}, ids

    def run(self, progress: bool) -> None:
        from tqdm import tqdm

        t, env = self.cfg.train, self.env
        bar = tqdm(total=self.steps, initial=self.step, unit="step", desc=f"train {self.cfg.stage}",
                   disable=not (progress and env.main), dynamic_ncols=True)
        global_batch = t.batch_size * t.grad_accum * env.world
        tick, tick_step = time.time(), self.step
        params = [p for _, p in self.params]
        try:
            while self.step < self.steps:
                self.optimizer.zero_grad(set_to_none=True)
                losses, parts_sum, ids = [], {}, []
                for micro in range(t.grad_accum):
                    loss, parts, micro_ids = self._micro(sync=micro == t.grad_accum - 1)
                    losses.append(loss)
                    ids += micro_ids
                    for k, v in parts.items():
                        parts_sum[k] = parts_sum.get(k, 0.0) + v / t.grad_accum
                norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm or float("inf"))
                norm = sharding.grad_norm_value(norm)  # over all shards under FSDP
                if self._any(not bool(torch.isfinite(norm))):
                    self._stop(f"non-finite gradient norm ({float(norm)})", ids)
                lr = self.scheduler.get_last_lr()[0]
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                keys = sorted(parts_sum)
                mean = self._mean([sum(losses) / len(losses), *(parts_sum[k] for k in keys)])
                self.last_loss = mean[0]
                row = {"step": self.step, "loss": mean[0], "parts": dict(zip(keys, mean[1:])), "lr": lr,
                       "grad_norm": float(norm), "epoch": self._epoch()}
                if self.step % self.cfg.log.every_steps == 0 or self.step == self.steps:
                    now = time.time()
                    row["samples_per_s"] = round((self.step - tick_step) * global_batch / max(now - tick, 1e-9), 3)
                    tick, tick_step = now, self.step
                    if self.metrics is not None:
                        self.metrics.write(row)
                bar.update(1)
                bar.set_postfix(loss=f"{mean[0]:.4g}", lr=f"{lr:.3g}")
                if self.on_step is not None:
                    self.on_step(self.step, row)
                if self.step % self.cfg.checkpoint.every_steps == 0 or self.step == self.steps:
                    self.save()
        finally:
            bar.close()

    def _epoch(self) -> float:
        s = self.examples.samples
        return round(s.epoch + s.consumed / max(1, s.per_epoch()), 6)

    def save(self) -> None:
        """A checkpoint of this step (every rank's RNG and data position; rank 0 writes)."""
        ranks = _gather(self.env, {"rng": ckpt.rng_state(), "data": self.examples.state()})
        tmp = None
        if self.fsdp:  # every rank writes its shards into the folder rank 0 prepared
            tmp = ckpt.fresh_tmp(self.out, self.step) if self.env.main else ckpt.tmp_dir(self.out, self.step)
            import torch.distributed as dist

            dist.barrier()
            sharding.save_sharded(tmp, self.model, self.optimizer, {n for n, _ in self.params})
        if self.env.main:
            state = {"config_hash": self.config_hash, "hashed_fields": self.cfg.hashed_fields(self.env.world),
                     "loss": self.last_loss, "max_steps": self.steps}
            weights = None if self.fsdp else ckpt.trainable_state(self.model)
            optim = None if self.fsdp else self.optimizer.state_dict()
            path = ckpt.save_checkpoint(self.out, self.step, weights, optim, self.scheduler.state_dict(), ranks,
                                        state, self.cfg.checkpoint.keep_last, tmp=tmp)
            log.info("checkpoint %s", path)
        self.last_ckpt = self.step
        if self.env.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def finish(self) -> None:
        """Counts over every rank; rank 0 saves the final model through the stage."""
        self._counts_cache = _sum_counts(_gather(self.env, self.examples.counts))
        full = sharding.gather_full_state(self.model) if self.fsdp else None
        if self.env.main:
            final = self.out / FINAL
            model = self.model
            if full is not None:  # an unsharded model on CPU, holding the gathered weights
                seed_everything(self.cfg.train.seed)
                model = self.stage.build_model(torch.device("cpu"))
                model.load_state_dict(full)
                del full
            if self.cfg.train.lora is not None:
                model.save_pretrained(str(self.out / "lora_adapter"))
                model = model.merge_and_unload()
            self.stage.save(model, final)
            log.info("final model: %s", final)
        if self.env.world > 1:
            import torch.distributed as dist

            dist.barrier()
