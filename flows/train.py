"""Training as a Prefect flow: one flow run around the library's loop (`nexus_gen.train.train_loop`),
with a markdown artifact holding the loss plot and the final numbers. Thin: the loop runs the same
without Prefect (and does, under torchrun: see flows/cli_train.py)."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Optional

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from nexus_gen.train.train_config import load_train_config
from nexus_gen.train.train_loop import train
from nexus_gen.train.train_metrics import PLOT, read_run_record


def train_summary(record: dict[str, Any], out: Path) -> str:
    """The run in markdown: status, steps, final loss, sample counts, skips by reason, loss plot."""
    c = record.get("counts", {})
    md = [f"# train `{record.get('stage')}` ({record.get('status')})", "",
          "| step | max steps | final loss | samples | skipped | global batch | precision | seconds |",
          "|---|---|---|---|---|---|---|---|",
          f"| {record.get('step')} | {record.get('max_steps')} | {record.get('final_loss')} | {c.get('samples')} | "
          f"{c.get('skipped')} | {record.get('global_batch')} | {record.get('precision')} | {record.get('seconds')} |"]
    if c.get("skipped_by_reason"):
        md += ["", "| skipped because | samples |", "|---|---|"]
        md += [f"| {r} | {n} |" for r, n in c["skipped_by_reason"].items()]
    if record.get("last_error"):
        md += ["", f"**error**: {record['last_error']}"]
    plot = out / PLOT
    if plot.is_file():
        md += ["", f"![loss](data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()})"]
    return "\n".join(md)


@flow(name="train", log_prints=False)
def train_flow(config: str, out: str, overrides: Optional[dict[str, Any]] = None, resume: bool = False,
               progress: bool = False) -> dict[str, Any]:
    """Train the config's stage into `out`; returns the run record (`run.json`)."""
    cfg = load_train_config(config, overrides)
    try:
        return train(cfg, out, resume=resume, progress=progress)
    finally:
        record = read_run_record(out)
        if record:
            create_markdown_artifact(train_summary(record, Path(out)), key="train-summary",
                                     description=f"train {cfg.stage}: {json.dumps(record.get('counts', {}))}")
