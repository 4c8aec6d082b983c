"""The reference system's own jsonl (also ms-swift's): `{id, source, images, messages}` a line.
Task and language are detected from where the `<image>` tags stand and from the text."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from nexus_gen.data.convert.base import Draft, DraftError, Item, drafts_from_records, parse_turns, require
from nexus_gen.data.records import Record, read_records, source_name

NAME = "nexus-gen-jsonl"
REQUIRED = (("id", ("id",)), ("messages", ("messages",)))


def draft(rec: Record, default_source: str) -> list[Draft]:
    data = rec.data
    sid = require(data, "id", (str, int))
    source = data.get("source", default_source)
    if not isinstance(source, str) or not source:
        raise DraftError(f"field 'source' should be a non-empty string, got {source!r}")
    images = data.get("images", [])
    if images is None:
        images = []
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(i, (str, dict)) for i in images):
        raise DraftError("field 'images' should be a list of image paths")
    return [Draft(rec.location, str(sid), source, parse_turns(data, "messages", "role", "content"), images)]


def read(path: Path, source: str | None = None, name: str | None = None) -> Iterator[Item]:
    default_source = source or source_name(path)
    return drafts_from_records(read_records(path, name), lambda r: draft(r, default_source))
