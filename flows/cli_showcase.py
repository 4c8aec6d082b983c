"""`nexus-gen showcase --out DIR [--minutes M] [--device cpu|cuda]`: the CPU showcase (issue 17).

The last line printed is JSON: {"trained": {...}, "untrained": {...}, "ci95": {...}, "minutes", "size"}."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def showcase(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (resumable: a rerun continues)."),
    minutes: float = typer.Option(60.0, "--minutes", help="The whole wall-clock budget (data, training, evaluation)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    ablation: bool = typer.Option(False, "--ablation", help="Also train the AR baseline (prefill: false) and compare."),
    stop_after: Optional[str] = typer.Option(None, "--stop-after", help="Stop after this phase (a rerun continues)."),
    threads: int = typer.Option(2, "--threads", min=1, help="torch CPU threads."),
) -> None:
    """Train a tiny Nexus-Gen on the scenes world with the project's own stages and benchmarks;
    learning curves, samples and untrained vs trained in OUT/report.html."""
    from eval.showcase.showcase_plan import PHASES, make_plan
    from eval.showcase.showcase_run import ShowcaseStopped, check_continuation
    from flows.runtime import fail, run_flow

    try:  # before any work (and before Prefect's server starts)
        check_continuation(make_plan(str(out), minutes, device, ablation, threads))
    except ValueError as exc:
        fail(exc)
    if stop_after is not None and stop_after not in PHASES:
        fail(f"--stop-after {stop_after!r}: use one of {', '.join(PHASES)}")
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: exists and is not a directory")
    from flows.showcase import showcase_flow

    try:
        summary = run_flow(showcase_flow, out=str(out), minutes=minutes, device=device, stop_after=stop_after,
                           threads=threads, ablation=ablation,
                           resume_hint=f"rerun the same command to continue in {out}")
    except ShowcaseStopped as exc:
        typer.echo(str(exc))
        raise typer.Exit(code=0)
    except ValueError as exc:
        fail(exc)
    typer.echo(f"report: {out / 'report.html'}")
    typer.echo(json.dumps(summary))


def register(root: typer.Typer) -> None:
    """Add `nexus-gen showcase` to the root app."""
    root.command("showcase")(showcase)
