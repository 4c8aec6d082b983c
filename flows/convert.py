"""Prefect flow around the converter, for scheduled and deployed runs (`nexus-gen convert` calls
the library directly, without starting Prefect). Thin: parameters, one task, an artifact."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from nexus_gen.data.convert import convert_files, nothing_accepted
from nexus_gen.data.shards import DEFAULT_SHARD_BYTES


@task(name="convert-file")
def convert_task(fmt: str, input_path: Union[str, list[str]], out: str, images_root: Optional[str],
                 source: Optional[str], language: Optional[str], verify: str, shard_bytes: int) -> dict[str, Any]:
    s = convert_files(fmt, input_path, out, images_root=images_root, source=source, language=language,
                      verify=verify, shard_bytes=shard_bytes)
    problem = nothing_accepted(fmt, input_path, s)
    if problem is not None:  # a run that converts nothing fails, with the likely cause
        raise ValueError(problem)
    return {**s.counts(), "by_task": s.by_task, "by_language": s.by_language, "reasons": s.reasons,
            "shards": s.shards, "bytes": s.bytes}


@flow(name="convert", log_prints=False)
def convert_flow(fmt: str, input_path: Union[str, list[str]], out: str, images_root: Optional[str] = None,
                 source: Optional[str] = None, language: Optional[str] = None, verify: str = "header",
                 shard_bytes: int = DEFAULT_SHARD_BYTES) -> dict[str, Any]:
    """Convert inputs (a file, folder, glob, or a list of them) into unified shards; posts the
    counts as a markdown artifact. Fails when nothing is accepted."""
    summary = convert_task(fmt, input_path, out, images_root, source, language, verify, shard_bytes)
    names = [input_path] if isinstance(input_path, str) else input_path
    md = [f"# convert {', '.join(f'`{Path(n).name}`' for n in names)} ({fmt})", "",
          "| input | accepted | rejected | shards |", "|---|---|---|---|",
          f"| {summary['input']} | {summary['accepted']} | {summary['rejected']} | {summary['shards']} |", ""]
    if summary["reasons"]:
        md += ["## rejects by reason", "", "```", json.dumps(summary["reasons"], indent=2, ensure_ascii=False), "```"]
    create_markdown_artifact("\n".join(md), key="convert-summary", description=f"convert {fmt}")
    return summary
