"""Reading foreign records line by line with their location, so every bad one can be reported
as `file:line` and skipped without stopping the run. jsonl, json (array), csv and parquet."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".tsv")
CSV_FIELD_LIMIT = 256 * 1024 * 1024  # the csv module's default (128 kB) stops at one long caption


@dataclass(frozen=True)
class Location:
    file: str
    line: int  # 1-based line (jsonl/csv: the physical record number; json/parquet: the item number)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Record:
    """One input record, or the reason it could not be read."""

    location: Location
    data: Optional[dict[str, Any]] = None
    error: Optional[str] = None


def read_jsonl_records(path: Union[str, Path], name: Optional[str] = None) -> Iterator[Record]:
    """Each line of a JSON Lines file as a Record, whatever the file's suffix (`read_records`
    picks the format by suffix). Blank lines are skipped; a BOM may open the file."""
    return _jsonl(Path(path), display_name(path) if name is None else name)


def _jsonl(path: Path, name: str) -> Iterator[Record]:
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            loc = Location(name, i)
            try:
                text = raw.decode("utf-8-sig" if i == 1 else "utf-8")  # a BOM may open the file
            except UnicodeDecodeError as e:
                yield Record(loc, error=f"line is not valid UTF-8 ({e.reason} at byte {e.start})")
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield Record(loc, error=f"bad JSON: {e.msg} at column {e.colno}")
                continue
            except RecursionError:
                yield Record(loc, error="bad JSON: nested too deeply to read")
                continue
            if not isinstance(obj, dict):
                yield Record(loc, error=f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield Record(loc, data=obj)


def _json(path: Path, name: str) -> Iterator[Record]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except RecursionError:
        yield Record(Location(name, 1), error="bad JSON file: nested too deeply to read")
        return
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        # maybe it is json lines under a .json name
        if isinstance(e, json.JSONDecodeError) and e.msg == "Extra data":
            yield from _jsonl(path, name)
            return
        yield Record(Location(name, getattr(e, "lineno", 0) or 0), error=f"bad JSON file: {e}")
        return
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        yield Record(Location(name, 1), error=f"expected a JSON array of objects, got {type(obj).__name__}")
        return
    for i, item in enumerate(obj, start=1):
        loc = Location(name, i)
        if isinstance(item, dict):
            yield Record(loc, data=item)
        else:
            yield Record(loc, error=f"item {i} is a {type(item).__name__}, not an object")


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _csv(path: Path, name: str, delimiter: str) -> Iterator[Record]:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    # undecodable bytes become lone surrogates, so one bad row is rejected and the rest are read
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header: Optional[list[str]] = None
        start = 1  # a record is located by the line it starts on (quoted newlines span lines)
        try:
            for cells in reader:
                loc = Location(name, start)
                start = reader.line_num + 1
                if not cells:  # a blank line
                    continue
                if header is None:
                    header = cells
                    continue
                if len(cells) > len(header):
                    yield Record(loc, error=f"row has {len(cells)} cells, header has {len(header)}")
                    continue
                row = dict(zip(header, cells + [None] * (len(header) - len(cells))))
                bad = [k for k, v in row.items() if _not_utf8(str(k)) or (isinstance(v, str) and _not_utf8(v))]
                if bad:
                    yield Record(loc, error=f"column {bad[0]!r} is not valid UTF-8 text "
                                            "(save the file as UTF-8)")
                    continue
                yield Record(loc, data={k: (v if v != "" else None) for k, v in row.items()})
        except (csv.Error, UnicodeDecodeError) as e:
            yield Record(Location(name, start), error=f"unreadable CSV: {e}")


def open_parquet(path: Union[str, Path]):
    """The file opened now, so an unreadable parquet fails before any work (not mid-run)."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:
        raise ValueError(f"input {path} is not a readable parquet file ({type(e).__name__}: {e})") from None


def _parquet(pf, name: str) -> Iterator[Record]:
    i = 0
    for batch in pf.iter_batches(batch_size=64):
        for row in batch.to_pylist():
            i += 1
            yield Record(Location(name, i), data=row)


def display_name(path: Union[str, Path]) -> str:
    """A file's name as valid UTF-8 text (undecodable bytes of a foreign file name become U+FFFD),
    so it can stand in rejects, meta and manifests."""
    return os.fsencode(Path(path).name).decode("utf-8", "replace")


def source_name(path: Union[str, Path]) -> str:
    """The default source of a file's samples: its name without the suffix, as valid UTF-8
    text (undecodable bytes in it would make every sample of the file a reject)."""
    return Path(display_name(path)).stem


def read_records(path: Union[str, Path]) -> Iterator[Record]:
    """Records of a jsonl / json / csv / tsv / parquet file, lazily, each with its location."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist or is not a file")
    name = display_name(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl(path, name)
    if suffix == ".json":
        return _json(path, name)
    if suffix == ".csv":
        return _csv(path, name, ",")
    if suffix == ".tsv":
        return _csv(path, name, "\t")
    if suffix == ".parquet":
        return _parquet(open_parquet(path), name)
    raise ValueError(f"input {path}: unknown table format {suffix!r}; use one of {TABLE_SUFFIXES}")
