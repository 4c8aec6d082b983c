"""Report sections for a build run: counts per edit type, rejects by reason, a grid of sample
triplets, and the distribution of every score per edit type (read from the triplet table)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from eval.report import Figure, Report, Section, Table, figure_png

PLOTTED = ("clip_t", "clip_i", "clip_dir", "dino", "l1", "l1_inside", "l1_outside")


def score_columns(triplets_dir: Path) -> dict[str, dict[str, list[float]]]:
    """edit type -> score column -> the non-null values, from the triplet table."""
    man = json.loads((triplets_dir / "manifest.json").read_text(encoding="utf-8"))
    out: dict[str, dict[str, list[float]]] = {}
    for s in man["shards"]:
        names = set(pq.read_schema(triplets_dir / s["file"]).names)
        cols = ["edit_type"] + [c for c in PLOTTED if c in names]
        for r in pq.read_table(triplets_dir / s["file"], columns=cols).to_pylist():
            d = out.setdefault(r["edit_type"], {})
            for c in cols[1:]:
                if r[c] is not None:
                    d.setdefault(c, []).append(r[c])
    return out


def score_histograms(values: dict[str, dict[str, list[float]]]) -> bytes:
    """One panel per score, one histogram per edit type."""
    from matplotlib.figure import Figure as MplFigure

    metrics = [m for m in PLOTTED if any(m in v for v in values.values())]
    cols = min(4, max(1, len(metrics)))
    rows = (len(metrics) + cols - 1) // cols
    fig = MplFigure(figsize=(3.2 * cols, 2.6 * max(rows, 1)))
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        for et in sorted(values):
            if values[et].get(m):
                ax.hist(values[et][m], bins=20, alpha=0.55, label=et)
        ax.set_title(m, fontsize=9)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


def build_sections(run_dir: Path) -> list[Section]:
    """The data step of a report: what was built, what was rejected, what it looks like."""
    record: dict[str, Any] = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    c = record["counts"]
    rows = [[t, v.get("planned", 0), v.get("triplets", 0), v.get("rejected", 0)]
            for t, v in sorted(record["by_edit_type"].items())]
    text = [f"Recipe `{record['recipe']}` (hash `{record['recipe_hash']}`), status **{record['status']}**: "
            f"{c['planned']} planned triplets = {c['triplets']} built + {c['rejected']} rejected; "
            f"{c['samples']} unified samples ({', '.join(f'{k} {v}' for k, v in sorted(record['by_task'].items()))}) "
            f"in splits {', '.join(f'{k} {v}' for k, v in record['by_split'].items())}.",
            "Each triplet gives editing samples in both directions (instruction and reverse "
            "instruction) and in every recipe language; scores are stored, never used to drop "
            "anything at build time (`nexus-gen select` applies a filter policy later)."]
    tables = [Table(["edit type", "planned", "built", "rejected"], rows, title="Triplets per edit type")]
    if record["rejects_by_reason"]:
        tables.append(Table(["reason", "count"], sorted(record["rejects_by_reason"].items(), key=lambda x: -x[1]),
                            title="Rejects by reason"))
    figures = []
    trip = run_dir / "triplets"
    if (trip / "manifest.json").exists():
        from nexus_gen.edit.grid import triplet_grid

        name = record["recipe"]  # figure files are named per build: a report may hold several
        figures.append(Figure(f"{name}-triplets", triplet_grid(trip), "Sample triplets: source | target | edit mask"))
        figures.append(Figure(f"{name}-scores", score_histograms(score_columns(trip)),
                              "Score distributions per edit type"))
    return [Section(f"Data: the build of recipe {record['recipe']}", text, tables, figures)]


def build_report(run_dir: Path) -> Report:
    return Report(f"nexus-gen build: {run_dir.name}", build_sections(run_dir))
