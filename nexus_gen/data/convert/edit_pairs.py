"""Edit-pair tables (InstructPix2Pix / MagicBrush style; parquet, jsonl, json or csv): source
image, instruction, target image, optional captions and reverse instruction. With a reverse
instruction both directions are emitted, as the reference's decoder trainer uses each pair."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from nexus_gen.data.convert.base import Draft, DraftError, Item, content_key, drafts_from_records, optional_id
from nexus_gen.data.records import Record, read_records, source_name
from nexus_gen.data.templates import editing_messages, detect_language

NAME = "edit-pairs"


@dataclass(frozen=True)
class Columns:
    """Accepted column names for each role, first match wins."""

    source: tuple[str, ...] = ("source_image", "input_image", "original_image", "src_image", "source", "image_0")
    target: tuple[str, ...] = ("target_image", "edited_image", "output_image", "tgt_image", "target", "image_1")
    instruction: tuple[str, ...] = ("instruction", "edit_instruction", "editing_instruction", "edit", "edit_prompt", "prompt")
    reverse: tuple[str, ...] = ("reverse_instruction", "reverse_editing_instruction")
    source_caption: tuple[str, ...] = ("source_caption", "input_caption", "original_caption", "image_0_caption")
    target_caption: tuple[str, ...] = ("target_caption", "output_caption", "edited_caption", "image_1_caption")
    id: tuple[str, ...] = ("id", "sample_id", "img_id")
    extra_meta: tuple[str, ...] = ()  # further columns copied into meta as they are


def required(cols: Columns, reverse: bool = False) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """What a table must have for these columns (checked on a header before any work)."""
    need = (("source image", cols.source), ("target image", cols.target), ("instruction", cols.instruction))
    return need + ((("reverse instruction", cols.reverse),) if reverse else ())


REQUIRED = required(Columns())


def pick(data: dict[str, Any], names: tuple[str, ...]) -> tuple[Optional[str], Any]:
    for n in names:
        if n in data and data[n] is not None and data[n] != "":
            return n, data[n]
    return None, None


def _text(data: dict, names: tuple[str, ...], what: str, required: bool) -> Optional[str]:
    col, v = pick(data, names)
    if v is None:
        if required:
            raise DraftError(f"missing {what} (looked for columns {', '.join(names)})")
        return None
    if not isinstance(v, str):
        raise DraftError(f"column {col!r} ({what}) should be text, got {type(v).__name__}")
    if not v.strip():
        if required:
            raise DraftError(f"column {col!r} ({what}) is empty")
        return None
    return v.strip()


def _image(data: dict, names: tuple[str, ...], what: str) -> Any:
    col, v = pick(data, names)
    if v is None:
        raise DraftError(f"missing {what} (looked for columns {', '.join(names)})")
    if not isinstance(v, (str, dict, bytes)):
        raise DraftError(f"column {col!r} ({what}) should be a path or an image struct, got {type(v).__name__}")
    if isinstance(v, dict):
        b, p = v.get("bytes"), v.get("path")
        if b is not None and not isinstance(b, (bytes, bytearray)):
            raise DraftError(f"column {col!r} ({what}): 'bytes' should be binary, got {type(b).__name__}")
        if p is not None and not isinstance(p, str):
            raise DraftError(f"column {col!r} ({what}): 'path' should be a string, got {type(p).__name__}")
    return v


def ref_key(ref: Any) -> Any:
    """What identifies an image reference in an id: its path, else a hash of all its bytes
    (a prefix is not enough: images from one camera or editor share kilobytes of headers)."""
    if isinstance(ref, dict):
        return ref.get("path") or ref_key(ref.get("bytes") or b"")
    if isinstance(ref, (bytes, bytearray)):
        return hashlib.sha256(ref).hexdigest()
    return ref


def draft_pair(rec: Record, source: str, cols: Columns, both_directions: str = "auto",
               language: Optional[str] = None) -> list[Draft]:
    """One or two editing drafts from a record. `both_directions`: 'auto' (when a reverse
    instruction exists), 'always' (required) or 'never'."""
    data = rec.data
    src = _image(data, cols.source, "source image")
    tgt = _image(data, cols.target, "target image")
    instruction = _text(data, cols.instruction, "instruction", required=True)
    reverse = _text(data, cols.reverse, "reverse instruction", required=both_directions == "always")
    cap_s = _text(data, cols.source_caption, "source caption", required=False)
    cap_t = _text(data, cols.target_caption, "target caption", required=False)
    idcol, rid = pick(data, cols.id)
    rid = optional_id(rid, idcol)
    key = rid if rid is not None else content_key(ref_key(src), ref_key(tgt), instruction)
    base_id = f"{source}_{key}"
    extra = {c: data[c] for c in cols.extra_meta if c in data and data[c] is not None}
    lang = language or detect_language([{"role": "user", "content": instruction}])
    fwd_meta = {"captions": [cap_s, cap_t], "instruction": instruction, "direction": "forward", **extra}
    if reverse is not None:
        fwd_meta["reverse_instruction"] = reverse
    drafts = [Draft(rec.location, base_id, source, editing_messages(instruction, lang), [src, tgt],
                    task="editing", language=lang, meta=fwd_meta)]
    if reverse is not None and both_directions != "never":
        rev_meta = {"captions": [cap_t, cap_s], "instruction": reverse, "reverse_instruction": instruction,
                    "direction": "reverse", "pair_id": base_id, **extra}
        drafts.append(Draft(rec.location, f"{base_id}_rev", source, editing_messages(reverse, lang),
                            [tgt, src], task="editing", language=lang, meta=rev_meta))
    return drafts


def read(path: Path, source: Optional[str] = None, cols: Columns = Columns(),
         language: Optional[str] = None, name: Optional[str] = None) -> Iterator[Item]:
    src = source or source_name(path)
    return drafts_from_records(read_records(path, name), lambda r: draft_pair(r, src, cols, "auto", language))
