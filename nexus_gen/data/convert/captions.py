"""(image, caption) tables (csv / jsonl / json / parquet) -> generation samples with the
reference templates in English or Chinese (Chinese ids get the reference's `zh_` prefix)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from nexus_gen.data.convert.base import Draft, DraftError, Item, content_key, drafts_from_records, optional_id
from nexus_gen.data.convert.edit_pairs import pick, ref_key
from nexus_gen.data.records import Record, read_records, source_name
from nexus_gen.data.templates import LANGUAGES, generation_messages

NAME = "captions"
IMAGE_COLUMNS = ("image", "file_name", "image_path", "path", "img")
CAPTION_COLUMNS = ("caption", "text", "prompt", "description")
# what a table must have (checked on a header before any work): (role, accepted columns)
REQUIRED = (("image", IMAGE_COLUMNS), ("caption", CAPTION_COLUMNS))


def draft(rec: Record, source: str, language: str) -> list[Draft]:
    data = rec.data
    icol, image = pick(data, IMAGE_COLUMNS)
    if image is None:
        raise DraftError(f"missing image (looked for columns {', '.join(IMAGE_COLUMNS)})")
    ccol, caption = pick(data, CAPTION_COLUMNS)
    if caption is None:
        raise DraftError(f"missing caption (looked for columns {', '.join(CAPTION_COLUMNS)})")
    if not isinstance(caption, str):
        raise DraftError(f"column {ccol!r} should be text, got {type(caption).__name__}")
    if not isinstance(image, (str, dict, bytes)):
        raise DraftError(f"column {icol!r} should be an image path, got {type(image).__name__}")
    caption = caption.strip()
    if not caption:
        raise DraftError(f"column {ccol!r} is empty")
    idcol, rid = pick(data, ("id",))
    rid = optional_id(rid, idcol)
    key = rid if rid is not None else content_key(ref_key(image), caption)
    sid = f"{source}_{key}" if rid is None else key
    if language != "en":
        sid = f"{language}_{sid}"
    return [Draft(rec.location, sid, source, generation_messages(caption, language), [image],
                  task="generation", language=language, meta={"captions": [caption]})]


def read(path: Path, source: Optional[str] = None, language: str = "en",
         name: Optional[str] = None) -> Iterator[Item]:
    if language not in LANGUAGES:
        raise ValueError(f"--language {language!r}: choose one of {', '.join(LANGUAGES)}")
    src = source or source_name(path)
    return drafts_from_records(read_records(path, name), lambda r: draft(r, src, language))
