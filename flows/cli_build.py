"""`nexus-gen build`: build a recipe into a run folder through the Prefect build flow.

The recipe and the run folder are checked here, before Prefect starts (a bad recipe fails in one
message naming the file and the key); the last line printed is JSON:
{"triplets": T, "samples": S, "rejected": R, "shards": K}."""
from __future__ import annotations

import enum
import json
import logging
import re
from pathlib import Path
from typing import Optional

import typer

log = logging.getLogger(__name__)


class Runner(str, enum.Enum):
    threads = "threads"
    dask = "dask"
    ray = "ray"


def build(
    recipe: str = typer.Argument(..., metavar="RECIPE", help="Recipe YAML file, or the name of a "
                                 "built-in recipe in datasets_spec/recipes (demo, demo_imagepulse, imagepulse, small)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (resumable: finished shards are kept)."),
    runner: Runner = typer.Option(Runner.threads, "--runner", help="threads; dask (a LocalCluster, "
                                  "or the scheduler given by --dask-address); ray (a local Ray, or the "
                                  "cluster given by --ray-address)."),
    dask_address: Optional[str] = typer.Option(None, "--dask-address", help="tcp://HOST:PORT of a running "
                                               "Dask scheduler (implies --runner dask)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="HOST:PORT (or ray://HOST:10001, "
                                              "or auto) of a running Ray cluster (implies --runner ray)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Shards built at once "
                                          "(threads, LocalCluster worker processes or local Ray CPUs; "
                                          "default 1 / 2 / 2)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N: where each shard's models "
                               "run (on a cluster, each worker's own GPU: give each worker one with "
                               "CUDA_VISIBLE_DEVICES)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Build only the first N shards "
                                        "(a later run without --limit goes on from there)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Resolve every model id and print the plan; "
                                 "load no weights, write nothing (exit 1 if a model cannot be loaded)."),
) -> None:
    """Build edit triplets and unified training shards from a recipe, scored, with lineage."""
    from nexus_gen.edit.build import RunError, prepare_run, summary_line
    from nexus_gen.edit.recipe import RecipeError

    if dry_run:
        _dry_run(recipe)
        return

    from flows.runtime import fail, run_flow

    if dask_address and ray_address:
        fail("--dask-address and --ray-address name two clusters: give one")
    if (dask_address and runner == Runner.ray) or (ray_address and runner == Runner.dask):
        fail(f"--runner {runner.value} does not go with --{'dask' if dask_address else 'ray'}-address")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", str(out)):
        fail(f"--out {out}: a run folder is a local path; for object storage or another machine, "
             "build into a shared file system mounted at the same path on every worker (see the README, "
             "'From laptop to cluster')")
    _check_device(device, remote=bool(dask_address or ray_address))
    try:
        run = prepare_run(recipe, out, limit, device=device)  # validate and plan before Prefect starts
    except (RecipeError, RunError) as exc:
        fail(exc)
    if run.finished is not None:
        typer.echo(f"{out} is already complete ({run.finished['status']}): nothing to do")
        typer.echo(json.dumps(summary_line(run.finished)))
        return
    kind = "dask" if dask_address else "ray" if ray_address else runner.value
    typer.echo(f"{run.recipe.name}: {len(run.selected)} shards ({len(run.selected) - len(run.todo)} done), "
               f"{run.plan.planned} planned triplets, runner {kind}")
    from flows.build import build_flow, task_runner

    flow = build_flow.with_options(task_runner=task_runner(kind, workers, dask_address, ray_address))
    try:
        record = run_flow(flow, recipe=recipe, out=str(out), limit=limit, progress=True, device=device,
                          resume_hint=f"run the same command to go on (finished shards are kept)")
    except Exception as exc:
        typer.echo(f"error: the build stopped: {exc}; finished shards are kept, run the same command "
                   f"to go on (details in {out / 'run.json'})", err=True)
        raise typer.Exit(code=1)
    c = record["counts"]
    typer.echo(f"planned {c['planned']} = triplets {c['triplets']} + rejected {c['rejected']}; "
               f"samples {c['samples']} {json.dumps(record['by_task'])}; splits {json.dumps(record['by_split'])}; "
               f"rejects: {out / 'rejects.jsonl'}")
    typer.echo(json.dumps(summary_line(record)))


def _check_device(device: str, remote: bool) -> None:
    """A misspelt device fails here; a GPU this machine lacks too, unless the shards run on a
    cluster's workers (their GPUs are theirs to have)."""
    from flows.runtime import fail

    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        fail(f"--device {device!r}: use cpu, cuda or cuda:N")
    if not remote and device != "cpu":
        from nexus_gen.scoring.device import check_device

        try:
            check_device(device)
        except ValueError as exc:
            fail(f"--device: {exc} (or build on a cluster with GPU workers: --dask-address / --ray-address)")


def _dry_run(recipe: str) -> None:
    from nexus_gen.edit.build import dry_run
    from nexus_gen.edit.recipe import RecipeError

    try:
        info = dry_run(recipe)
    except RecipeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2)
    typer.echo(f"{info['recipe']} ({info['recipe_file']}, hash {info['recipe_hash']}): {info['planned']} "
               f"triplets in {info['shards']} shards; by edit type {json.dumps(info['by_edit_type'])}; "
               f"by split {json.dumps(info['by_split'])}; sources {json.dumps(info['sources'])}")
    for role, m in info["models"].items():
        mem = f", ~{m['gpu_memory_gb']} GB GPU (bf16)" if "gpu_memory_gb" in m else ""
        typer.echo(f"  {role}: {m['spec']} -> {m['id']} [{m['status']}{mem}]")
    typer.echo(json.dumps(info, ensure_ascii=False, sort_keys=True))
    if info["problems"]:
        raise typer.Exit(code=1)


def register(root: typer.Typer) -> None:
    """Add `nexus-gen build` to the root app."""
    root.command("build")(build)
