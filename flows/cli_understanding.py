"""`nexus-gen eval understanding ...` and `nexus-gen eval rescore-understanding ...`.

Options are checked (and the data read) before any work; the last line printed is the summary
JSON with the headline numbers, the parser and the denominator."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from eval.understanding.benchmark_items import BENCHMARKS
from eval.understanding.answer_parsers import DEFAULT_PARSER, PARSERS


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(code=2)


_PARSER = typer.Option(DEFAULT_PARSER, help=f"answer parser: {', '.join(PARSERS)}")


def understanding(
    benchmark: str = typer.Option(..., help=f"one of {', '.join(BENCHMARKS)}"),
    data: str = typer.Option(..., help="a VLMEvalKit .tsv, a parquet file / folder, for scenes "
                             "scenes:N[:SEED] or a `nexus-gen build` output folder"),
    model: str = typer.Option(..., help="`tiny` (random-init Qwen2.5-VL) or a transformers "
                              "image-text-to-text model id / folder, or "
                              "`nexus-gen[:SOURCE]` (SOURCE: tiny, a folder, a released id)"),
    out: Path = typer.Option(..., help="run directory (resumable: saved predictions are kept)"),
    parser: str = _PARSER,
    limit: Optional[int] = typer.Option(None, help="the first N items (whole groups)"),
    batch_size: int = typer.Option(4, help="questions per model call"),
    device: str = typer.Option("cpu"),
    dtype: str = typer.Option("float32"),
    max_new_tokens: int = typer.Option(16, help="answer length limit in tokens"),
) -> None:
    """Understanding benchmark: answer, parse, score and report as one flow."""
    from eval.understanding.understanding_run import UnderstandingConfig, check

    try:
        plan = check(UnderstandingConfig(benchmark, data, model, out, parser, limit, batch_size,
                                         device, dtype, max_new_tokens))
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    from flows.evaluate_understanding import run_checked_understanding

    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        summary = run_checked_understanding(plan)
    except ValueError as e:  # e.g. a model that cannot be loaded
        _fail(e)
    typer.echo(f"report: {plan.out / 'report.html'}")
    typer.echo(json.dumps(summary))


def rescore_understanding(
    predictions: Path = typer.Argument(..., help="a predictions.jsonl of an understanding run"),
    parser: str = _PARSER,
    out: Path = typer.Option(..., help="directory for the scores and report"),
    items: Optional[Path] = typer.Option(None, help="the run's items.jsonl (default: beside the "
                                         "predictions)"),
) -> None:
    """Re-score saved predictions with a parser; needs no model."""
    from eval.understanding.understanding_run import rescore

    try:
        summary = rescore(predictions, parser, out, items)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(json.dumps(summary))


def register(eval_app: typer.Typer) -> None:
    """Add the understanding commands to the `eval` sub-app."""
    eval_app.command("understanding")(understanding)
    eval_app.command("rescore-understanding")(rescore_understanding)
