"""Prefect flows for the generation benchmarks: GenEval and GenEval-scenes as prepare -> generate ->
detect and score -> report tasks over the plain steps of `eval.geneval.run`, with the report posted
as Prefect artifacts. Thin on purpose: all logic lives in `eval/`.

The two benchmark flows share one parameter list; `run_checked` runs a plan the caller has already
checked (the command line checks before Prefect starts, and the config is checked once)."""
from __future__ import annotations

import logging
import re
from typing import Any, Optional

from prefect import Flow, flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from eval.geneval.run import (SCENES_DETECTOR, GenEvalConfig, Plan, check, generate_step, prepare,
                              report_step, score_step)
from eval.report import Report, render_markdown

log = logging.getLogger(__name__)


def _artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower())).strip("-")


def post_report_artifacts(report: Report, key_prefix: str) -> None:
    """Post a report as a markdown artifact (figures inline) and each of its tables as a table
    artifact, keyed by benchmark so the UI shows their history across runs."""
    create_markdown_artifact(markdown=render_markdown(report, embed_figures=True),
                             key=_artifact_key(key_prefix, "report"), description=report.title)
    for section in report.sections:
        for i, table in enumerate(section.tables):
            key = _artifact_key(key_prefix, section.title, str(i) if i else "")
            create_table_artifact(table=[{k: v for k, v in r.items()} for r in table.records()],
                                  key=key, description=f"{report.title}: {section.title}")


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(plan: Plan) -> Plan:
    """Create the run directory and write config.json (the plan is checked already)."""
    return prepare(plan)


@task(name="generate", cache_policy=NO_CACHE)
def generate_task(plan: Plan) -> dict[str, int]:
    """Generate the missing images in the official layout (resumable)."""
    return generate_step(plan)


@task(name="detect-and-score", cache_policy=NO_CACHE)
def score_task(plan: Plan) -> dict[str, Any]:
    """Detect (resumable, writes detections.jsonl) and score; writes results and summary."""
    return score_step(plan)


@task(name="report", cache_policy=NO_CACHE)
def report_task(plan: Plan) -> str:
    """Write report.md / report.html and post the report as Prefect artifacts."""
    report, md, html = report_step(plan)
    post_report_artifacts(report, plan.config.benchmark)
    log.info("report written: %s and %s", md, html)
    return str(html)


def _run(plan: Plan) -> dict[str, Any]:
    """The task sequence every GenEval flow runs, on a checked plan."""
    plan = prepare_task(plan)
    counts = generate_task(plan)
    log.info("images: %d generated, %d kept", counts["generated"], counts["kept"])
    summary = score_task(plan)
    report_task(plan)
    return summary


def _benchmark_flow(benchmark: str, default_detector: str, description: str) -> Flow:
    """The flow of one GenEval benchmark; both benchmarks share this parameter list, which is
    GenEvalConfig's (`options`: official scoring option names, values maybe strings). A bad
    config fails in `check`, before any work."""

    @flow(name=benchmark, description=description, log_prints=False)
    def geneval_benchmark(generator: str, out: str, limit: Optional[int] = None, n_images: int = 4,
                          seed: int = 0, batch_size: int = 1, device: str = "cpu",
                          dtype: str = "float32", steps: Optional[int] = None,
                          guidance: Optional[float] = None, size: Optional[int] = None,
                          detector: str = default_detector, clip: str = "paper",
                          precision: Optional[str] = None, prompts: Optional[str] = None,
                          options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        return _run(check(GenEvalConfig.from_params(
            benchmark, generator=generator, out=out, limit=limit, n_images=n_images, seed=seed,
            batch_size=batch_size, device=device, dtype=dtype, steps=steps, guidance=guidance,
            size=size, detector=detector, clip=clip, precision=precision, prompts=prompts,
            options=options)))

    return geneval_benchmark


geneval_flow = _benchmark_flow(
    "geneval", "paper", "GenEval on the official prompts: generate, detect (Mask2Former), score, report.")
geneval_scenes_flow = _benchmark_flow(
    "geneval-scenes", SCENES_DETECTOR,
    "GenEval-scenes, fully offline: scenes prompts, any generator (`ground-truth`, `noise`, `tiny`, "
    "a diffusers pipeline), the pixel detector (the only `detector`; `clip` is unused, `precision` "
    "stays unset: colours come from the detector), the same scorer and report.")


@flow(log_prints=False)
def checked_flow(plan: Plan) -> dict[str, Any]:
    """A GenEval run of a plan `check` has passed already."""
    return _run(plan)


def run_checked(plan: Plan) -> dict[str, Any]:
    """Run a checked plan in-process as its benchmark's flow (same flow name, artifacts and
    history as `geneval_flow` / `geneval_scenes_flow`); returns the summary."""
    return checked_flow.with_options(name=plan.config.benchmark)(plan)
