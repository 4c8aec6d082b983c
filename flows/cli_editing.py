"""`nexus-gen eval editing`: the editing benchmark. Options are checked (and the benchmark table
read) before any work and before Prefect starts; the last line printed is the headline JSON."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

log = logging.getLogger(__name__)


def editing(
    data: str = typer.Option(..., help="`scenes` (edits made on the fly), a build run (its test split), "
                             "nexus-gen shards, a MagicBrush / Emu Edit / GEdit-Bench table, or "
                             "ImgEdit's basic_edit.json"),
    editor: str = typer.Option(..., help="`identity` (returns the source), `tiny` (random-init "
                               "InstructPix2Pix), a diffusers InstructPix2Pix hub id / folder, or "
                               "`nexus-gen[:SOURCE]` (SOURCE: tiny, a folder, a released id)"),
    out: Path = typer.Option(..., help="run directory (resumable: edited images and scores are kept)"),
    limit: Optional[int] = typer.Option(None, help="the first N items (scenes: N edits, default 30)"),
    fmt: str = typer.Option("auto", "--format", help="auto, scenes, build, shards, magicbrush, "
                            "emu-edit, gedit, imgedit"),
    language: Optional[str] = typer.Option(None, help="shards / build runs: en (default) or zh; "
                                           "GEdit: en, cn or both (default both)"),
    images_root: Optional[Path] = typer.Option(None, help="ImgEdit original images (default: the "
                                               "json's folder)"),
    size: int = typer.Option(256, help="scenes edits' image size in pixels"),
    seed: int = typer.Option(0, help="base seed (scenes edits and the editor's per-item seeds)"),
    device: str = typer.Option("cpu"), dtype: str = typer.Option("float32"),
    steps: Optional[int] = typer.Option(None, help="inference steps (diffusers editors)"),
    guidance: Optional[float] = typer.Option(None, help="text guidance scale (diffusers)"),
    image_guidance: Optional[float] = typer.Option(None, help="image guidance scale (InstructPix2Pix)"),
    clip: str = typer.Option("paper", help="CLIP for CLIP-I / CLIP-T / CLIP-dir: paper, small, tiny, spec"),
    dino: str = typer.Option("paper", help="DINO: paper (ViT-S/16), tiny, hub id or folder"),
    judge: Optional[str] = typer.Option(None, help="optional VLM judge: an OpenAI-compatible URL, `env` "
                                        "($NEXUS_GEN_JUDGE_URL; key from $NEXUS_GEN_JUDGE_KEY), or hf:MODEL_ID"),
    judge_model: Optional[str] = typer.Option(None, help="model name sent to the endpoint "
                                              "(default $NEXUS_GEN_JUDGE_MODEL, else gpt-4.1)"),
    judge_protocol: str = typer.Option("auto", help="gedit (SC/PQ/O), imgedit (1-5), both, or auto"),
    imgedit_prompts: Optional[Path] = typer.Option(None, help="ImgEdit prompts json to use instead "
                                                   "of ours (e.g. the official prompts.json)"),
    concurrency: int = typer.Option(4, help="judge calls in flight"),
    retries: int = typer.Option(3, help="retries of a failing judge call (exponential backoff)"),
) -> None:
    """Editing benchmark: edit, score (L1, L2, CLIP-I, DINO, CLIP-T, CLIP-dir; scenes exact
    success), optionally judge (GEdit SC/PQ/O, ImgEdit 1-5), report."""
    params = dict(locals())  # the options, before any other local exists
    from eval.editing.edit_run import EditingConfig, check, headline

    try:
        plan = check(EditingConfig(**params))
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2)
    from flows.evaluate_editing import editing_flow

    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        summary = editing_flow(plan)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2)
    typer.echo(f"report: {plan.out / 'report.html'}")
    typer.echo(json.dumps(headline(summary)))


def register(eval_app: typer.Typer) -> None:
    """Add `editing` to the `nexus-gen eval` sub-app."""
    eval_app.command("editing")(editing)
