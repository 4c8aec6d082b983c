"""Prefect flow for the understanding benchmarks: prepare -> predict -> score -> report tasks
over the plain steps of `eval.understanding.understanding_run`, the report posted as Prefect artifacts. Thin on
purpose: all logic lives in `eval/understanding/`; the command line checks the config first."""
from __future__ import annotations

import logging
from typing import Any, Optional

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from eval.understanding.understanding_run import Plan, UnderstandingConfig, check, predict_step, prepare, report_step, score_step
from flows.evaluate import post_report_artifacts

log = logging.getLogger(__name__)


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(plan: Plan) -> Plan:
    """Create the run directory; write config.json and items.jsonl."""
    return prepare(plan)


@task(name="predict", cache_policy=NO_CACHE)
def predict_task(plan: Plan) -> dict[str, int]:
    """Answer the items without a saved prediction (resumable)."""
    return predict_step(plan)


@task(name="score", cache_policy=NO_CACHE)
def score_task(plan: Plan) -> dict[str, Any]:
    """Parse and score; writes parsed.jsonl, scores.json, summary.json."""
    return score_step(plan)


@task(name="report", cache_policy=NO_CACHE)
def report_task(plan: Plan) -> str:
    """Write report.md / report.html and post them as Prefect artifacts."""
    from eval.understanding.understanding_report import build_understanding_report

    md, html = report_step(plan.out)
    post_report_artifacts(build_understanding_report(plan.out), f"understanding-{plan.config.task}")
    log.info("report written: %s and %s", md, html)
    return str(html)


def _run(plan: Plan) -> dict[str, Any]:
    plan = prepare_task(plan)
    counts = predict_task(plan)
    log.info("predictions: %d new, %d kept, %d failed, %d items not run", counts["predicted"],
             counts["kept"], counts["failed"], counts["not_run"])
    summary = score_task(plan)
    report_task(plan)
    return summary


@flow(name="understanding", log_prints=False)
def understanding_flow(task_name: str, data: str, model: str, out: str, parser: str = "robust",
                       limit: Optional[int] = None, batch_size: int = 4, device: str = "cpu",
                       dtype: str = "float32", max_new_tokens: int = 16) -> dict[str, Any]:
    """An understanding benchmark (scenes, mme, pope, mmbench, mc) end to end; a bad config
    fails in `check`, before any work."""
    from pathlib import Path

    return _run(check(UnderstandingConfig(task_name, data, model, Path(out), parser, limit, batch_size,
                                          device, dtype, max_new_tokens)))


@flow(log_prints=False)
def checked_understanding_flow(plan: Plan) -> dict[str, Any]:
    """An understanding run of a plan `check` has passed already."""
    return _run(plan)


def run_checked_understanding(plan: Plan) -> dict[str, Any]:
    """Run a checked plan in-process as the `understanding` flow; returns the summary."""
    return checked_understanding_flow.with_options(name=f"understanding-{plan.config.task}")(plan)
