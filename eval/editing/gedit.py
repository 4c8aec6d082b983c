"""GEdit-Bench (stepfun-ai/GEdit-Bench) as its own evaluation code lays it out.

- The table: one `train` split (arrow), columns `task_type, key, instruction,
  instruction_language` (`en` / `cn`), `input_image`, `input_image_raw`, `Intersection_exist`;
  11 task types (hyphens in the subject ones). Edits are made on `input_image`.
- Edited images: `{save}/{model}/fullset/{task_type}/{lang}/{key}.png`, the source beside it as
  `{key}_SRCIMG.png` (the official scorer reads both from there).
- Scores: a VLM judge gives SC = min(editing success, over-editing) and PQ = min(naturalness,
  artifacts), each 0-10, per item O = sqrt(SC * PQ); each is averaged per task type (for one
  instruction language), then over the task types. The official run also reports the same on
  the `Intersection_exist` subset.
- Score CSVs: `{model}_{task_type}_gpt_score.csv` and `{model}_combined_gpt_score.csv` with
  columns `source_image, edited_image, instruction, sementics_score` (sic), `quality_score,
  intersection_exist, instruction_language`, under `{save}/{model}/{backbone}/eval_results_new/`."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Optional

from eval.editing.edit_items import (BenchmarkError, EditItem, Loaded, image_present, read_table,
                                     require_columns)

TASK_TYPES: tuple[str, ...] = (
    "background_change", "color_alter", "material_alter", "motion_change", "ps_human",
    "style_change", "subject-add", "subject-remove", "subject-replace", "text_change",
    "tone_transfer")
COLUMNS: tuple[str, ...] = ("task_type", "key", "instruction", "instruction_language",
                            "input_image", "input_image_raw", "Intersection_exist")
LANGUAGES: tuple[str, ...] = ("en", "cn")
CSV_COLUMNS: tuple[str, ...] = ("source_image", "edited_image", "instruction", "sementics_score",
                                "quality_score", "intersection_exist", "instruction_language")
# Published GEdit-Bench-EN (full set) SC / PQ / O, from the GEdit-Bench / Step1X-Edit paper.
REFERENCE_EN: dict[str, tuple[float, float, float]] = {
    "GPT-4o": (7.85, 7.62, 7.53),
    "BAGEL": (7.36, 6.83, 6.52),
    "Step1X-Edit": (7.09, 6.76, 6.70),
}


def edited_path(model: str, task_type: str, language: str, key: str) -> str:
    """Where the official scorer looks for an edited image, relative to its `save` folder."""
    return f"{model}/fullset/{task_type}/{language}/{key}.png"


def source_path(model: str, task_type: str, language: str, key: str) -> str:
    """Where the official scorer looks for the item's source image (saved beside the edit)."""
    return f"{model}/fullset/{task_type}/{language}/{key}_SRCIMG.png"


def _flag(value: Any) -> Optional[bool]:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    return None


def read_gedit(path: Path, model: str, language: Optional[str] = None) -> Loaded:
    """GEdit-Bench rows as edit items (id `task_type/lang/key`), edited images laid out for the
    official scorer under the model name `model`. `language` (`en` / `cn`) keeps one language.
    A table missing a column is an error; a row with an unknown task type or language, an empty
    instruction, no input image or a key seen before is skipped with its reason."""
    if language is not None and language not in LANGUAGES:
        raise BenchmarkError(f"GEdit-Bench language {language!r}: expected one of "
                             f"{', '.join(LANGUAGES)} (Chinese is `cn`, not `zh`)")
    rows, columns = read_table(path)
    require_columns(columns, COLUMNS, "GEdit-Bench", path)
    out = Loaded("gedit", [], source=str(path))
    seen: set[tuple[str, str, str]] = set()
    for n, row in enumerate(rows):
        task, lang, key = row.get("task_type"), row.get("instruction_language"), row.get("key")
        rid = f"{task}/{lang}/{key}" if key not in (None, "") else f"row {n}"
        if task not in TASK_TYPES:
            out.skip(rid, f"unknown task_type {task!r} (expected one of {', '.join(TASK_TYPES)})")
            continue
        if lang not in LANGUAGES:
            out.skip(rid, f"unknown instruction_language {lang!r} (expected en or cn)")
            continue
        if language is not None and lang != language:
            continue
        if key in (None, ""):
            out.skip(rid, "empty key")
            continue
        key = str(key)
        if (task, lang, key) in seen:
            out.skip(rid, "duplicate key")
            continue
        seen.add((task, lang, key))
        instruction = row.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            out.skip(rid, "empty instruction")
            continue
        source = image_present(row.get("input_image"), Path(path).parent)
        if source is None:
            out.skip(rid, "missing input_image")
            continue
        out.items.append(EditItem(
            id=rid, instruction=instruction, source=source, edit_type=task, language=lang,
            edited_path=edited_path(model, task, lang, key),
            extra={"key": key, "task_type": task, "intersection_exist": _flag(row.get("Intersection_exist")),
                   "source_path": source_path(model, task, lang, key)}))
    return out


def item_scores(sc: Iterable[float], pq: Iterable[float]) -> tuple[float, float, float]:
    """One item's (SC, PQ, O): the minimum of each judge's score list, O = sqrt(SC * PQ)."""
    s, p = min(sc), min(pq)
    return float(s), float(p), math.sqrt(s * p)


def _mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def aggregate(rows: Iterable[dict[str, Any]], language: str) -> dict[str, Any]:
    """The official statistics of scored rows (`task_type`, `language`, `sc`, `pq`,
    `intersection_exist`) in one language: per task type the mean SC, PQ and O (O per item,
    then averaged), then the mean over task types; the same on the intersection subset.
    Task types without a scored row are listed in `missing_tasks` and left out of the means (the
    official script would give NaN)."""
    per: dict[str, dict[str, list[float]]] = {}
    inter: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r.get("language") != language:
            continue
        s, p, o = item_scores([r["sc"]], [r["pq"]])
        for bucket in [per] + ([inter] if r.get("intersection_exist") else []):
            b = bucket.setdefault(r["task_type"], {"sc": [], "pq": [], "o": []})
            b["sc"].append(s)
            b["pq"].append(p)
            b["o"].append(o)

    def summarise(bucket: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
        tasks = {t: {"n": len(v["o"]), "SC": _mean(v["sc"]), "PQ": _mean(v["pq"]), "O": _mean(v["o"])}
                 for t, v in sorted(bucket.items(), key=lambda kv: TASK_TYPES.index(kv[0])
                                    if kv[0] in TASK_TYPES else len(TASK_TYPES))}
        avg = {m: _mean([v[m] for v in tasks.values()]) for m in ("SC", "PQ", "O")}
        return {"tasks": tasks, "average": avg,
                "missing_tasks": [t for t in TASK_TYPES if t not in tasks]}

    return {"language": language, **summarise(per), "intersection": summarise(inter)}


def write_csvs(rows: list[dict[str, Any]], folder: Path, model: str) -> list[Path]:
    """The official score CSVs of scored rows (keys of `CSV_COLUMNS` plus `task_type`): one per
    task type that has rows and the combined one; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["task_type"], []).append(r)
    for name, group in [(t, groups[t]) for t in TASK_TYPES if t in groups] + [("combined", rows)]:
        path = folder / f"{model}_{name}_gpt_score.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
            w.writeheader()
            for r in group:
                w.writerow(r)
        written.append(path)
    return written
