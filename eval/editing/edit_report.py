"""The editing benchmark's report section: denominators first, metrics per edit type and overall,
the scenes' exact success, the judges' SC / PQ / O (beside the published GEdit-Bench-EN
numbers) and ImgEdit scores with their not-scored counts, a gallery of source / edited /
target, and a warning whenever the run is not comparable with the published numbers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval.report import Figure, Report, Section, Table, write_report

METRIC_LABELS = {"l1": "L1", "l2": "L2 (MSE)", "clip_i": "CLIP-I", "dino": "DINO", "clip_t": "CLIP-T",
                 "clip_dir": "CLIP-dir", "clip_i_source": "CLIP-I src", "dino_source": "DINO src",
                 "l1_source": "L1 src", "l1_inside": "L1 in mask", "l1_outside": "L1 out mask",
                 "success": "exact success", "edit_done": "edit done", "preserved": "rest preserved"}


def _r(v: Any, places: int = 4) -> Any:
    return round(v, places) if isinstance(v, float) else v


def _metric_table(summary: dict[str, Any]) -> Table:
    metrics = [m for m in METRIC_LABELS
               if summary["overall"].get(m) is not None
               or any(t.get(m) is not None for t in summary["by_edit_type"].values())]
    rows = [[t, v["n"]] + [_r(v.get(m)) for m in metrics] for t, v in summary["by_edit_type"].items()]
    rows.append(["overall", summary["overall"]["n"]] + [_r(summary["overall"].get(m)) for m in metrics])
    return Table(["edit type", "n"] + [METRIC_LABELS[m] for m in metrics], rows,
                 title="Metrics per edit type (means over scored items)",
                 note="L1 / L2 / CLIP-I / DINO / CLIP-T against the ground-truth target (MagicBrush); "
                      "`src` columns against the source (Emu Edit); exact success on scenes add / remove "
                      "= edit done (the object found / gone) and rest preserved (every other object of the "
                      "target found again).")


def _warnings(config: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    out = []
    if config.get("clip") != "paper" or config.get("dino") != "paper":
        out.append(f"Scored with CLIP `{config.get('clip')}` and DINO `{config.get('dino')}`, not the "
                   "papers' models: metric values are not comparable with published ones.")
    if summary["data_kind"] in ("scenes", "build", "shards"):
        out.append(f"Data `{summary['data_kind']}` is not a published test set: compare runs with "
                   "each other, not with papers.")
    g = summary.get("judges", {}).get("gedit")
    if g:
        out.append(f"GEdit judge `{g.get('judge')}` (prompts {g.get('prompt_version')}): the "
                   "published numbers used GPT-4.1 on the full 606-item set; another judge, "
                   "subset or not-scored items make this run not comparable.")
        for lang, agg in g["languages"].items():
            if agg["missing_tasks"]:
                out.append(f"GEdit {lang}: {len(agg['missing_tasks'])} of 11 task types have no "
                           "scored item; the average is over the others (officially NaN).")
    if summary.get("judges", {}).get("imgedit"):
        out.append("ImgEdit prompts are this project's (same format and criteria count); pass "
                   "the official prompts.json with --imgedit-prompts for a comparable judge.")
    return out


def build_editing_report(run_dir: Path) -> Report:
    """The editing run's report from its config.json, summary.json and gallery.png."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no summary.json: the run did not finish; run it again")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    text = [
        f"Data `{summary['data']}` ({summary['data_kind']}), editor `{summary['editor']}`.",
        f"**Denominator**: {summary['planned']} planned = {summary['items']} items + "
        f"{summary['skipped']} skipped; of the items {summary['scored']} scored, "
        f"{sum(summary['not_edited'].values())} not edited, {sum(summary['score_errors'].values())} "
        "with a scoring error. Every mean below is over the scored items that have that metric.",
    ]
    for label, reasons in (("skipped", summary["skipped_reasons"]), ("not edited", summary["not_edited"]),
                           ("scoring errors", summary["score_errors"])):
        text += [f"- {label}: {n} x {reason}" for reason, n in reasons.items()]
    warnings = _warnings(config, summary)
    text += [f"**Not comparable**: {w}" for w in warnings]
    tables = [_metric_table(summary)]
    judges = summary.get("judges", {})
    if "gedit" in judges:
        g = judges["gedit"]
        text.append(f"GEdit judge: {g['scored']} of {g['judged']} judgments scored; not scored: "
                    + (", ".join(f"{n} x {k}" for k, n in g["not_scored"].items()) or "none") + ".")
        for lang, agg in g["languages"].items():
            rows = [[t, v["n"], _r(v["SC"], 3), _r(v["PQ"], 3), _r(v["O"], 3)] for t, v in agg["tasks"].items()]
            rows.append(["average over task types", sum(v["n"] for v in agg["tasks"].values()),
                         _r(agg["average"]["SC"], 3), _r(agg["average"]["PQ"], 3), _r(agg["average"]["O"], 3)])
            tables.append(Table(["task type", "n", "SC", "PQ", "O"], rows, title=f"GEdit-Bench ({lang})",
                                note="SC = min(success, over-editing), PQ = min(naturalness, artifacts), "
                                     "O = sqrt(SC*PQ) per item; averaged per task type, then over types."))
    if "imgedit" in judges:
        im = judges["imgedit"]
        text.append(f"ImgEdit judge: {im['scored']} of {im['judged']} judgments scored; not scored: "
                    + (", ".join(f"{n} x {k}" for k, n in im["not_scored"].items()) or "none") + ".")
        rows = [[t, v["n"], v["score"]] for t, v in im["types"].items()]
        rows.append(["overall (mean over types)", sum(v["n"] for v in im["types"].values()), _r(im["overall"], 3)])
        tables.append(Table(["edit type", "n", "score (1-5)"], rows, title="ImgEdit-Bench"))
    from eval.editing.gedit import REFERENCE_EN

    tables.append(Table(["model", "SC", "PQ", "O"], [[m, *v] for m, v in REFERENCE_EN.items()],
                        title="Published GEdit-Bench-EN (full set, GPT-4.1 judge)",
                        note="For orientation only: comparable with a GEdit judge run of the same "
                             "judge and prompts on the full EN set (see the warnings above)."))
    figures = []
    gallery = run_dir / "gallery.png"
    if gallery.is_file():
        figures.append(Figure("editing_gallery", gallery.read_bytes(), "source / edited / target"))
    section = Section("Editing benchmark", text=text, tables=tables, figures=figures,
                      code=json.dumps(config, indent=1, sort_keys=True))
    return Report(f"Editing benchmark: {summary['editor']} on {summary['data_kind']}", [section])


def write_editing_report(run_dir: Path) -> tuple[Path, Path]:
    """Write report.md and report.html of an editing run."""
    return write_report(build_editing_report(run_dir), Path(run_dir))
