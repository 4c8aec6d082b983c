"""`nexus-gen runs list [ROOT]` and `nexus-gen runs show RUN_DIR`: what each run folder says about
its run (build, eval, train alike), as a table or JSON. No Prefect: it reads the folders
(`nexus_gen.run_records`)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(help="Run records: status, progress, counts, rejects, duration, last error.",
                  no_args_is_help=True, add_completion=False)

COLUMNS = ("RUN", "KIND", "STATUS", "NAME", "PROGRESS", "COUNTS", "REJECTED", "DURATION", "LAST ERROR")
ERROR_WIDTH = 60


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _progress(rec) -> str:
    if rec.done is None and rec.planned is None:
        return "-"
    planned = "?" if rec.planned is None else rec.planned
    return f"{'?' if rec.done is None else rec.done}/{planned} {rec.unit}".strip()


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items()) or "-"


def _short(text: Optional[str], width: int = ERROR_WIDTH) -> str:
    if not text:
        return "-"
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[:width - 3] + "..."


def table(records: list, root: Optional[Path] = None) -> str:
    """Plain aligned columns, one run per line (RUN relative to `root`)."""
    rows = [COLUMNS]
    for r in records:
        where = r.dir
        if root is not None:
            try:
                where = str(Path(r.dir).relative_to(root)) or "."
            except ValueError:
                pass
        rows.append((where, r.kind, r.status, r.name, _progress(r), _counts(r.counts), str(r.rejected),
                     _duration(r.duration_s), _short(r.last_error)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def details(rec) -> str:
    """Every field of one run, rejects by reason as a table, for `runs show`."""
    lines = [f"run:       {rec.dir}", f"kind:      {rec.kind}", f"status:    {rec.status}",
             f"name:      {rec.name}", f"progress:  {_progress(rec)}", f"duration:  {_duration(rec.duration_s)}"]
    if rec.updated is not None:
        lines.append(f"updated:   {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(rec.updated))}")
    lines.append(f"counts:    {_counts(rec.counts)}")
    lines.append(f"error:     {rec.last_error or '-'}")
    if rec.note:
        lines.append(f"note:      {rec.note}")
    lines.append(f"rejected:  {rec.rejected}")
    if rec.rejects_by_reason:
        width = max(len(k) for k in rec.rejects_by_reason)
        for reason, n in sorted(rec.rejects_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {reason.ljust(width)}  {n}")
    for key, value in rec.details.items():
        if value not in (None, {}, []):
            lines.append(f"{key}: {json.dumps(value, ensure_ascii=False, sort_keys=True)}")
    return "\n".join(lines)


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


@app.command("list")
def list_runs(
    root: Path = typer.Argument(Path("runs"), help="Folder to search for runs (default: runs)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON array of run records instead of the table."),
    depth: int = typer.Option(4, "--depth", min=0, help="How many folder levels below ROOT to search."),
) -> None:
    """Every run at or below ROOT: status, name, progress, counts, rejects, duration, last error."""
    from nexus_gen.run_records import NotARunError, find_runs

    try:
        records = find_runs(root, max_depth=depth)
    except NotARunError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2)
    if as_json:
        typer.echo(_dump([r.to_dict() for r in records]))
        return
    if not records:
        typer.echo(f"no runs found in {root} (searched {depth} levels down)")
        return
    typer.echo(table(records, root))


@app.command("show")
def show_run(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A run folder."),
    as_json: bool = typer.Option(False, "--json", help="The run record as one JSON object."),
) -> None:
    """One run in detail: status and why, progress, counts, rejects by reason, duration, last error."""
    from nexus_gen.run_records import NotARunError, read_run

    try:
        rec = read_run(run_dir)
    except NotARunError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2)
    typer.echo(_dump(rec.to_dict()) if as_json else details(rec))


def register(root: typer.Typer) -> None:
    """Add `nexus-gen runs ...` to the root app."""
    root.add_typer(app, name="runs")
