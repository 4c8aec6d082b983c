"""The showcase report: learning curves of geneval_scenes, edit_success and qa_accuracy against
minutes, the untrained model beside the trained one with bootstrap 95 % intervals (resampling
prompts / edit items / QA scenes), sample grids, and the JSON summary line."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
METRICS = ("geneval_scenes", "edit_success", "qa_accuracy")
BOOTSTRAP = 2000


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def unit_scores(metric: str, run: Path) -> dict[str, list[float]]:
    """Per resampling unit (a GenEval prompt, an edit item, a QA scene) its 0/1 outcomes, read
    from the benchmark's own per-item files (results.jsonl, scores.jsonl, parsed.jsonl)."""
    groups: dict[str, list[float]] = {}
    if metric == "geneval_scenes":
        for r in _jsonl(run / "results.jsonl"):
            key = Path(r["filename"]).parent.parent.name  # the prompt's folder (NNNNN/samples/)
            groups.setdefault(key, []).append(float(bool(r.get("correct"))))
    elif metric == "edit_success":
        for r in _jsonl(run / "scores.jsonl"):
            if r.get("success") is not None or r.get("error"):
                groups.setdefault(str(r["id"]), []).append(float(bool(r.get("success"))))
    else:
        for r in _jsonl(run / "parsed.jsonl"):
            groups.setdefault(str(r["id"]).split("-q")[0], []).append(float(r.get("correct") is True))
    return groups


def bootstrap_ci(groups: dict[str, list[float]], seed: int = 0) -> tuple[float, float, float, int]:
    """(mean over all outcomes, 2.5 %, 97.5 % of the cluster bootstrap over units, units)."""
    units = [np.asarray(v) for v in groups.values() if v]
    if not units:
        return float("nan"), float("nan"), float("nan"), 0
    sums = np.array([u.sum() for u in units])
    ns = np.array([len(u) for u in units])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(units), size=(BOOTSTRAP, len(units)))
    means = sums[idx].sum(1) / ns[idx].sum(1)
    return float(sums.sum() / ns.sum()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)), len(units)


def geneval_strata(run: Path) -> dict[str, dict[str, list[float]]]:
    """GenEval outcomes as tag -> prompt -> per-image 0/1 (results.jsonl)."""
    strata: dict[str, dict[str, list[float]]] = {}
    for r in _jsonl(run / "results.jsonl"):
        key = Path(r["filename"]).parent.parent.name
        strata.setdefault(str(r.get("tag")), {}).setdefault(key, []).append(float(bool(r.get("correct"))))
    return strata


def stratified_ci(strata: dict[str, dict[str, list[float]]], seed: int = 0) -> tuple[float, float, float, int]:
    """GenEval's overall (the mean over tags of each tag's share of correct images) with a
    bootstrap that resamples prompts within each tag: (overall, 2.5 %, 97.5 %, prompts)."""
    tags = [[np.asarray(v) for v in units.values() if v] for units in strata.values()]
    tags = [t for t in tags if t]
    if not tags:
        return float("nan"), float("nan"), float("nan"), 0
    rng = np.random.default_rng(seed)
    point = np.mean([sum(u.sum() for u in t) / sum(len(u) for u in t) for t in tags])
    resampled = np.zeros(BOOTSTRAP)
    for t in tags:
        sums, ns = np.array([u.sum() for u in t]), np.array([len(u) for u in t])
        idx = rng.integers(0, len(t), size=(BOOTSTRAP, len(t)))
        resampled += sums[idx].sum(1) / ns[idx].sum(1)
    resampled /= len(tags)
    return float(point), float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5)), \
        sum(len(t) for t in tags)


