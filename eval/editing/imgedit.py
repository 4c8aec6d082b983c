"""ImgEdit-Bench basic (PKU-YuanGroup/ImgEdit, `Benchmark/Basic/basic_edit.json`) as its own
evaluation code lays it out.

- The table: a JSON object keyed by numeric strings, each `{id: "<folder>/<9 digits>.jpg",
  prompt, edit_type}`; `id` is relative to the original images' root.
- Edited images: `{key}.png` in one result folder.
- Scores: a judge answers per edit type with three criteria scored 1-5, one per line as
  `Name: N`; an item's score is the mean of the lines whose value is all digits (rounded to 2
  places), an edit type's the mean of its items (rounded to 2 places); the overall score is the
  mean over the edit types."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

from eval.editing.edit_items import BenchmarkError, EditItem, Loaded

# The 9 edit types of the paper; the published json spells `adjust` as `alter`.
EDIT_TYPES: tuple[str, ...] = ("extract", "style", "add", "adjust", "background", "replace",
                               "remove", "action", "compose")
FIELDS: tuple[str, ...] = ("id", "prompt", "edit_type")
N_CRITERIA = 3
SCORE_RANGE = (1, 5)


def _pairs_keeping_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: keep every (key, value), so a repeated key is seen, not overwritten."""
    out: dict[str, Any] = {"__pairs__": pairs}
    return out


def read_imgedit(path: Path, images_root: Optional[Path] = None, result_dir: str = "edited") -> Loaded:
    """basic_edit.json entries as edit items (id = the key; edited image `{result_dir}/{key}.png`;
    source `images_root / id`, default root the json's folder). Not an object of objects: an error;
    an entry that is not numeric-keyed, lacks a field, repeats a key or whose image is missing is
    skipped with its reason."""
    path = Path(path)
    if path.is_dir():
        path = path / "basic_edit.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_pairs_keeping_duplicates)
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"ImgEdit table {path}: cannot read it as JSON ({e}); pass "
                             "Benchmark/Basic/basic_edit.json") from e
    if not isinstance(raw, dict) or "__pairs__" not in raw:
        raise BenchmarkError(f"ImgEdit table {path}: expected an object keyed by numeric strings")
    root = Path(images_root) if images_root is not None else path.parent
    out = Loaded("imgedit", [], source=str(path))
    seen: set[str] = set()
    for key, entry in raw["__pairs__"]:
        if not str(key).isdigit():
            out.skip(key, "key is not a numeric string")
            continue
        if key in seen:
            out.skip(key, "duplicate key")
            continue
        seen.add(key)
        fields = dict(entry["__pairs__"]) if isinstance(entry, dict) and "__pairs__" in entry else None
        if fields is None:
            out.skip(key, "entry is not an object")
            continue
        missing = [f for f in FIELDS if not isinstance(fields.get(f), str) or not fields[f].strip()]
        if missing:
            out.skip(key, f"missing field(s) {', '.join(missing)}")
            continue
        image = root / fields["id"]
        if not image.is_file():
            out.skip(key, f"missing image {fields['id']}")
            continue
        out.items.append(EditItem(id=key, instruction=fields["prompt"], source=image,
                                  edit_type=fields["edit_type"], edited_path=f"{result_dir}/{key}.png",
                                  extra={"key": key, "image_id": fields["id"]}))
    return out


def criterion_scores(answer: str) -> list[int]:
    """The official reading of a judge answer: every line `Name: N` whose value is all digits."""
    scores = []
    for line in answer.splitlines():
        parts = line.strip().split(": ")
        if len(parts) == 2 and parts[1].isdigit():
            scores.append(int(parts[1]))
    return scores


def item_score(scores: list[int]) -> float:
    """An item's score: the mean of its criterion scores, rounded to 2 places (as officially)."""
    return round(sum(scores) / len(scores), 2)


def aggregate(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per edit type the mean item score (rounded to 2 places, as officially) and the overall
    mean over edit types, of rows with `edit_type` and `score`."""
    per: dict[str, list[float]] = {}
    for r in rows:
        per.setdefault(r["edit_type"], []).append(r["score"])
    types = {t: {"n": len(v), "score": round(sum(v) / len(v), 2)} for t, v in sorted(per.items())}
    overall = sum(t["score"] for t in types.values()) / len(types) if types else None
    return {"types": types, "overall": overall}
