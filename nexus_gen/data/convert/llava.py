"""LLaVA conversation json: `{id, image, conversations: [{from: human|gpt, value}]}` (a json
array or jsonl). Each becomes an understanding sample; `image` may be one path or a list."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from nexus_gen.data.convert.base import Draft, DraftError, Item, drafts_from_records, parse_turns, require
from nexus_gen.data.records import Record, read_records, source_name

NAME = "llava"
REQUIRED = (("id", ("id",)), ("conversations", ("conversations",)))
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def draft(rec: Record, source: str) -> list[Draft]:
    data = rec.data
    sid = require(data, "id", (str, int))
    messages = parse_turns(data, "conversations", "from", "value", ROLES)
    image = data.get("image")
    images = [] if image is None else ([image] if isinstance(image, str) else image)
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise DraftError(f"field 'image' should be a path or a list of paths, got {type(image).__name__}")
    return [Draft(rec.location, str(sid), source, messages, images, task="understanding")]


def read(path: Path, source: str | None = None, name: str | None = None) -> Iterator[Item]:
    src = source or source_name(path)
    return drafts_from_records(read_records(path, name), lambda r: draft(r, src))
