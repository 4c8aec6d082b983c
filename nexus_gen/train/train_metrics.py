"""Training metrics: `metrics.jsonl` (one line per logged step), the loss plot `loss.png`, and the
run record `run.json` that `nexus-gen runs list` reads ({"kind": "train", "status", "stage",
"step", "max_steps", "seconds", "last_error", "counts", "final_loss", ...})."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Union

from nexus_gen.data.shards import write_json_atomic

METRICS = "metrics.jsonl"
PLOT = "loss.png"
RUN_RECORD = "run.json"


def read_metrics(run_dir: Union[str, Path]) -> list[dict[str, Any]]:
    """The metrics lines of a run (none when it has not logged yet)."""
    p = Path(run_dir) / METRICS
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


class MetricsLog:
    """Appends metric lines; on a resume from step `s`, lines after `s` (logged by the run that
    died after its last checkpoint) are dropped first, so the file reads as one run."""

    def __init__(self, run_dir: Union[str, Path], resume_step: int = 0) -> None:
        self.path = Path(run_dir) / METRICS
        kept = [m for m in read_metrics(run_dir) if m["step"] <= resume_step] if resume_step else []
        tmp = self.path.with_name(f".{METRICS}.tmp")
        tmp.write_text("".join(json.dumps(m, sort_keys=True) + "\n" for m in kept), encoding="utf-8")
        tmp.replace(self.path)

    def write(self, record: dict[str, Any]) -> None:
        """Append one line (NaN as null: JSON has no NaN)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean, sort_keys=True) + "\n")


def plot_loss(run_dir: Union[str, Path], title: str = "") -> Path:
    """`loss.png`: the loss (and each logged part) per step, and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [m for m in read_metrics(run_dir) if m.get("loss") is not None]
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    steps = [m["step"] for m in rows]
    ax.plot(steps, [m["loss"] for m in rows], label="loss", color="black")
    for part in sorted({p for m in rows for p in (m.get("parts") or {})}):
        pts = [(m["step"], m["parts"][part]) for m in rows if part in (m.get("parts") or {})]
        ax.plot([s for s, _ in pts], [v for _, v in pts], label=part, alpha=0.7)
    ax.set_ylabel("loss")
    ax.set_title(title or "training loss")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    ax_lr.plot(steps, [m.get("lr") for m in rows], color="tab:blue")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(run_dir) / PLOT
    fig.savefig(out, dpi=100, metadata={"Software": None})  # no version string: same input, same bytes
    plt.close(fig)
    return out


def write_run_record(run_dir: Union[str, Path], record: dict[str, Any]) -> None:
    """Write `run.json` atomically."""
    write_json_atomic(Path(run_dir) / RUN_RECORD, record, sort_keys=True)


def read_run_record(run_dir: Union[str, Path]) -> dict[str, Any]:
    """The run record, or {} when there is none."""
    p = Path(run_dir) / RUN_RECORD
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
