"""What the editing benchmark evaluates: `EditItem`s (source image, instruction, optional ground
truth), the result of reading a benchmark (`Loaded`: items plus the rows skipped, each with its
reason, so no denominator changes silently), and the table readers the benchmark layouts share."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from nexus_gen.scoring.image_inputs import ImageInput

TABLE_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json")


class BenchmarkError(ValueError):
    """A benchmark input that cannot be used at all (missing column, unreadable table): the
    message names the input, the problem and what to do."""


@dataclass
class EditItem:
    """One edit to make and score. `target` is the ground-truth edited image when the benchmark
    has one (MagicBrush, built triplets, scenes), else None (GEdit, ImgEdit, Emu Edit)."""

    id: str
    instruction: str
    source: ImageInput
    target: Optional[ImageInput] = None
    edit_type: str = "edit"
    source_caption: Optional[str] = None
    target_caption: Optional[str] = None
    mask: Any = None  # bool [H, W] region allowed to change (scenes, built triplets)
    language: str = "en"
    edited_path: str = ""  # where the edited image goes, relative to the run directory
    extra: dict[str, Any] = field(default_factory=dict)  # benchmark fields (key, task_type, ...)


@dataclass
class Loaded:
    """A benchmark read: the items to run, the rows left out with their reason, and its kind."""

    kind: str  # scenes | shards | build | magicbrush | emu-edit | gedit | imgedit
    items: list[EditItem]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"id", "reason"}
    source: str = ""

    def skip(self, item_id: str, reason: str) -> None:
        self.skipped.append({"id": str(item_id), "reason": reason})


def file_name(item_id: str) -> str:
    """A file-system-safe, unique name for an item id: readable characters kept, others replaced,
    and a short hash appended when anything was replaced (so two ids never share a file)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._") or "item"
    if safe != item_id:
        safe = f"{safe[:80]}-{hashlib.sha256(item_id.encode()).hexdigest()[:8]}"
    return safe


def table_files(path: Path) -> list[Path]:
    """The table files of `path`: itself, or the parquet / arrow / jsonl / json files of a folder
    (recursively, sorted)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in TABLE_SUFFIXES and p.is_file()
                      and p.name not in ("manifest.json", "dataset_info.json", "state.json"))
    raise BenchmarkError(f"{path} does not exist; pass a benchmark table or folder")


def _arrow_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an Arrow IPC file: the stream format `datasets` writes, or the file format."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as src:
            table = pa.ipc.open_stream(src).read_all()
    except pa.ArrowInvalid:
        with pa.memory_map(str(path)) as src:
            table = pa.ipc.open_file(src).read_all()
    return table.to_pylist()


def read_table(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """All rows of a table file or folder and the union of their column names (in file order).
    A json file holds a list of rows; a jsonl file one row per line."""
    rows: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    files = table_files(path)
    if not files:
        raise BenchmarkError(f"{path} holds no table (.parquet, .arrow, .jsonl or .json)")
    for f in files:
        try:
            if f.suffix == ".parquet":
                import pyarrow.parquet as pq

                t = pq.read_table(f)
                columns.update(dict.fromkeys(t.column_names))
                rows.extend(t.to_pylist())
                continue
            if f.suffix == ".arrow":
                got = _arrow_rows(f)
            elif f.suffix == ".jsonl":
                got = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()
                       if line.strip()]
            else:
                data = json.loads(f.read_text(encoding="utf-8"))
                if not isinstance(data, list):
                    raise BenchmarkError(f"{f}: a json table must be a list of rows")
                got = data
        except (OSError, ValueError) as e:
            if isinstance(e, BenchmarkError):
                raise
            raise BenchmarkError(f"{f}: cannot read the table ({e})") from e
        for r in got:
            if not isinstance(r, dict):
                raise BenchmarkError(f"{f}: rows must be objects, got {type(r).__name__}")
            columns.update(dict.fromkeys(r))
        rows.extend(got)
    return rows, list(columns)


def require_columns(columns: Iterable[str], needed: Iterable[str], what: str, path: Path) -> None:
    """Fail naming the table and the missing columns when a benchmark table lacks any."""
    have = set(columns)
    missing = [c for c in needed if c not in have]
    if missing:
        raise BenchmarkError(
            f"{what} table {path} lacks column(s) {', '.join(missing)} (it has: "
            f"{', '.join(sorted(have)) or 'none'}); pass the benchmark's own table")


def image_present(value: Any, root: Optional[Path] = None) -> Optional[ImageInput]:
    """An image cell as a scorer input, or None when it is empty or names a missing file.
    Cells are HF Image structs ({bytes, path}), bytes, or paths (relative to `root`)."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return value
        value = value.get("path")
        if not value:
            return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) if value else None
    if isinstance(value, str):
        p = Path(value)
        if not p.is_absolute() and root is not None:
            p = root / p
        return p if p.is_file() else None
    return None
