"""`nexus-gen publish`: a finished build run (or a `nexus-gen select` output of one) to a dataset hub (Hugging Face, ModelScope, or a
folder / fsspec URL), staged, validated with `datasets`, then uploaded
(nexus_gen.hub.hub_publish). Bad input (not a finished run, a bad repo id or hub, no token) is
refused here in one line, before Prefect starts; the last line printed is JSON
{"target", "status", "uploaded", "unchanged", "deleted", "commits"}."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def publish(
    run: Path = typer.Argument(..., metavar="RUN_DIR", help="Folder of a finished `nexus-gen build`, or a "
                               "`nexus-gen select` output (published filtered; its source run must be "
                               "unchanged)."),
    policy: Optional[str] = typer.Option(None, "--policy", "-p", help="Publish the run filtered by this policy "
                                         "(a name in datasets_spec/filters, a YAML file, or auto: the recipe's "
                                         "filter_policy), as `nexus-gen select` would. Default: unfiltered."),
    repo_id: str = typer.Option(..., "--repo-id", help="ORG/NAME of the dataset repository."),
    hub: str = typer.Option("hf", "--hub", help="hf (Hugging Face; token from HF_TOKEN or `huggingface-cli "
                            "login`), modelscope (needs nexus-gen[modelscope]; MODELSCOPE_API_TOKEN or its "
                            "login), or dir:PATH (a folder or an fsspec URL; the repo is PATH/ORG/NAME)."),
    private: bool = typer.Option(False, "--private", help="Create the repository private (an existing one "
                                 "keeps its visibility)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Stage and validate, list what would be uploaded; "
                                 "upload nothing."),
    license: Optional[str] = typer.Option(None, "--license", help="The card's licence (a hub licence id), "
                                          "instead of the one the sources imply (`other` when unknown)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Hugging Face endpoint URL (default: "
                                           "HF_ENDPOINT or https://huggingface.co)."),
    max_shard_size: str = typer.Option("500MB", "--max-shard-size", help="Bound of one parquet file "
                                       "(500MB = 500*10^6 bytes, 512MiB, 1GB)."),
    commit_files: int = typer.Option(50, "--commit-files", min=1, help="Files per commit at most."),
    commit_bytes: str = typer.Option("1GB", "--commit-bytes", help="Bytes per commit at most (a larger file "
                                     "gets a commit of its own)."),
    retries: int = typer.Option(5, "--retries", min=0, help="Retries of a call that failed transiently "
                                "(connection, 408/429/5xx), with exponential backoff."),
) -> None:
    """Publish a build run as a dataset repository: a config per task (understanding, generation,
    editing) and the triplet table, as `push_to_hub` lays them out, with a dataset card (licence,
    configs, features, how it was built, score plots, a sample grid, attribution). Validated
    offline with `datasets` before anything is uploaded; unchanged files are not uploaded again,
    and an interrupted publish resumes."""
    from flows.runtime import fail, run_flow
    from nexus_gen.data.shards import parse_byte_size
    from nexus_gen.hub.hub_publish import (PublishError, check_repo_id, check_run, parse_hub, resolve_token,
                                           summary)
    from nexus_gen.hub.publish_source import resolve_source

    try:
        sizes = {}
        for name, text in (("--max-shard-size", max_shard_size), ("--commit-bytes", commit_bytes)):
            try:
                sizes[name] = parse_byte_size(text)
            except ValueError as exc:
                raise PublishError(f"{name}: {exc}") from None
        check_repo_id(repo_id)
        kind, _ = parse_hub(hub)
        resolve_source(run, policy, check_run)  # a bad run, selection or policy stops here
        resolve_token(kind)  # a missing token stops here, before any staging
    except PublishError as exc:
        fail(exc)
    from flows.publish import publish_flow

    try:
        rec = run_flow(publish_flow, run_dir=str(run), repo_id=repo_id, policy=policy, hub=hub, private=private,
                       dry_run=dry_run,
                       endpoint=endpoint, license=license, max_shard_bytes=sizes["--max-shard-size"],
                       commit_files=commit_files, commit_bytes=sizes["--commit-bytes"], retries=retries,
                       resume_hint="run the same command again to resume (only what is missing is uploaded)")
    except PublishError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1)
    s = summary(rec)
    cfgs = "; ".join(f"{c} ({', '.join(f'{k} {v}' for k, v in sp.items())})" for c, sp in rec["configs"].items())
    how = "reused (inputs unchanged)" if rec.get("staging") == "reused" else "staged and validated"
    typer.echo(f"{how}: {cfgs} in {rec['staged']}")
    if rec["status"] == "dry-run":
        typer.echo(f"dry run: would upload {len(rec['to_upload'])} file(s) in {rec['planned_commits']} commit(s) to "
                   f"{rec['location']}, {len(rec['unchanged'])} unchanged, {len(rec['to_delete'])} to delete")
        for p in rec["to_upload"]:
            typer.echo(f"  + {p}")
        for p in rec["to_delete"]:
            typer.echo(f"  - {p}")
    elif s["uploaded"] or s["deleted"]:
        typer.echo(f"published to {rec['location']}: uploaded {s['uploaded']} file(s) in {s['commits']} commit(s), "
                   f"{s['unchanged']} unchanged, {s['deleted']} deleted")
    else:
        typer.echo(f"{rec['location']} is up to date: nothing uploaded ({s['unchanged']} files unchanged)")
    typer.echo(f"record: {Path(rec['staged']).parent / 'publish.json'}")
    typer.echo(json.dumps(s))


def register(root: typer.Typer) -> None:
    """Add `nexus-gen publish` to the root app."""
    root.command("publish")(publish)
