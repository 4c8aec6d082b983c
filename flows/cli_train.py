"""`nexus-gen train STAGE CONFIG.yaml`: train one stage (ar, gen-decoder, edit-decoder, vae).

The config, the output folder, a checkpoint to resume and the data are checked before anything
starts (one line naming the file and the key, exit 2). One process: the Prefect train flow (a
markdown artifact with the loss plot). Under `torchrun` / `accelerate launch` (WORLD_SIZE > 1) the
loop runs directly on every rank, without Prefect (no API server per rank; rank 0 writes
run.json, metrics.jsonl and loss.png, which are the run's record). The last line printed is
JSON: {"status", "step", "final_loss", "samples", "skipped"}."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer


def _summary(record: dict) -> str:
    c = record.get("counts", {})
    return json.dumps({"status": record.get("status"), "step": record.get("step"),
                       "final_loss": record.get("final_loss"), "samples": c.get("samples"),
                       "skipped": c.get("skipped")})


def train(
    stage: str = typer.Argument(..., metavar="STAGE", help="ar, gen-decoder, edit-decoder or vae (must match "
                                "the config's `stage`)."),
    config: Path = typer.Argument(..., metavar="CONFIG.yaml", help="Train config (datasets_spec/train/*.yaml)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default: the config's output_dir)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Optimizer steps (replaces "
                                            "train.max_steps / train.epochs)."),
    resume: bool = typer.Option(False, "--resume", help="Go on from the run folder's last checkpoint."),
    shards: Optional[list[str]] = typer.Option(None, "--shards", help="Unified shards (folder, file or glob; "
                                               "repeatable), replacing data.shards; relative to the current folder."),
) -> None:
    """Train a Nexus-Gen stage on unified shards: checkpoints, exact resume, metrics, DDP or FSDP under torchrun."""
    from flows.runtime import fail
    from nexus_gen.train.stages import StageError, stage_names
    from nexus_gen.train.train_checkpoint import CheckpointMismatch
    from nexus_gen.train.train_config import TrainConfigError, load_train_config
    from nexus_gen.train.train_data import NoStageSamples
    from nexus_gen.train.train_loop import NonFiniteLoss, TrainError, dist_env, preflight

    try:
        names = stage_names()
    except StageError as exc:
        fail(exc)
    if stage not in names:
        fail(f"unknown stage {stage!r}; allowed: {', '.join(names)}")
    overrides: dict = {}
    if max_steps is not None:
        overrides["train.max_steps"] = max_steps
    if shards:
        overrides["data.shards"] = [os.path.abspath(s) for s in shards]
    try:
        cfg = load_train_config(config, overrides)
    except TrainConfigError as exc:
        fail(exc)
    if cfg.stage != stage:
        fail(f"{config}: stage: the config trains {cfg.stage!r}, but the command says {stage!r}; "
             f"run `nexus-gen train {cfg.stage} {config}` or fix the config")
    env = dist_env()
    try:
        pre = preflight(cfg, out, resume)  # before Prefect starts: a bad run fails in one line
    except (TrainError, CheckpointMismatch, NoStageSamples, ValueError) as exc:
        fail(f"{config}: {exc}")
    if env.main:
        typer.echo(f"train {stage}: {pre.index.total} samples of tasks {', '.join(cfg.stage_obj().tasks)} per epoch, "
                   f"{pre.steps} steps, global batch {cfg.train.batch_size * cfg.train.grad_accum * env.world}"
                   f"{f', resuming from {pre.resume_from.name}' if pre.resume_from else ''} -> {pre.out}")
    hint = f"run the same command with --resume to go on from the last checkpoint in {pre.out}"
    try:
        if env.world > 1:
            from nexus_gen.train.train_loop import train as train_loop

            record = train_loop(cfg, pre.out, resume=resume, progress=True)
        else:
            from flows.runtime import run_flow
            from flows.train import train_flow

            record = run_flow(train_flow, config=str(config), out=str(pre.out), overrides=overrides,
                              resume=resume, progress=True, resume_hint=hint)
    except NonFiniteLoss as exc:
        typer.echo(f"error: training stopped: {exc}", err=True)
        raise typer.Exit(code=1)
    except (KeyboardInterrupt, typer.Exit):
        raise
    except Exception as exc:
        typer.echo(f"error: training failed: {type(exc).__name__}: {exc}; {hint} (details in "
                   f"{pre.out / 'run.json'})", err=True)
        raise typer.Exit(code=1)
    if env.main:
        typer.echo(f"{record['status']}: step {record['step']}/{record['max_steps']}, final loss "
                   f"{record['final_loss']}, samples {record['counts']['samples']}, skipped "
                   f"{json.dumps(record['counts']['skipped_by_reason'])}; model: {pre.out / 'final'}, "
                   f"metrics: {pre.out / 'metrics.jsonl'}, plot: {pre.out / 'loss.png'}")
        typer.echo(_summary(record))


def register(root: typer.Typer) -> None:
    """Add `nexus-gen train` to the root app."""
    root.command("train")(train)
