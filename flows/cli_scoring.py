"""`nexus-gen score`: CLIP / DINO / pixel metrics for editing shards."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

log = logging.getLogger(__name__)


def score(
    shards: List[Path] = typer.Argument(..., help="Shard files, folders or globs (editing samples)."),
    metrics: str = typer.Option("clip_t,clip_i,clip_dir,dino,l1", help="Comma-separated metrics: "
                                "clip_t, clipscore, clip_i, clip_dir, dino, l1, l2."),
    out: Path = typer.Option(..., "--out", help="Scores parquet to write (one row per sample id)."),
    clip: str = typer.Option("small", help="CLIP model: tiny, small, paper, NAME:TAG, "
                             "NAME:/path/weights.safetensors, local-dir:/path."),
    dino: str = typer.Option("paper", help="DINO model: tiny, paper, a hub id or a local folder."),
    batch_size: int = typer.Option(32, min=1, help="Images per forward pass."),
    workers: Optional[int] = typer.Option(None, min=1, help="Decode/preprocess threads."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N (CUDA runs bf16, channels-last)."),
    rejects: Optional[Path] = typer.Option(None, help="Rejects jsonl (default: <out>.rejects.jsonl)."),
) -> None:
    """Score editing shards; scores are joined to samples by id, rejects say why a sample failed."""
    from nexus_gen.scoring.clip import load_clip
    from nexus_gen.scoring.dino import load_dino
    from nexus_gen.scoring.edit_scorer import CLIP_METRICS, EditScorer, parse_metrics
    from nexus_gen.scoring.shard_scores import score_shards

    try:
        names = parse_metrics(metrics)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--metrics") from exc
    if "l1_masked" in names:
        raise typer.BadParameter("l1_masked needs edit masks, which shards do not carry; use the "
                                 "EditScorer API with masks", param_hint="--metrics")
    from nexus_gen.data.shards import shard_files

    try:
        files = shard_files([str(s) for s in shards])
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="SHARDS") from exc
    if not files:
        raise typer.BadParameter(f"no parquet shards in {', '.join(map(str, shards))}", param_hint="SHARDS")
    enc = load_clip(clip, device=device) if CLIP_METRICS & set(names) else None
    den = load_dino(dino, device=device) if "dino" in names else None
    scorer = EditScorer(enc, den, metrics=names, batch_size=batch_size, workers=workers)
    run = score_shards(files, out, scorer=scorer, rejects=rejects)
    typer.echo(f"in {run.rows_in} = scored {run.scored} + rejected {run.rejected} + "
               f"not editing {run.skipped_not_editing}; scores: {run.out}; rejects: {run.rejects}")


def register(root: typer.Typer) -> None:
    """Add `nexus-gen score` to the root app."""
    root.command("score")(score)
