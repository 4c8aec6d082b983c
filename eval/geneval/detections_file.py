"""The re-scoring file: one JSON line per image,
`{"filename": ..., "metadata": {<prompt line>}, "detections": {"<class>": [{"box", "score",
"color"?}]}}`. Reading names the file and line of any bad record; a run killed mid-write leaves
at most one unterminated last line, which resume drops and redoes.

`read_jsonl` is how every GenEval jsonl file (prompts, detections, results) is read."""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from eval.geneval.rules import COLORS, validate_metadata
from nexus_gen.data.records import read_jsonl_records
from nexus_gen.detection import Detection, Detections

log = logging.getLogger(__name__)


@dataclass
class ImageRecord:
    """One image's detections with its prompt line."""

    filename: str
    metadata: dict[str, Any]
    detections: Detections

    def to_json(self) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "metadata": self.metadata,
            "detections": {cls: [d.to_json() for d in dets] for cls, dets in self.detections.items()},
        }


def read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`path:line`, object) for each line of a jsonl file, lazily: blank lines are skipped and a
    UTF-8 BOM may open the file; a line that is not valid UTF-8 or not one JSON object raises
    ValueError naming `path:line`. The caller checks that the file exists (its own message)."""
    for rec in read_jsonl_records(path, str(path)):
        if rec.error is not None:
            raise ValueError(f"{rec.location}: not valid JSON Lines ({rec.error})")
        yield str(rec.location), rec.data


def record_line(record: ImageRecord) -> str:
    """The record as one JSON line (with its newline); key order fixed, so bytes are stable."""
    return json.dumps(record.to_json(), ensure_ascii=False) + "\n"


def parse_record(obj: Any, where: str) -> ImageRecord:
    """Validate one decoded line; errors start with `where` (file:line)."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    filename = obj.get("filename")
    if not isinstance(filename, str) or not filename:
        raise ValueError(f"{where}: 'filename' must be a non-empty string")
    metadata = obj.get("metadata")
    if isinstance(metadata, str):  # the results.jsonl style (a JSON string) is accepted too
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: 'metadata' is a string but not JSON ({e})") from e
    try:
        validate_metadata(metadata)
    except ValueError as e:
        raise ValueError(f"{where}: bad 'metadata': {e}") from e
    raw = obj.get("detections")
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: 'detections' must be an object {{class: [detections]}}")
    dets: Detections = {}
    for cls, items in raw.items():
        if not isinstance(items, list):
            raise ValueError(f"{where}: detections of {cls!r} must be a list")
        out = []
        for j, item in enumerate(items):
            what = f"{where}: detections[{cls!r}][{j}]"
            if not isinstance(item, Mapping) or "box" not in item or "score" not in item:
                raise ValueError(f"{what}: needs 'box' [x1, y1, x2, y2] and 'score'")
            try:
                d = Detection.from_json(cls, dict(item))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{what}: {e}") from e
            if not all(math.isfinite(v) for v in d.box):
                raise ValueError(f"{what}: box {item['box']!r} has a non-finite value")
            if not 0.0 <= d.score <= 1.0:
                raise ValueError(f"{what}: score {item['score']!r} is not in [0, 1]")
            if d.color is not None and d.color not in COLORS:
                raise ValueError(f"{what}: colour {d.color!r} is not one of {COLORS}")
            out.append(d)
        dets[cls] = out
    return ImageRecord(filename=filename, metadata=dict(metadata), detections=dets)


def read_records(path: Path) -> Iterator[ImageRecord]:
    """Every record of a detections file; a bad line raises with `path:line`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detections file {path} does not exist")
    for where, obj in read_jsonl(path):
        yield parse_record(obj, where)


def drop_unterminated_tail(path: Path) -> None:
    """If the file's last line has no newline (a killed writer), cut it off so it is redone."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    log.warning("%s: dropping an unterminated last line (%d bytes) left by an interrupted run; "
                "that image will be redone", path, len(data) - keep)
    with path.open("r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
