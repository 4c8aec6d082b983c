"""The figures and score summaries of a dataset card, from a run's triplet table: the
distribution of each stored score per edit type (a PNG and a table of quantiles)."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from nexus_gen.data.shards import read_manifest

CARD_SCORES = ("clip_t", "clip_i", "clip_dir", "dino", "l1", "l1_inside", "l1_outside", "detector_score")


def triplet_scores(triplets_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """edit type -> score -> its finite values (nulls and NaN left out), in table order."""
    collected: dict[str, dict[str, list[float]]] = {}
    for s in read_manifest(triplets_dir)["shards"]:
        names = set(pq.read_schema(triplets_dir / s["file"]).names)
        cols = [c for c in CARD_SCORES if c in names]
        table = pq.read_table(triplets_dir / s["file"], columns=["edit_type", *cols])
        types = table.column("edit_type").to_pylist()
        for c in cols:
            for et, v in zip(types, table.column(c).to_pylist()):
                if v is not None and math.isfinite(v):
                    collected.setdefault(et or "unknown", {}).setdefault(c, []).append(float(v))
    return {et: {c: np.asarray(v, dtype=np.float64) for c, v in d.items()}
            for et, d in sorted(collected.items())}


def score_summary(scores: dict[str, dict[str, np.ndarray]]) -> list[list[Any]]:
    """Rows `edit type, score, n, mean, p10, median, p90` (4 decimals), for a markdown table."""
    rows = []
    for et, d in scores.items():
        for c in CARD_SCORES:
            v = d.get(c)
            if v is None or not len(v):
                continue
            p10, p50, p90 = np.quantile(v, [0.1, 0.5, 0.9])
            rows.append([et, c, len(v), *(f"{x:.4f}" for x in (v.mean(), p10, p50, p90))])
    return rows


def score_plot_png(scores: dict[str, dict[str, np.ndarray]]) -> bytes:
    """A panel per score with one outlined histogram per edit type on shared bins (PNG bytes,
    the same for the same scores: no timestamp in the file)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    present = [c for c in CARD_SCORES if any(c in d and len(d[c]) for d in scores.values())]
    ncols = min(3, max(1, len(present)))
    nrows = max(1, math.ceil(len(present) / ncols))
    fig = Figure(figsize=(3.4 * ncols, 2.5 * nrows), dpi=90)
    FigureCanvasAgg(fig)
    for k, metric in enumerate(present):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        allv = np.concatenate([d[metric] for d in scores.values() if metric in d])
        lo, hi = float(allv.min()), float(allv.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 16)
        for et, d in scores.items():
            if metric in d and len(d[metric]):
                ax.hist(d[metric], bins=bins, histtype="step", linewidth=1.4, label=f"{et} (n={len(d[metric])})")
        ax.set_title(metric, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, frameon=False)
    if not present:
        fig.text(0.5, 0.5, "no scores stored", ha="center", va="center")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
