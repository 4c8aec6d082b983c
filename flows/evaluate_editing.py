"""Prefect flow for the editing benchmark: prepare -> edit -> score -> judge -> report, each a
task over the plain steps of `eval.editing.edit_run`, the report posted as Prefect artifacts.
Thin on purpose: all logic lives in `eval/editing/`."""
from __future__ import annotations

import logging
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from eval.editing import edit_run
from eval.editing.edit_report import build_editing_report, write_editing_report
from flows.evaluate import post_report_artifacts

log = logging.getLogger(__name__)


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(plan: edit_run.Plan) -> edit_run.Plan:
    return edit_run.prepare(plan)


@task(name="edit", cache_policy=NO_CACHE)
def edit_task(plan: edit_run.Plan) -> dict[str, Any]:
    """Make the missing edited images (resumable)."""
    return edit_run.edit_step(plan)


@task(name="score", cache_policy=NO_CACHE)
def score_task(plan: edit_run.Plan) -> list[dict[str, Any]]:
    return edit_run.score_step(plan)


@task(name="judge", cache_policy=NO_CACHE)
def judge_task(plan: edit_run.Plan) -> list[dict[str, Any]]:
    return edit_run.judge_step(plan)


@task(name="report", cache_policy=NO_CACHE)
def report_task(plan: edit_run.Plan) -> str:
    md, html = write_editing_report(plan.out)
    post_report_artifacts(build_editing_report(plan.out), edit_run.BENCHMARK)
    log.info("report written: %s and %s", md, html)
    return str(html)


@flow(name=edit_run.BENCHMARK, log_prints=False,
      description="Editing benchmark: edit (any editor), score (MagicBrush / Emu Edit metrics, "
                  "scenes exact success), judge (optional GEdit / ImgEdit VLM judges), report.")
def editing_flow(plan: edit_run.Plan) -> dict[str, Any]:
    """An editing run of a plan `edit_run.check` has passed already."""
    plan = prepare_task(plan)
    edits = edit_task(plan)
    log.info("edited images: %d made, %d kept", edits["edited"], edits["kept"])
    rows = score_task(plan)
    judgments = judge_task(plan)
    summary = edit_run.summarize(plan, edits, rows, judgments)
    report_task(plan)
    return summary
