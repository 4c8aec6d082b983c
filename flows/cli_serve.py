"""`nexus-gen serve`: serve the scheduled deployments of a schedule file (Prefect `serve`): a
long-running process that registers each deployment with its schedule on the Prefect server
(PREFECT_API_URL) and starts its flow runs as they come due. The file is checked first, before
anything is registered."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def serve(
    spec: Optional[Path] = typer.Option(None, "--spec", help="Schedule file (default: "
                                        "datasets_spec/schedules.yaml)."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Serve only this deployment "
                                             "(repeat for several)."),
    interval: Optional[float] = typer.Option(None, "--interval", min=1, help="Run every SECONDS "
                                             "instead of each deployment's schedule (to try a schedule out)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Flow runs at once (default: no limit)."),
    check: bool = typer.Option(False, "--check", help="Check the file and print the deployments; serve nothing."),
) -> None:
    """Serve scheduled flows: nightly build, weekly benchmark, build-and-publish (see the schedule file)."""
    import logging
    import os

    from flows.runtime import fail
    from flows.schedule_spec import ScheduleError, load_schedules, to_deployment

    try:
        entries = load_schedules(spec)
    except ScheduleError as exc:
        fail(exc)
    names = [e.name for e in entries]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        fail(f"--only {unknown[0]}: no such deployment in {spec or 'datasets_spec/schedules.yaml'}; "
             f"known: {', '.join(names)}")
    chosen = [e for e in entries if not only or e.name in only]
    for e in chosen:
        when = f"every {interval:g} s (--interval)" if interval else \
            f"cron {e.cron!r} {e.timezone}" if e.cron else f"every {e.interval:g} s"
        typer.echo(f"{e.flow}/{e.name}: {when}; parameters {e.parameters}")
    if check:
        return
    if not os.environ.get("PREFECT_API_URL"):
        logging.getLogger(__name__).warning(
            "PREFECT_API_URL is not set: serving against a temporary local Prefect server that stops "
            "with this command; start `prefect server start` and set PREFECT_API_URL for lasting schedules")
    from prefect import serve as prefect_serve

    from flows.runtime import start_prefect_server

    start_prefect_server()
    deployments = [to_deployment(e, interval=interval) for e in chosen]
    try:
        prefect_serve(*deployments, limit=limit, print_starting_message=True)
    except KeyboardInterrupt:
        typer.echo("stopped serving (schedules paused)", err=True)


def register(root: typer.Typer) -> None:
    """Add `nexus-gen serve` to the root app."""
    root.command("serve")(serve)
