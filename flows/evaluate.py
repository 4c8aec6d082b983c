"""Prefect flows for the generation benchmarks: GenEval and GenEval-scenes as generate -> detect
and score -> report tasks over the plain steps of `eval.geneval.run`, with the report posted as
Prefect artifacts. Thin on purpose: all logic lives in `eval/`."""
from __future__ import annotations

import logging
import re
from typing import Any, Optional

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from eval.geneval.rules import ScoringOptions
from eval.geneval.run import GenEvalConfig, Plan, generate_step, prepare, report_step, score_step
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
def prepare_task(config: GenEvalConfig) -> Plan:
    """Check the config and write config.json (fails the flow before any work on bad input)."""
    return prepare(config)


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


def _run(config: GenEvalConfig) -> dict[str, Any]:
    """The task sequence both GenEval flows share."""
    plan = prepare_task(config)
    counts = generate_task(plan)
    log.info("images: %d generated, %d kept", counts["generated"], counts["kept"])
    summary = score_task(plan)
    report_task(plan)
    return summary


def _config(benchmark: str, generator: str, out: str, limit: Optional[int], n_images: int, seed: int,
            options: Optional[dict[str, Any]], **kw: Any) -> GenEvalConfig:
    return GenEvalConfig(generator=generator, out=out, benchmark=benchmark, limit=limit,
                         n_images=n_images, seed=seed,
                         options=ScoringOptions.from_mapping(options or {}), **kw)


@flow(name="geneval", log_prints=False)
def geneval_flow(generator: str, out: str, limit: Optional[int] = None, n_images: int = 4,
                 seed: int = 0, batch_size: int = 1, device: str = "cpu", dtype: str = "float32",
                 steps: Optional[int] = None, guidance: Optional[float] = None,
                 size: Optional[int] = None, detector: str = "paper", clip: str = "paper",
                 prompts: Optional[str] = None,
                 options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """GenEval on the official prompts: generate, detect (Mask2Former), score, report."""
    return _run(_config("geneval", generator, out, limit, n_images, seed, options,
                        batch_size=batch_size, device=device, dtype=dtype, steps=steps,
                        guidance=guidance, size=size, detector=detector, clip=clip, prompts=prompts))


@flow(name="geneval-scenes", log_prints=False)
def geneval_scenes_flow(generator: str, out: str, limit: Optional[int] = None, n_images: int = 4,
                        seed: int = 0, batch_size: int = 1, device: str = "cpu",
                        dtype: str = "float32", steps: Optional[int] = None,
                        guidance: Optional[float] = None, size: Optional[int] = None,
                        prompts: Optional[str] = None,
                        options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """GenEval-scenes, fully offline: scenes prompts, any generator (`ground-truth`, `noise`,
    `tiny`, a diffusers pipeline), the pixel detector, the same scorer and report."""
    return _run(_config("geneval-scenes", generator, out, limit, n_images, seed, options,
                        batch_size=batch_size, device=device, dtype=dtype, steps=steps,
                        guidance=guidance, size=size, prompts=prompts))
