"""The flows the schedules run (`datasets_spec/schedules.yaml`, `prefect.yaml`): a build with its
task runner chosen by parameters, a GenEval benchmark, and a build that is published only when
it finished whole. Thin: each one calls the build / benchmark flow as a subflow.

`out` may hold `{date}`: the scheduled run's date (UTC, YYYY-MM-DD), so each night's run gets its
own folder (a rerun of the same flow run resumes the same folder)."""
from __future__ import annotations

import datetime
import logging
import string
from pathlib import Path
from typing import Any, Literal, Optional

from prefect import flow

log = logging.getLogger(__name__)
PLACEHOLDERS = ("date",)
Runner = Literal["threads", "dask", "ray"]


class PublishRefused(RuntimeError):
    """The build did not finish whole: nothing is published."""


def placeholder_problem(value: str) -> Optional[str]:
    """Why `value` is not a valid templated path (None if it is): only `{date}` is known."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        return f"{value!r}: {exc} (write a literal brace as {{{{ or }}}})"
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        return f"{value!r}: unknown placeholder {{{unknown[0]}}}; known: {{date}}"
    return None


def expand_out(out: str, when: Optional[datetime.datetime] = None) -> str:
    """`out` with `{date}` replaced by `when`'s UTC date (default: the scheduled start time of
    the current flow run, else now)."""
    problem = placeholder_problem(out)
    if problem:
        raise ValueError(f"out {problem}")
    if when is None:
        when = _scheduled_time()
    return out.format(date=when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d"))


def _scheduled_time() -> datetime.datetime:
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time if flow_run.id else None
    return when if isinstance(when, datetime.datetime) else datetime.datetime.now(datetime.timezone.utc)


def publish_refusal(run_dir: str) -> Optional[str]:
    """Why the build in `run_dir` must not be published (None: it may): the publisher's own check
    (`nexus_gen.hub.hub_publish.check_run`: complete over its whole recipe, not a --limit run,
    counts that reconcile, samples to publish), with a recorded reconciliation required."""
    from pathlib import Path

    from nexus_gen.hub.hub_publish import PublishError, check_run

    try:
        record, _ = check_run(Path(run_dir))
    except PublishError as exc:
        return str(exc)
    if record.get("reconciled") is not True:
        return f"{run_dir}: its run record does not say its counts reconcile; rerun the same `nexus-gen build`"
    return None


@flow(name="scheduled-build", log_prints=False)
def scheduled_build(recipe: str, out: str, runner: Runner = "threads", workers: int = 1,
                    dask_address: Optional[str] = None, ray_address: Optional[str] = None,
                    limit: Optional[int] = None, device: str = "cpu") -> dict[str, Any]:
    """Build `recipe` into `out` (`{date}` expanded) on the chosen task runner; a failed build
    fails this flow run. Returns the run record (run.json)."""
    from flows.build import build_flow, task_runner

    target = expand_out(out)
    log.info("scheduled build of %s into %s (runner %s)", recipe, target, runner)
    flow_ = build_flow.with_options(task_runner=task_runner(runner, workers, dask_address, ray_address))
    return flow_(recipe=recipe, out=target, limit=limit, device=device)


@flow(name="scheduled-benchmark", log_prints=False)
def scheduled_benchmark(out: str, generator: str = "ground-truth",
                        benchmark: Literal["geneval", "geneval-scenes"] = "geneval-scenes",
                        limit: Optional[int] = None, n_images: int = 4, seed: int = 0,
                        size: Optional[int] = None, steps: Optional[int] = None, device: str = "cpu",
                        dtype: str = "float32", detector: Optional[str] = None,
                        clip: Optional[str] = None) -> dict[str, Any]:
    """Run GenEval (`geneval`) or GenEval-scenes (`geneval-scenes`) with `generator` into `out`
    (`{date}` expanded); returns the summary."""
    from flows.evaluate import geneval_flow, geneval_scenes_flow

    flows_ = {"geneval": geneval_flow, "geneval-scenes": geneval_scenes_flow}
    if benchmark not in flows_:
        raise ValueError(f"benchmark {benchmark!r}: choose one of {', '.join(flows_)}")
    extra = {k: v for k, v in (("detector", detector), ("clip", clip)) if v is not None}
    return flows_[benchmark](generator=generator, out=expand_out(out), limit=limit, n_images=n_images,
                             seed=seed, size=size, steps=steps, device=device, dtype=dtype, **extra)


def publish_built_run(run_dir: str, publish: dict[str, Any]) -> Any:
    """Publish a finished build through the publishing flow (`flows.publish.publish_flow`, called
    with the run folder first and `publish` as keyword parameters). Refuses (PublishRefused) a
    build that did not finish whole: a failed build publishes nothing."""
    why = publish_refusal(run_dir)
    if why is not None:
        raise PublishRefused(f"not publishing: {why}")
    try:
        from flows.publish import publish_flow
    except ImportError as exc:
        raise PublishRefused(f"not publishing {run_dir}: the publishing flow (flows.publish.publish_flow) "
                             f"is not available in this installation ({exc})") from None
    return publish_flow(run_dir, **publish)


@flow(name="build-and-publish", log_prints=False)
def build_and_publish(recipe: str, out: str, publish: Optional[dict[str, Any]] = None,
                      runner: Runner = "threads", workers: int = 1, dask_address: Optional[str] = None,
                      ray_address: Optional[str] = None, device: str = "cpu") -> dict[str, Any]:
    """Build `recipe` into `out`, then publish it only if the build finished whole (complete,
    every shard, counts reconciled); a failed build fails this flow run and publishes nothing."""
    target = expand_out(out)
    scheduled_build(recipe=recipe, out=target, runner=runner, workers=workers,
                    dask_address=dask_address, ray_address=ray_address, device=device)  # raises if it failed
    result = publish_built_run(target, dict(publish or {}))
    return {"run": str(Path(target)), "published": result}


SCHEDULED_FLOWS = {f.name: f for f in (scheduled_build, scheduled_benchmark, build_and_publish)}
