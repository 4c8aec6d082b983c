"""`nexus-gen precompute {gen,edit} DATA... --ar MODEL -o DIR`: the decoders' embeddings.

Inputs are checked before Prefect starts and the model loads; the last line printed is JSON:
{"mode": ..., "samples": S, "embedded": E, "skipped": K, "units": U, "computed": C}."""
from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Optional

import typer


class Mode(str, enum.Enum):
    gen = "gen"
    edit = "edit"


def precompute(
    mode: Mode = typer.Argument(..., help="gen: ground-truth target embeddings of generation samples; "
                                "edit: teacher-forced predictions + source embeddings of editing samples."),
    data: list[str] = typer.Argument(..., metavar="DATA...", help="Unified shards: parquet files, "
                                     "folders of shards or build run folders."),
    ar: str = typer.Option("tiny", "--ar", help="The AR model: tiny, a folder or a hub id."),
    out: Path = typer.Option(..., "--out", "-o", help="Embedding folder (resumable: finished units are kept)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N samples of the task."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Samples per forward."),
    chunk_size: int = typer.Option(64, "--chunk-size", min=1, help="Samples per unit (output file)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
) -> None:
    """Pre-compute image embeddings for the decoder stages, keyed by sample id."""
    from flows.runtime import fail, run_flow
    from nexus_gen.train.precompute import PrecomputeError, plan_precompute

    try:
        plan = plan_precompute(mode.value, data, out, chunk_size, limit)
    except PrecomputeError as exc:
        fail(exc)
    typer.echo(f"precompute {mode.value}: {plan.samples} samples in {len(plan.units)} units -> {out}")
    from flows.precompute import precompute_flow

    try:
        man = run_flow(precompute_flow, mode=mode.value, data=list(data), ar=ar, out=str(out),
                       chunk_size=chunk_size, batch_size=batch_size, limit=limit, device=device,
                       dtype=dtype, progress=True, resume_hint="run the same command to go on")
    except PrecomputeError as exc:
        fail(exc)
    c = man["counts"]
    typer.echo(json.dumps({"mode": mode.value, **c, "units": len(man["units"]), "computed": man["computed"]}))


def register(root: typer.Typer) -> None:
    """Add `nexus-gen precompute` to the root app."""
    root.command("precompute")(precompute)
