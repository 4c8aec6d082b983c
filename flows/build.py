"""The data-building job as a Prefect flow: one task per shard (never per image), run on threads,
a Dask cluster or a Ray cluster, resumable (finished shards are skipped), with artifacts. Thin: every step
is a library call of `nexus_gen.edit.build`, which a plain loop runs the same way."""
from __future__ import annotations

import base64
import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Optional

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from flows.runtime import wait_units
from nexus_gen.edit.build import finish_run, prepare_run, summary_line
from nexus_gen.edit.execute import BuildContext, run_shard
from nexus_gen.edit.plan import ShardPlan

log = logging.getLogger(__name__)
RUNNERS = ("threads", "dask", "ray")


def transient(exc: BaseException) -> bool:
    """Errors worth a retry: I/O and connection faults, out-of-memory; never a bad input."""
    if isinstance(exc, (ConnectionError, TimeoutError, MemoryError)):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError,
                                                        IsADirectoryError, NotADirectoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except BaseException as exc:  # the task's own exception
        return transient(exc)
    return False


@task(name="build-shard", retries=2, retry_delay_seconds=2, retry_condition_fn=_retry_transient,
      cache_policy=NO_CACHE)
def build_shard(plan: ShardPlan, ctx: BuildContext) -> dict[str, Any]:
    """One shard: edit, score, write; its marker is written last."""
    return run_shard(plan, ctx)


def task_runner(runner: str, workers: Optional[int], dask_address: Optional[str],
                ray_address: Optional[str] = None):
    """The Prefect task runner for `runner`: threads; Dask (a LocalCluster of `workers`
    single-threaded processes, or the scheduler at `dask_address`); or Ray (`prefect-ray`: the
    cluster at `ray_address`, or a local Ray of `workers` CPUs, one shard per CPU)."""
    from prefect.task_runners import ThreadPoolTaskRunner

    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers or 1)
    if runner == "ray":
        from prefect_ray import RayTaskRunner

        if ray_address:
            return RayTaskRunner(address=ray_address)
        return RayTaskRunner(init_kwargs={"num_cpus": workers or 2, "include_dashboard": False,
                                          "log_to_driver": False})
    if runner != "dask":
        raise ValueError(f"unknown runner {runner!r}: choose one of {', '.join(RUNNERS)}")
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers or 2, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def gpu_placement(device: str, runner: Any) -> contextlib.AbstractContextManager:
    """One GPU per shard task on a cluster: Ray assigns one to each task (`num_gpus=1`, which
    sets the task's CUDA_VISIBLE_DEVICES, so `cuda` is its GPU); Dask runs shards only on workers
    started with `--resources GPU=1`, one shard per GPU at a time. Nothing on CPU or threads."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    kind = type(runner).__name__
    if kind == "RayTaskRunner":
        from prefect_ray.context import remote_options

        return remote_options(num_gpus=1)
    if kind == "DaskTaskRunner":
        import dask

        return dask.annotate(resources={"GPU": 1})
    return contextlib.nullcontext()


def post_artifacts(record: dict[str, Any], out: Path) -> None:
    """Counts per edit type, rejects by reason, and a PNG grid of sample triplets."""
    md = [f"# build `{record['recipe']}` ({record['status']})", "",
          "| edit type | planned | triplets | rejected |", "|---|---|---|---|"]
    for t, c in sorted(record["by_edit_type"].items()):
        md.append(f"| {t} | {c.get('planned', 0)} | {c.get('triplets', 0)} | {c.get('rejected', 0)} |")
    md += ["", f"samples by task: {json.dumps(record['by_task'])}; by split: {json.dumps(record['by_split'])}", ""]
    if record["rejects_by_reason"]:
        md += ["## rejects by reason", "", "| reason | count |", "|---|---|"]
        md += [f"| {r} | {n} |" for r, n in sorted(record["rejects_by_reason"].items(), key=lambda x: -x[1])]
    grid = out / "grid.png"
    if grid.exists():
        md += ["", "## sample triplets (source | target | mask)", "",
               f"![triplets](data:image/png;base64,{base64.b64encode(grid.read_bytes()).decode()})"]
    create_markdown_artifact("\n".join(md), key="build-summary", description=f"build {record['recipe']}")


def write_grid(out: Path) -> None:
    from nexus_gen.edit.grid import triplet_grid

    if (out / "triplets" / "manifest.json").exists():
        (out / "grid.png").write_bytes(triplet_grid(out / "triplets"))


def _unwalked(plan: ShardPlan, ctx: BuildContext) -> tuple:
    """A task's parameters as Prefect should see them. Prefect walks every parameter twice per
    task looking for futures (~45 ms a shard for a plan and the context: its recipe and the
    split of every source; they hold none); `quote` skips that walk. Not on Dask, which turns a
    quote (a tuple) into a plain tuple (prefect-dask issue #43)."""
    from prefect.context import FlowRunContext
    from prefect.task_runners import ThreadPoolTaskRunner

    run_ctx = FlowRunContext.get()
    if run_ctx is not None and isinstance(run_ctx.task_runner, ThreadPoolTaskRunner):
        return quote(plan), quote(ctx)
    return plan, ctx


@flow(name="build", log_prints=False)
def build_flow(recipe: str, out: str, limit: Optional[int] = None, progress: bool = False,
               device: str = "cpu") -> dict[str, Any]:
    """Build a recipe into `out` (resumable) with its models on `device` (on a cluster: each
    worker's own); returns the run record (`run.json`)."""
    run = prepare_run(recipe, out, limit, device=device)
    if run.finished is not None:
        log.info("%s is already complete: nothing to do", out)
        return run.finished
    from prefect.context import FlowRunContext

    with gpu_placement(device, getattr(FlowRunContext.get(), "task_runner", None)):
        futures = [build_shard.submit(*_unwalked(s, run.ctx)) for s in run.todo]
    error = wait_units(futures, len(run.selected), "shard", f"build {run.recipe.name}", progress, log)
    record = finish_run(run, error)
    write_grid(Path(out))
    post_artifacts(record, Path(out))
    if error is not None:
        raise error
    return record
