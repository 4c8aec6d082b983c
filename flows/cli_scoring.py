"""`nexus-gen score`: CLIP / DINO / pixel metrics for editing and generation shards.

Every option, the output paths and the models are checked before any sample is scored; a
problem is one `error:` line naming the option and what to do, with exit code 2."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

log = logging.getLogger(__name__)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def score(
    shards: List[Path] = typer.Argument(..., help="Shard files, folders or globs."),
    metrics: str = typer.Option("clip_t,clipscore,clip_i,clip_dir,dino,l1", help="Comma-separated "
                                "metrics: clip_t, clipscore, clip_i, clip_dir, dino, l1, l2. "
                                "Generation samples get clip_t and clipscore (image vs prompt)."),
    out: Path = typer.Option(..., "-o", "--out", help="Scores parquet to write (one row per sample id)."),
    clip: str = typer.Option("small", help="CLIP model: tiny (offline), small, paper (hub weights), "
                             "NAME:TAG, NAME:/path/weights.safetensors, local-dir:/path."),
    clip_zh: str = typer.Option("paper", "--clip-zh", help="Chinese-CLIP for Chinese captions and "
                                "prompts: tiny (offline), paper (OFA-Sys/chinese-clip-vit-base-patch16), "
                                "a hub id or a local folder; none leaves their text scores empty. "
                                "Loaded only when the shards hold Chinese text."),
    dino: str = typer.Option("paper", help="DINO model: tiny (offline), paper (hub weights), a hub "
                             "id or a local folder."),
    batch_size: int = typer.Option(32, min=1, help="Images per forward pass."),
    workers: Optional[int] = typer.Option(None, min=1, help="Decode/preprocess threads."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N (CUDA runs bf16, channels-last)."),
    rejects: Optional[Path] = typer.Option(None, help="Rejects jsonl (default: <out>.rejects.jsonl)."),
) -> None:
    """Score editing and generation shards (understanding samples are skipped and counted);
    scores are joined to samples by id, rejects say why a sample failed."""
    from nexus_gen.scoring.device import check_device
    from nexus_gen.scoring.edit_scorer import CLIP_METRICS, EditScorer, parse_metrics
    from nexus_gen.scoring.hub import ModelUnavailableError
    from nexus_gen.scoring.shard_scores import TEXT_METRICS, check_outputs, first_chinese_sample, score_shards

    try:
        names = parse_metrics(metrics)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--metrics") from exc
    if "l1_masked" in names:
        raise typer.BadParameter("l1_masked needs edit masks, which shards do not carry; use the "
                                 "EditScorer API with masks", param_hint="--metrics")
    try:
        dev = check_device(device)
    except ValueError as exc:
        _fail(f"--device: {exc}")
    from nexus_gen.data.shards import shard_files

    try:
        files = shard_files([str(s) for s in shards])
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="SHARDS") from exc
    if not files:
        raise typer.BadParameter(f"no parquet shards in {', '.join(map(str, shards))}", param_hint="SHARDS")
    try:
        check_outputs(out, rejects)
    except ValueError as exc:
        _fail(f"--out: {exc}" if rejects is None or str(rejects) not in str(exc) else f"--rejects: {exc}")
    zh_sample = first_chinese_sample(files) if set(names) & set(TEXT_METRICS) else None
    enc = den = zh = None
    try:
        if CLIP_METRICS & set(names):
            from nexus_gen.scoring.clip import load_clip

            option = "--clip"
            enc = load_clip(clip, device=dev)
        if "dino" in names:
            from nexus_gen.scoring.dino import load_dino

            option = "--dino"
            den = load_dino(dino, device=dev)
        if zh_sample is not None and clip_zh != "none":
            from nexus_gen.scoring.chinese_clip import load_chinese_clip

            option = "--clip-zh"
            zh = load_chinese_clip(clip_zh, device=dev)
    except (ModelUnavailableError, ValueError) as exc:
        more = f" (needed: sample {zh_sample!r} has Chinese text; --clip-zh none leaves it unscored)" \
            if option == "--clip-zh" else ""
        _fail(f"{option}: {exc}{more}")
    scorer = EditScorer(enc, den, metrics=names, batch_size=batch_size, workers=workers)
    run = score_shards(files, out, scorer=scorer, rejects=rejects, chinese_clip=zh)
    by_task = ", ".join(f"{k} {v}" for k, v in sorted(run.by_task.items())) or "none"
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(run.skipped.items())) or "none"
    typer.echo(f"in {run.rows_in} = scored {run.scored} ({by_task}) + rejected {run.rejected} + "
               f"skipped {run.skipped_total} ({skipped}); scores: {run.out}; rejects: {run.rejects}")
    if run.chinese:
        typer.echo(f"Chinese text of {run.chinese} samples scored with Chinese-CLIP {zh.model_id}")
    if run.chinese_unscored:
        typer.echo(f"warning: {run.chinese_unscored} samples with Chinese text have no text scores "
                   "(--clip-zh none; English CLIP cannot read Chinese)", err=True)


def register(root: typer.Typer) -> None:
    """Add `nexus-gen score` to the root app."""
    root.command("score")(score)
