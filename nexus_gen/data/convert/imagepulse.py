"""ImagePulse records (`image_1, image_2, editing_instruction, reverse_editing_instruction,
image_1_caption, image_2_caption, *_preference_score, artifacts_in_image_*`): each record gives
both directions (add and remove come from the same pair); scores and flags go to meta."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from nexus_gen.data.convert.base import Item, drafts_from_records
from nexus_gen.data.convert.edit_pairs import Columns, draft_pair, required
from nexus_gen.data.records import Record, read_records

NAME = "imagepulse"
SCORE_COLUMNS = ("image_1_preference_score", "image_2_preference_score",
                 "artifacts_in_image_1", "artifacts_in_image_2", "edit_type", "entity", "category")
COLUMNS = Columns(
    source=("image_1",), target=("image_2",),
    instruction=("editing_instruction",), reverse=("reverse_editing_instruction",),
    source_caption=("image_1_caption",), target_caption=("image_2_caption",),
    id=("id", "key"), extra_meta=SCORE_COLUMNS,
)
REQUIRED = required(COLUMNS, reverse=True)


def _draft(rec: Record, source: str, language: Optional[str]):
    drafts = draft_pair(rec, source, COLUMNS, both_directions="always", language=language)
    # any further *_score / artifacts_* columns are kept too: scores are stored, selection comes later
    extra = {k: v for k, v in rec.data.items()
             if k not in COLUMNS.extra_meta and (k.endswith("_score") or k.startswith("artifacts_"))}
    for d in drafts:
        d.meta.update(extra)
    return drafts


def read(path: Path, source: Optional[str] = None, language: Optional[str] = None,
         name: Optional[str] = None) -> Iterator[Item]:
    src = source or "ImagePulse"
    return drafts_from_records(read_records(path, name), lambda r: _draft(r, src, language))
