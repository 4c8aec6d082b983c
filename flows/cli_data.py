"""`nexus-gen convert | export | validate`: the data commands."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

log = logging.getLogger(__name__)

_FORMATS = "nexus-gen-jsonl, llava, edit-pairs, imagepulse, captions"


def _say(text: str, err: bool = False) -> None:
    """Echo that survives file names that are not UTF-8 (their undecodable bytes print as '?')."""
    typer.echo(text.encode("utf-8", "replace").decode("utf-8"), err=err)


def _size(text: str) -> int:
    from nexus_gen.data.shards import parse_byte_size

    try:
        return parse_byte_size(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--shard-size") from None


def convert(
    fmt: str = typer.Argument(..., metavar="FORMAT", help=f"Input format: {_FORMATS}."),
    inputs: list[str] = typer.Argument(..., metavar="INPUT...", help="Input files (jsonl, json, csv, tsv, "
                                       "parquet, arrow), folders (their table files, or a folder saved with "
                                       "datasets' save_to_disk) or quoted globs ('data/*.parquet'), read in order."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for shards, manifest.json and rejects.jsonl."),
    images_root: Optional[Path] = typer.Option(None, "--images-root", help="Folder image paths are relative to "
                                               "(default: the deepest folder holding every input). "
                                               "Nothing outside it is read."),
    source: Optional[str] = typer.Option(None, "--source", help="Source name for samples that carry none "
                                         "(default: each input's name, or its dataset folder's for shard files)."),
    language: Optional[str] = typer.Option(None, "--language", help="en or zh (captions: template language)."),
    verify: str = typer.Option("header", "--verify", help="header: check headers and end markers; "
                               "full: decode every image (uses all cores)."),
    shard_size: str = typer.Option("500MiB", "--shard-size", help="Target shard size: "
                                   "MB/GB are 10^6/10^9 bytes, MiB/GiB 2^20/2^30 (e.g. 500MB, 512MiB)."),
    workers: int = typer.Option(0, "--workers", help="Image threads (0 = automatic: one per core with "
                                "--verify full; otherwise images are checked on the main thread "
                                "while the writer's threads write and hash, which is fastest)."),
) -> None:
    """Convert a dataset into unified-format parquet shards. The last line printed is JSON:
    {"input": N, "accepted": A, "rejected": R}. Exits 1 when nothing is accepted, 2 on bad options."""
    from nexus_gen.data.convert import FORMATS, convert_files, nothing_accepted

    if fmt not in FORMATS:
        raise typer.BadParameter(f"unknown format {fmt!r}; choose one of {_FORMATS}", param_hint="FORMAT")
    if verify not in ("header", "full"):
        raise typer.BadParameter(f"{verify!r}: choose header or full", param_hint="--verify")
    if language is not None and language not in ("en", "zh"):
        raise typer.BadParameter(f"{language!r}: choose en or zh", param_hint="--language")
    if images_root is not None and not images_root.is_dir():
        raise typer.BadParameter(f"{images_root} is not a directory", param_hint="--images-root")
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a directory", param_hint="--out")
    n_workers = workers or None
    try:
        summary = convert_files(fmt, inputs, out, images_root=images_root, source=source, language=language,
                                verify=verify, shard_bytes=_size(shard_size), workers=n_workers)
    except (ValueError, FileNotFoundError) as e:
        _say(f"error: {e}", err=True)
        raise typer.Exit(2)
    _say(f"converted {' '.join(inputs)} ({fmt}) -> {out}: {summary.shards} shard(s), {summary.bytes / 1e6:.1f} MB")
    _say(f"by task: {json.dumps(summary.by_task, ensure_ascii=False)}")
    _say(f"by language: {json.dumps(summary.by_language, ensure_ascii=False)}")
    if not summary.shards:  # datasets.load_dataset refuses an empty file list and a 0-row parquet
        _say("no shard written: no sample was accepted, so there is nothing to load (manifest.json "
             "lists no shards; see rejects.jsonl for why)")
    if summary.rejected:
        _say(f"rejected {summary.rejected}: {json.dumps(summary.reasons, ensure_ascii=False)} "
                   f"(see {out / 'rejects.jsonl'})")
    _say(json.dumps(summary.counts()))
    problem = nothing_accepted(fmt, inputs, summary)
    if problem is not None:
        _say(f"error: {problem}", err=True)
        raise typer.Exit(1)


def export(
    fmt: str = typer.Argument(..., metavar="FORMAT", help="nexus-gen-jsonl or diffsynth-csv (DiffSynth-Studio "
                              "metadata.jsonl, and metadata.csv when pandas reads it back exactly)."),
    shards: list[Path] = typer.Argument(..., metavar="SHARDS", help="Shard folder(s) or parquet file(s)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    absolute_paths: bool = typer.Option(False, "--absolute-paths", help="nexus-gen-jsonl: write absolute image "
                                        "paths (ms-swift resolves relative ones against the working directory)."),
) -> None:
    """Export shards to a training format; images are written as files next to the index."""
    from nexus_gen.data.export import EXPORT_FORMATS, export as do_export

    if fmt not in EXPORT_FORMATS:
        raise typer.BadParameter(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}",
                                 param_hint="FORMAT")
    for s in shards:
        if not s.exists():
            raise typer.BadParameter(f"{s} does not exist", param_hint="SHARDS")
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a directory", param_hint="--out")
    kwargs = {"absolute_paths": absolute_paths} if fmt == "nexus-gen-jsonl" else {}
    try:
        summary = do_export(fmt, shards, out, **kwargs)
    except ValueError as e:  # unreadable or empty shards: found before anything is written
        _say(f"error: {e}", err=True)
        raise typer.Exit(2)
    for w in summary.warnings:
        _say(f"warning: {w}", err=True)
    _say(json.dumps(summary.to_json(), ensure_ascii=False))


def validate(
    shards: list[Path] = typer.Argument(..., metavar="SHARDS", help="Shard folder(s) or parquet file(s)."),
    full: bool = typer.Option(False, "--full", help="Decode every image."),
) -> None:
    """Re-check shards: counts per task, source and language, and every problem found."""
    from nexus_gen.data.check import validate_shards

    for s in shards:
        if not s.exists():
            raise typer.BadParameter(f"{s} does not exist", param_hint="SHARDS")
    report = validate_shards(shards, full=full)
    _say(f"{report.samples} samples")
    for title, counter in (("task", report.by_task), ("source", report.by_source), ("language", report.by_language)):
        _say(f"by {title}:")
        for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0]))):
            _say(f"  {k}: {v}")
    for p in report.problems:
        _say(f"problem: {p}")
    _say(json.dumps(report.to_json(), ensure_ascii=False))
    if not report.ok:
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    """Add the data commands to the root app."""
    root.command("convert")(convert)
    root.command("export")(export)
    root.command("validate")(validate)
