"""`nexus-gen eval ...` and `nexus-gen report`: benchmarks and reports.

Options are checked once, before any work (and before Prefect starts); the flows run in-process.
The last line a benchmark or re-scoring command prints is its summary as JSON."""
from __future__ import annotations

import json
import logging
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from eval.geneval.rules import ScoringOptions  # light: no torch
from flows.runtime import fail as _fail

log = logging.getLogger(__name__)

app = typer.Typer(help="Benchmarks: GenEval, GenEval-scenes, re-scoring.", no_args_is_help=True)

_GEN_HELP = ("`tiny` (random-init diffusers pipeline), a diffusers pipeline hub id or local folder, "
             "`nexus-gen[:SOURCE]` (Nexus-Gen; SOURCE: tiny, a folder, a released id); for "
             "geneval-scenes also `ground-truth` or `noise`")


def _split_options(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A command's arguments, split into the scoring options (ScoringOptions' fields) and the rest."""
    names = {f.name for f in fields(ScoringOptions)}
    return ({k: v for k, v in params.items() if k in names},
            {k: v for k, v in params.items() if k not in names})


# Options shared by the commands, each declared once. Scoring options take the official defaults
# from the one place that holds them.
_DEFAULTS = ScoringOptions()
_THRESHOLD = typer.Option(_DEFAULTS.threshold, help="keep detections scoring above this")
_COUNTING = typer.Option(_DEFAULTS.counting_threshold, help="the threshold for counting prompts")
_MAX_OBJECTS = typer.Option(_DEFAULTS.max_objects, help="at most this many detections per class")
_NMS = typer.Option(_DEFAULTS.nms_threshold, help="per-class NMS IoU threshold (1.0 = off, the official default)")
_POSITION = typer.Option(_DEFAULTS.position_threshold, help="the relative-position margin")
_GENERATOR = typer.Option(..., help=_GEN_HELP)
_OUT = typer.Option(..., "--out", "-o", help="run directory (resumable: existing images are kept)")
_LIMIT = typer.Option(None, help="a tag-balanced subset of this many prompts")
_N_IMAGES = typer.Option(4, help="images per prompt")
_SEED = typer.Option(0, help="base seed; each image's seed derives from it")
_BATCH_SIZE = typer.Option(1, help="images per generator call (1 = byte-exact resume)")
_DEVICE = typer.Option("cpu")
_DTYPE = typer.Option("float32", help="generator precision")


class DType(str, Enum):
    """The torch dtypes a generator runs in."""

    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"

_STEPS = typer.Option(None, help="inference steps (diffusers)")
_GUIDANCE = typer.Option(None, help="guidance scale (diffusers)")
_SIZE = typer.Option(None, help="image size in pixels")
_PRECISION = typer.Option(
    None, help="colour classifier precision: `amp` (fp16 autocast, the official; default on CUDA) or "
         "`fp32` (default elsewhere)")


def _run_benchmark(benchmark: str, params: dict[str, Any]) -> None:
    """Check the config here, once (a bad one fails before Prefect starts), then run the checked
    plan as the benchmark's flow in-process and print the summary JSON. `params`: the command's
    own arguments, by name (its click context's `params`)."""
    from eval.geneval.run import GenEvalConfig, check

    params = {k: v.value if isinstance(v, Enum) else v for k, v in params.items()}
    options, rest = _split_options(params)
    try:
        plan = check(GenEvalConfig.from_params(benchmark, options=options, **rest))
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    from flows.evaluate import run_checked
    from flows.runtime import run_flow

    summary = run_flow(run_checked, plan, resume_hint=f"rerun the same command (same --out "
                       f"{plan.out}) to resume")
    typer.echo(f"report: {plan.out / 'report.html'}")
    typer.echo(json.dumps(summary, sort_keys=False))


@app.command("geneval")
def geneval(
    ctx: typer.Context,
    generator: str = _GENERATOR, out: Path = _OUT, limit: Optional[int] = _LIMIT,
    n_images: int = _N_IMAGES, seed: int = _SEED, batch_size: int = _BATCH_SIZE,
    device: str = _DEVICE, dtype: DType = _DTYPE, steps: Optional[int] = _STEPS,
    guidance: Optional[float] = _GUIDANCE, size: Optional[int] = _SIZE,
    detector: str = typer.Option("paper", help="`paper` (Mask2Former Swin-S COCO), `tiny`, hub id, folder"),
    clip: str = typer.Option("paper", help="colour classifier CLIP (`paper` = ViT-L-14 openai)"),
    precision: Optional[str] = _PRECISION,
    prompts: Optional[Path] = typer.Option(None, help="a prompt file instead of the official one"),
    threshold: float = _THRESHOLD, counting_threshold: float = _COUNTING,
    max_objects: int = _MAX_OBJECTS, nms_threshold: float = _NMS,
    position_threshold: float = _POSITION,
) -> None:
    """GenEval: generate, detect, score and report as one flow."""
    _run_benchmark("geneval", ctx.params)


@app.command("geneval-scenes")
def geneval_scenes(
    ctx: typer.Context,
    generator: str = _GENERATOR, out: Path = _OUT, limit: Optional[int] = _LIMIT,
    n_images: int = _N_IMAGES, seed: int = _SEED, batch_size: int = _BATCH_SIZE,
    device: str = _DEVICE, dtype: DType = _DTYPE, steps: Optional[int] = _STEPS,
    guidance: Optional[float] = _GUIDANCE, size: Optional[int] = _SIZE,
    prompts: Optional[Path] = typer.Option(None, help="a prompt file instead of the scenes set"),
    threshold: float = _THRESHOLD, counting_threshold: float = _COUNTING,
    max_objects: int = _MAX_OBJECTS, nms_threshold: float = _NMS,
    position_threshold: float = _POSITION,
) -> None:
    """GenEval-scenes, offline: scenes prompts, the pixel detector, the same scorer and report."""
    _run_benchmark("geneval-scenes", ctx.params)


@app.command("geneval-score")
def geneval_score(
    ctx: typer.Context,
    detections: Path = typer.Argument(..., help="a detections.jsonl written by a GenEval run"),
    out: Path = typer.Option(..., "--out", "-o", help="results.jsonl to write (official rows)"),
    threshold: float = _THRESHOLD, counting_threshold: float = _COUNTING,
    max_objects: int = _MAX_OBJECTS, nms_threshold: float = _NMS,
    position_threshold: float = _POSITION,
    clip: str = typer.Option("paper", help="CLIP for colours the file does not store"),
    device: str = typer.Option("cpu"), precision: Optional[str] = _PRECISION,
) -> None:
    """Re-score a detections file with other options, without a detector; prints the summary."""
    given, _ = _split_options(ctx.params)
    from eval.geneval.score import rescore_file

    try:
        options = ScoringOptions.from_mapping(given)
        if not detections.is_file():
            raise FileNotFoundError(f"detections file {detections} does not exist")
        from eval.geneval.color import resolve_precision

        precision = resolve_precision(precision, device)
        summary = rescore_file(detections, out, options, clip=clip, device=device,
                               precision=precision)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(json.dumps(summary))


def report(run_dir: Path = typer.Argument(
        ..., help="a benchmark run directory (has config.json), or a directory of them")) -> None:
    """Write report.md and a self-contained report.html for a benchmark run directory (for a
    directory of runs, their side-by-side comparison)."""
    from eval.report import write_run_report

    try:
        _, md, html = write_run_report(run_dir)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(f"wrote {md}")
    typer.echo(f"wrote {html}")


def register_report(root: typer.Typer) -> None:
    """Add `nexus-gen report RUN_DIR` to the root app."""
    root.command("report")(report)