def point_table(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every evaluation point with its bootstrap interval and denominator (GenEval: its official
    tag-averaged overall, prompts resampled within tags)."""
    rows = []
    for p in state["points"]:
        run = Path(p["run"])
        if p["metric"] == "geneval_scenes":
            mean, lo, hi, n = stratified_ci(geneval_strata(run))
        else:
            mean, lo, hi, n = bootstrap_ci(unit_scores(p["metric"], run))
        rows.append({**p, "mean": mean, "lo": lo, "hi": hi, "units": n})
    return rows


def parameter_counts(folder: Path) -> dict[str, int]:
    """Parameters per part of a saved pipeline folder (tensor shapes from its safetensors headers)."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    for f in sorted(folder.rglob("*.safetensors")):
        part = f.relative_to(folder).parts[0]
        with safe_open(str(f), "pt") as st:
            counts[part] = counts.get(part, 0) + sum(int(np.prod(st.get_slice(k).get_shape())) for k in st.keys())
    return counts


def ablation_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{"prefilled": {metric: value}, "baseline": {...}, "ci95": {"prefilled": {metric: [lo, hi]}, ...}}
    from the final points `trained` (prefilled AR) and `baseline` (AR trained and run with prefill false)."""
    out: dict[str, Any] = {"prefilled": {}, "baseline": {}, "ci95": {"prefilled": {}, "baseline": {}}}
    for r in rows:
        side = {"trained": "prefilled", "baseline": "baseline"}.get(r["label"])
        if side is not None:
            out[side][r["metric"]] = None if np.isnan(r["mean"]) else round(r["mean"], 4)
            out["ci95"][side][r["metric"]] = [round(r["lo"], 4), round(r["hi"], 4)]
    return out


def summary_line(plan: Any, state: dict[str, Any]) -> dict[str, Any]:
    """{"trained": {...}, "untrained": {...}, "ci95": {...}, "minutes", "size"} (issue 17), and
    "ablation": {...} (ablation_rows) when the plan has the ablation."""
    rows = point_table(state)
    out: dict[str, Any] = {"trained": {}, "untrained": {}, "ci95": {"trained": {}, "untrained": {}},
                           "denominators": {}, "minutes": round(state.get("seconds", 0) / 60, 2),
                           "budget_minutes": plan.minutes, "size": 144,
                           "params": parameter_counts(Path(plan.out) / "pipelines" / "trained")}
    for r in rows:
        if r["label"] in ("trained", "untrained"):
            out[r["label"]][r["metric"]] = None if np.isnan(r["mean"]) else round(r["mean"], 4)
            out["ci95"][r["label"]][r["metric"]] = [round(r["lo"], 4), round(r["hi"], 4)]
            out["denominators"][r["metric"]] = r["units"]
    if plan.ablation:
        out["ablation"] = ablation_rows(rows)
    return out


def is_baseline(label: str) -> bool:
    """Points of the ablation's baseline (its AR checkpoints and its final pipeline)."""
    return label == "baseline" or label.startswith("ar_baseline-")


def _curves(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric in zip(axes, METRICS):
        for baseline in (False, True):
            pts = sorted((r for r in rows if r["metric"] == metric and is_baseline(r["label"]) == baseline),
                         key=lambda r: r["minutes"])
            if not pts:
                continue
            x = [r["minutes"] for r in pts]
            y = [r["mean"] for r in pts]
            ax.errorbar(x, y, yerr=[[m - r["lo"] for m, r in zip(y, pts)], [r["hi"] - m for m, r in zip(y, pts)]],
                        marker="s" if baseline else "o", capsize=3, label="baseline (prefill off)" if baseline
                        else "prefilled")
            for r in pts:
                if r["label"] in ("untrained", "trained", "baseline"):
                    ax.annotate(r["label"], (r["minutes"], r["mean"]), fontsize=7)
        if any(is_baseline(r["label"]) for r in rows):
            ax.legend(fontsize=7)
        ax.set_title(metric)
        ax.set_xlabel("minutes")
        ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _grid(plan: Any, state: dict[str, Any], path: Path) -> None:
    """Prompt -> image, source + instruction -> edit, untrained row above trained (from the runs)."""
    from PIL import Image, ImageDraw

    runs = {(p["label"], p["metric"]): Path(p["run"]) for p in state["points"]}
    cells: list[tuple[str, list[tuple[str, Any]]]] = []
    for label in ("untrained", "trained"):
        row: list[tuple[str, Any]] = []
        ge = runs.get((label, "geneval_scenes"))
        if ge is not None:
            for r in _jsonl(ge / "results.jsonl")[:5]:
                row.append((str(r.get("prompt", "")).replace("a photo of ", "")[:24], Path(r["filename"])))
        ed = runs.get((label, "edit_success"))
        if ed is not None:
            for r in _jsonl(ed / "items.jsonl")[:3]:
                if r.get("edited"):
                    row.append(("source", _edit_source(ed, r["id"])))
                    row.append((str(r.get("instruction", ""))[:24], ed / r["edited"]))
        cells.append((label, row))
    size, pad = 144, 30
    width = max((len(r) for _, r in cells), default=1) * size
    img = Image.new("RGB", (max(width, size) + 80, len(cells) * (size + pad)), "white")
    d = ImageDraw.Draw(img)
    for i, (label, row) in enumerate(cells):
        y = i * (size + pad)
        d.text((2, y + size // 2), label, fill="black")
        for j, (caption, p) in enumerate(row):
            if isinstance(p, Image.Image):
                img.paste(p.convert("RGB").resize((size, size)), (80 + j * size, y))
            elif p is not None and p.is_file():
                img.paste(Image.open(p).convert("RGB").resize((size, size)), (80 + j * size, y))
            d.text((80 + j * size, y + size + 2), caption, fill="black")
    img.save(path)


def _edit_source(run: Path, item_id: str) -> Any:
    """The source image of a scenes edit item `scene-NNNNN` (the editing run saves only its edits):
    the same scenes edit drawn again from the run's seed, as the benchmark drew it."""
    from nexus_gen.scenes.edits import random_edit

    cfg = json.loads((run / "config.json").read_text())
    try:
        return random_edit(int(cfg["seed"]) + int(item_id.rsplit("-", 1)[1]), int(cfg["size"])).source
    except (KeyError, ValueError):
        return None


def _qa_samples(state: dict[str, Any], n: int = 6) -> list[str]:
    lines = []
    for label in ("untrained", "trained"):
        run = next((Path(p["run"]) for p in state["points"] if p["label"] == label and p["metric"] == "qa_accuracy"), None)
        if run is None:
            continue
        items = {r["id"]: r for r in _jsonl(run / "items.jsonl")}
        for r in _jsonl(run / "parsed.jsonl")[:n]:
            q = str(items.get(r["id"], {}).get("prompt", "")).replace("\n", " ")[:80]
            lines.append(f"| {label} | {q} | {r.get('answer')} | {r.get('correct')} |")
    return lines


def write_report(plan: Any, state: dict[str, Any]) -> Path:
    """OUT/report.md + report.html (curves.png, samples.png) and OUT/summary.json."""
    root = Path(plan.out)
    rows = point_table(state)
    _curves(rows, root / "curves.png")
    try:
        _grid(plan, state, root / "samples.png")
    except (OSError, KeyError, ValueError) as exc:  # a grid is illustration: the numbers stay
        log.warning("sample grid not written: %s", exc)
    summary = summary_line(plan, state)
    (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    holdout = root / "data" / "holdout.json"
    md = [f"# Nexus-Gen showcase ({plan.minutes:g} min budget, {summary['minutes']} min spent, {plan.device})", "",
          "Trained on scenes built by the build flow; evaluated with geneval-scenes, the scenes editing "
          "benchmark and the scenes QA (cut-down: denominators below; 95 % intervals: cluster bootstrap over "
          "prompts / edit items / QA scenes).", "", "![curves](curves.png)", "", "![samples](samples.png)", "",
          "| point | metric | value | 95 % CI | units | minute | eval s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['label']} | {r['metric']} | {r['mean']:.3f} | [{r['lo']:.3f}, {r['hi']:.3f}] | "
                  f"{r['units']} | {r['minutes']} | {r['eval_seconds']} |")
    if "ablation" in summary:
        ab = summary["ablation"]
        md += ["", "## Ablation: prefilled autoregression vs the baseline feeding predictions back", "",
               "Same budget: the baseline AR is trained with `model.prefill: false` (teacher forcing) for as "
               "long as the prefilled one and run with `\"prefill\": false` (each predicted embedding fed "
               "back), with the same decoders.", "",
               "| metric | prefilled | 95 % CI | baseline | 95 % CI |", "|---|---|---|---|---|"]
        for metric in METRICS:
            cells = []
            for side in ("prefilled", "baseline"):
                v, ci = ab[side].get(metric), ab["ci95"][side].get(metric)
                cells += ["-" if v is None else f"{v:.3f}", "-" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"]
            md.append(f"| {metric} | " + " | ".join(cells) + " |")
    md += ["", "## Questions -> answers", "", "| model | question | answer | correct |", "|---|---|---|---|",
           *_qa_samples(state), "", "## Training", "", "```", json.dumps(state.get("segments", {}), indent=1), "```",
           "", "## Phases (seconds)", "", "```", json.dumps(state.get("phase_seconds", {}), indent=1), "```",
           "", "## Hold-outs", "", "```", holdout.read_text() if holdout.is_file() else "-", "```",
           "", "## Summary", "", "```", json.dumps(summary), "```"]
    text = "\n".join(md) + "\n"
    (root / "report.md").write_text(text, encoding="utf-8")
    import html

    body = html.escape(text).replace("![curves](curves.png)", '<img src="curves.png">') \
        .replace("![samples](samples.png)", '<img src="samples.png">')
    (root / "report.html").write_text(f"<html><body><pre>{body}</pre></body></html>\n", encoding="utf-8")
    return root / "report.md"
